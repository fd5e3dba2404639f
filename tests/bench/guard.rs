//! The prompt-injection guard on the labelled set (tests/data/injection/set.jsonl): precision,
//! recall and F1 per split and per category, the misclassified texts, and the scan's cost in
//! microseconds per KiB of text (short chat-sized texts and one long document).
//!
//!   cargo run --release -p gateway-tests --example guard-bench -- [--misses] [--json PATH]
//!
//! Goal: precision >= 0.95 and recall >= 0.8 on both splits. The held-out split was written
//! before the rules and is not used to tune them.

#[path = "guard_eval.rs"]
mod guard_eval;

use std::time::Instant;

use guard_eval::{Score, evaluate, load};
use serde_json::json;

fn row(name: &str, score: &Score) -> String {
    format!(
        "| {name:<34} | {:>4} | {:>9.3} | {:>6.3} | {:>5.3} | {:>3} | {:>3} |",
        score.total(),
        score.precision(),
        score.recall(),
        score.f1(),
        score.false_positives,
        score.false_negatives,
    )
}

/// Microseconds per KiB scanning `texts` (each scanned whole), best of a few rounds.
fn micros_per_kib(texts: &[String]) -> f64 {
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for text in texts {
            std::hint::black_box(gateway::guard::scan_untrusted(std::hint::black_box(text)));
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e6);
    }
    best / (bytes as f64 / 1024.0)
}

fn main() -> Result<(), String> {
    let mut show_misses = false;
    let mut json_path = None;
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        match flag.as_str() {
            "--misses" => show_misses = true,
            "--json" => json_path = Some(given.next().ok_or("--json needs a path")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let examples = load()?;
    let evaluation = evaluate(&examples);
    println!(
        "| slice                              |    n | precision | recall |    F1 |  FP |  FN |"
    );
    println!(
        "|------------------------------------|------|-----------|--------|-------|-----|-----|"
    );
    for (split, score) in &evaluation.splits {
        println!("{}", row(&format!("**{split}**"), score));
    }
    for ((split, category), score) in &evaluation.categories {
        println!("{}", row(&format!("{split} / {category}"), score));
    }

    // Chat-sized texts: every example, about 1 KiB each (repeated to that size).
    let short: Vec<String> = examples
        .iter()
        .map(|example| {
            let times = 1024 / example.text.len().max(1) + 1;
            example.text.repeat(times)
        })
        .collect();
    let long = vec![
        examples
            .iter()
            .filter(|example| !example.is_injection())
            .map(|example| example.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
            .repeat(20),
    ];
    let short_cost = micros_per_kib(&short);
    let long_cost = micros_per_kib(&long);
    println!();
    println!(
        "scan: {short_cost:.1} µs/KiB on ~1 KiB texts ({} texts), {long_cost:.1} µs/KiB on one {} KiB benign document",
        short.len(),
        long.iter().map(String::len).sum::<usize>() / 1024
    );

    if show_misses {
        println!();
        for miss in &evaluation.misses {
            println!(
                "{} {} / {} {:?}: {:?}",
                if miss.example.is_injection() {
                    "FN"
                } else {
                    "FP"
                },
                miss.example.split,
                miss.example.category,
                miss.rules,
                miss.example.text
            );
        }
    }
    if let Some(path) = json_path {
        let splits: serde_json::Map<String, serde_json::Value> = evaluation
            .splits
            .iter()
            .map(|(split, score)| {
                (
                    split.clone(),
                    json!({"n": score.total(), "precision": score.precision(),
                           "recall": score.recall(), "f1": score.f1()}),
                )
            })
            .collect();
        let report = json!({"splits": splits, "scan_us_per_kib_short": short_cost,
                            "scan_us_per_kib_long": long_cost});
        std::fs::write(&path, report.to_string()).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}
