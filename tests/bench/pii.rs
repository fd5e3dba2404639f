//! PII detection quality and speed on the labelled set (tests/data/pii/set.jsonl): precision and
//! recall per kind and overall for each split, then the scan time in µs per KB of text.
//! Run by tests/bench/pii. A finding counts when its kind and byte range equal a labelled span.

use std::collections::BTreeMap;
use std::time::Instant;

use gateway::guard::pii::{self, PiiKind};
use serde_json::Value;

#[derive(Default, Clone, Copy)]
struct Tally {
    true_positives: u32,
    found: u32,
    labelled: u32,
}

impl Tally {
    fn row(&self, name: &str) -> String {
        let ratio = |a: u32, b: u32| {
            if b == 0 {
                "    -".to_owned()
            } else {
                format!("{:.3}", f64::from(a) / f64::from(b))
            }
        };
        format!(
            "  {name:<16} precision {}  recall {}  (labelled {}, found {})",
            ratio(self.true_positives, self.found),
            ratio(self.true_positives, self.labelled),
            self.labelled,
            self.found
        )
    }
}

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pii/set.jsonl");
    let set = std::fs::read_to_string(&path).expect("the labelled set");
    let rows: Vec<Value> = set
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    for split in ["dev", "heldout"] {
        let mut kinds: BTreeMap<&str, Tally> = PiiKind::ALL
            .iter()
            .map(|k| (k.as_str(), Tally::default()))
            .collect();
        let mut overall = Tally::default();
        let mut examples = 0;
        for row in rows.iter().filter(|r| r["split"] == split) {
            examples += 1;
            let text = row["text"].as_str().expect("text");
            let labelled: Vec<(String, u64, u64)> = row["spans"]
                .as_array()
                .expect("spans")
                .iter()
                .map(|s| {
                    let kind = s["kind"].as_str().expect("kind").to_owned();
                    (
                        kind,
                        s["start"].as_u64().expect("start"),
                        s["end"].as_u64().expect("end"),
                    )
                })
                .collect();
            let found: Vec<(String, u64, u64)> = pii::find(text)
                .into_iter()
                .map(|m| {
                    (
                        m.kind.as_str().to_owned(),
                        m.range.start as u64,
                        m.range.end as u64,
                    )
                })
                .collect();
            for span in &labelled {
                let tally = kinds
                    .entry(PiiKind::parse(&span.0).map_or("?", |k| k.as_str()))
                    .or_default();
                tally.labelled += 1;
                overall.labelled += 1;
            }
            for hit in &found {
                let tally = kinds
                    .entry(PiiKind::parse(&hit.0).map_or("?", |k| k.as_str()))
                    .or_default();
                tally.found += 1;
                overall.found += 1;
                if labelled.contains(hit) {
                    tally.true_positives += 1;
                    overall.true_positives += 1;
                }
            }
        }
        println!("{split} ({examples} examples)");
        for (kind, tally) in &kinds {
            println!("{}", tally.row(kind));
        }
        println!("{}", overall.row("overall"));
    }

    // Speed: the whole set's text scanned repeatedly, and a long prose text with no PII.
    let all: String = rows
        .iter()
        .filter_map(|r| r["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let prose = "The quarterly report was published on 2024-03-15 with revenue of $1,234.56 \
                 per unit, version 2.14.3 of the tool, and 42 pages. "
        .repeat(64);
    for (name, text) in [
        ("labelled set", all.as_str()),
        ("prose, no PII", prose.as_str()),
    ] {
        let rounds = 200;
        let started = Instant::now();
        let mut findings = 0;
        for _ in 0..rounds {
            findings += pii::find(std::hint::black_box(text)).len();
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        let kib = text.len() as f64 / 1024.0;
        println!(
            "speed, {name}: {:.1} µs/KB ({:.1} KB, {} findings per pass)",
            micros / kib,
            kib,
            findings / rounds as usize
        );
    }
    let short = "Can you summarise this paragraph for me in two sentences?";
    let started = Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(pii::find(std::hint::black_box(short)));
    }
    println!(
        "speed, a short message ({} bytes): {:.2} µs",
        short.len(),
        started.elapsed().as_secs_f64() * 1e6 / 10_000.0
    );
}
