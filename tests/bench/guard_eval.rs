//! Scores `gateway::guard::scan_untrusted` on the labelled set in tests/data/injection: a text
//! is predicted an injection when any rule trips. Shared by the `guard-bench` example (the table)
//! and the integration test that keeps the thresholds in CI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Example {
    pub text: String,
    pub label: String,
    pub category: String,
    pub split: String,
}

impl Example {
    pub fn is_injection(&self) -> bool {
        self.label == "injection"
    }
}

pub fn set_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/injection/set.jsonl")
}

pub fn load() -> Result<Vec<Example>, String> {
    let path = set_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), index + 1))
        })
        .collect()
}

/// Confusion counts of one slice of the set.
#[derive(Debug, Default, Clone, Copy)]
pub struct Score {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub true_negatives: usize,
}

impl Score {
    pub fn add(&mut self, expected: bool, predicted: bool) {
        match (expected, predicted) {
            (true, true) => self.true_positives += 1,
            (false, true) => self.false_positives += 1,
            (true, false) => self.false_negatives += 1,
            (false, false) => self.true_negatives += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.true_positives + self.false_positives + self.false_negatives + self.true_negatives
    }

    /// 1 when nothing was predicted positive (no false alarm was raised).
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// 1 when the slice holds no injection.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// One misclassified example, for the report.
pub struct Miss<'a> {
    pub example: &'a Example,
    pub rules: Vec<&'static str>,
}

pub struct Evaluation<'a> {
    /// By split.
    pub splits: BTreeMap<String, Score>,
    /// By (split, category).
    pub categories: BTreeMap<(String, String), Score>,
    pub misses: Vec<Miss<'a>>,
}

pub fn evaluate(examples: &[Example]) -> Evaluation<'_> {
    let mut evaluation = Evaluation {
        splits: BTreeMap::new(),
        categories: BTreeMap::new(),
        misses: Vec::new(),
    };
    for example in examples {
        let rules: Vec<&'static str> = gateway::guard::scan_untrusted(&example.text)
            .iter()
            .map(|finding| finding.rule)
            .collect();
        let predicted = !rules.is_empty();
        evaluation
            .splits
            .entry(example.split.clone())
            .or_default()
            .add(example.is_injection(), predicted);
        evaluation
            .categories
            .entry((example.split.clone(), example.category.clone()))
            .or_default()
            .add(example.is_injection(), predicted);
        if predicted != example.is_injection() {
            evaluation.misses.push(Miss { example, rules });
        }
    }
    evaluation
}
