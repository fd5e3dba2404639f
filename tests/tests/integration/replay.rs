//! `gateway-local trace-gen` and `gateway-local replay`: on a generated trace of Zipf-distributed
//! repeats, the cost the cache saves is the trace's repeat rate, (requests - distinct) / requests.

use std::collections::HashSet;

use serde_json::Value;

use crate::common::local::{TempDir, cli};

#[test]
fn the_saved_cost_of_a_replayed_trace_matches_its_repeat_rate() {
    let dir = TempDir::new("replay");
    let trace = cli(
        dir.path(),
        &[
            "trace-gen",
            "--requests",
            "300",
            "--unique",
            "80",
            "--zipf",
            "1.1",
            "--seed",
            "7",
        ],
    );
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines.len(), 300);
    let requests = lines.len() as f64;
    let distinct = lines.iter().collect::<HashSet<_>>().len() as f64;
    let repeat_rate = (requests - distinct) / requests;
    assert!(repeat_rate > 0.3, "a trace with repeats: {repeat_rate}");
    let path = dir.path().join("trace.jsonl");
    std::fs::write(&path, &trace).expect("trace written");

    let report: Value = serde_json::from_str(&cli(
        dir.path(),
        &["replay", path.to_str().expect("utf-8 path"), "--json"],
    ))
    .expect("a JSON report");
    let (on, off) = (&report["with_cache"], &report["without_cache"]);
    for bill in [on, off] {
        assert_eq!(bill["requests"], 300, "{report}");
        assert_eq!(bill["failed"], 0, "{report}");
    }
    assert_eq!(report["distinct"], distinct as u64, "{report}");
    assert_eq!(off["cache_hits"], 0, "{report}");
    assert_eq!(on["cache_hits"], (requests - distinct) as u64, "{report}");
    let cost_off = off["cost_usd"].as_f64().expect("cost");
    let cost_on = on["cost_usd"].as_f64().expect("cost");
    assert!(cost_off > 0.0, "{report}");
    let saved = report["saved_fraction"].as_f64().expect("saved fraction");
    assert!(
        (saved - (cost_off - cost_on) / cost_off).abs() < 1e-9,
        "{report}"
    );
    assert!(
        (saved - repeat_rate).abs() <= 0.05 * repeat_rate,
        "saved {saved} against a repeat rate of {repeat_rate}: {report}"
    );
    // Tokens are billed for the misses only.
    let input_off = off["input_tokens"].as_f64().expect("tokens");
    let input_on = on["input_tokens"].as_f64().expect("tokens");
    assert!(input_off > 0.0, "{report}");
    assert!(
        ((input_off - input_on) / input_off - repeat_rate).abs() <= 0.05 * repeat_rate,
        "{report}"
    );
}
