//! Near misses for the semantic cache: two questions an embedder puts close together ("Is the
//! VPN required in London?" / "Is the VPN not required in Paris?") whose answers differ because a
//! specific differs. Checked after a similarity hit, before an answer is reused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use unicode_segmentation::UnicodeSegmentation;

pub const NEGATION: &str = "negation";
pub const NUMBER: &str = "number";
pub const DATE: &str = "date";
pub const ENTITY: &str = "entity";

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "nowhere",
    "without",
    "except",
    "excluding",
    "cannot",
    "cant",
    "unless",
    "non",
];

const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
/// Abbreviations that are not also ordinary words ("mar", "may" and "sept" are handled apart).
const MONTH_ABBREVIATIONS: &[&str] = &[
    "jan", "feb", "apr", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const RELATIVE_DAYS: &[&str] = &["today", "tomorrow", "yesterday", "tonight"];
const RELATIVE_PERIODS: &[&str] = &["week", "month", "year", "quarter", "weekend"];
const RELATIVE_MARKERS: &[&str] = &["last", "next", "this", "previous"];

/// "2024-05-01": taken whole before words are split, which would read three numbers.
static ISO_DATE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\b\d{4}-\d{2}-\d{2}\b").ok());

/// Why two questions that embed close together must not share an answer (a negation, a
/// number, a date or a named entity differs), or None.
pub fn specifics_differ(a: &str, b: &str) -> Option<&'static str> {
    let (a, b) = (Specifics::of(a), Specifics::of(b));
    if a.negations != b.negations {
        Some(NEGATION)
    } else if a.numbers != b.numbers {
        Some(NUMBER)
    } else if a.dates != b.dates {
        Some(DATE)
    } else if a.entities.iter().any(|entity| !b.words.contains(entity))
        || b.entities.iter().any(|entity| !a.words.contains(entity))
    {
        Some(ENTITY)
    } else {
        None
    }
}

/// A word of the question, lower-cased, with what its spelling and place said about it.
struct Word {
    lower: String,
    capitalised: bool,
    acronym: bool,
    sentence_start: bool,
}

#[derive(Default)]
struct Specifics {
    negations: usize,
    /// Canonical numbers ("5", "5%", "3.5") with their counts.
    numbers: BTreeMap<String, usize>,
    dates: BTreeMap<String, usize>,
    entities: BTreeSet<String>,
    /// Every word, lower-cased: an entity in one question spelled in lower case in the other is
    /// the same entity.
    words: BTreeSet<String>,
}

impl Specifics {
    fn of(text: &str) -> Self {
        let mut specifics = Self::default();
        let text = match ISO_DATE.as_ref() {
            Some(iso_date) => {
                for date in iso_date.find_iter(text) {
                    *specifics
                        .dates
                        .entry(date.as_str().to_string())
                        .or_default() += 1;
                }
                iso_date.replace_all(text, " ").into_owned()
            }
            None => text.to_string(),
        };
        let words = words(&join_hyphenated(&text));
        let mut used_by_date = vec![false; words.len()];
        for (index, word) in words.iter().enumerate() {
            specifics.words.insert(word.lower.clone());
            if let Some(date) = date_token(&words, index, &mut used_by_date) {
                *specifics.dates.entry(date).or_default() += 1;
            }
        }
        for (index, word) in words.iter().enumerate() {
            if is_negation(&word.lower) {
                specifics.negations += 1;
            }
            if !used_by_date.get(index).copied().unwrap_or(false)
                && let Some(number) = number_token(&words, index)
            {
                *specifics.numbers.entry(number).or_default() += 1;
            }
            let named =
                (word.capitalised && !word.sentence_start && word.lower != "i") || word.acronym;
            if named && !is_date_word(&word.lower) && number_token(&words, index).is_none() {
                specifics.entities.insert(word.lower.clone());
            }
        }
        specifics
    }
}

/// "Wi-Fi" reads as "WiFi" and "on-call" as "oncall": spellings with and without the hyphen
/// are the same word. Hyphens next to digits (ranges, dates) stay.
fn join_hyphenated(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars
        .iter()
        .enumerate()
        .filter(|(index, c)| {
            let between_letters = index
                .checked_sub(1)
                .and_then(|before| chars.get(before))
                .is_some_and(|before| before.is_alphabetic())
                && chars
                    .get(index + 1)
                    .is_some_and(|after| after.is_alphabetic());
            !(**c == '-' && between_letters)
        })
        .map(|(_, c)| *c)
        .collect()
}

/// Words with possessives dropped, marking which start a sentence.
fn words(text: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut sentence_start = true;
    for token in text.split_word_bounds() {
        if token.chars().all(char::is_whitespace) {
            continue;
        }
        if !token.chars().any(char::is_alphanumeric) {
            if token.contains(['.', '?', '!', ':', ';']) {
                sentence_start = true;
            }
            if token == "%" {
                words.push(Word {
                    lower: "%".to_string(),
                    capitalised: false,
                    acronym: false,
                    sentence_start: false,
                });
            }
            continue;
        }
        let bare = token
            .strip_suffix("'s")
            .or_else(|| token.strip_suffix("\u{2019}s"))
            .unwrap_or(token);
        let letters: Vec<char> = bare.chars().filter(|c| c.is_alphabetic()).collect();
        let uppercase = letters.iter().filter(|c| c.is_uppercase()).count();
        words.push(Word {
            lower: bare.to_lowercase().replace('\u{2019}', "'"),
            capitalised: bare.chars().next().is_some_and(char::is_uppercase),
            acronym: uppercase >= 2 && uppercase * 2 > letters.len(),
            sentence_start,
        });
        sentence_start = false;
    }
    words
}

fn is_negation(lower: &str) -> bool {
    NEGATIONS.contains(&lower) || lower.ends_with("n't")
}

/// A number in canonical form: digits without thousands separators, number words as digits,
/// ordinals as their number, a percentage marked.
fn number_token(words: &[Word], index: usize) -> Option<String> {
    let word = words.get(index)?;
    let value = if let Some(position) = NUMBER_WORDS.iter().position(|w| *w == word.lower) {
        position.to_string()
    } else {
        let digits = word.lower.replace(',', "");
        let digits = ["st", "nd", "rd", "th"]
            .iter()
            .find_map(|suffix| digits.strip_suffix(suffix))
            .unwrap_or(&digits);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        match digits.trim_start_matches('0') {
            "" => "0".to_string(),
            trimmed => trimmed.to_string(),
        }
    };
    let next = words.get(index + 1).map(|w| w.lower.as_str());
    let percent = matches!(next, Some("%" | "percent" | "pct"))
        || (next == Some("per") && words.get(index + 2).is_some_and(|w| w.lower == "cent"));
    Some(if percent { format!("{value}%") } else { value })
}

fn is_month(lower: &str) -> bool {
    MONTHS.contains(&lower) || MONTH_ABBREVIATIONS.contains(&lower)
}

fn is_date_word(lower: &str) -> bool {
    is_month(lower) || WEEKDAYS.contains(&lower) || RELATIVE_DAYS.contains(&lower)
}

fn is_year(lower: &str) -> bool {
    lower.len() == 4
        && lower.chars().all(|c| c.is_ascii_digit())
        && lower
            .parse::<u32>()
            .is_ok_and(|year| (1900..=2199).contains(&year))
}

fn is_day_of_month(word: Option<&Word>) -> bool {
    word.and_then(|w| {
        let digits = ["st", "nd", "rd", "th"]
            .iter()
            .find_map(|suffix| w.lower.strip_suffix(suffix))
            .unwrap_or(&w.lower);
        digits.parse::<u32>().ok()
    })
    .is_some_and(|day| (1..=31).contains(&day))
}

/// The date this word names, in canonical form, marking the words it used (a day of the month
/// next to its month is part of the date, not a number). "May" is a month only next to a
/// number; "2024-05-01" splits into three numbers around two dashes, read back as one ISO date.
fn date_token(words: &[Word], index: usize, used: &mut [bool]) -> Option<String> {
    let word = words.get(index)?;
    let lower = word.lower.as_str();
    let mark = |used: &mut [bool], at: usize| {
        if let Some(flag) = used.get_mut(at) {
            *flag = true;
        }
    };
    let previous = index.checked_sub(1).and_then(|i| words.get(i));
    let next = words.get(index + 1);
    if is_year(lower) {
        mark(used, index);
        return Some(format!("year:{lower}"));
    }
    let month = if lower == "may" || lower == "mar" || lower == "sept" {
        (is_day_of_month(previous)
            || is_day_of_month(next)
            || next.is_some_and(|w| is_year(&w.lower)))
        .then_some(lower)
    } else {
        is_month(lower).then_some(lower)
    };
    if let Some(month) = month {
        let month = MONTHS
            .iter()
            .find(|full| full.starts_with(month.get(..3).unwrap_or(month)))
            .copied()
            .unwrap_or(month);
        let day = if is_day_of_month(next) {
            mark(used, index + 1);
            next.map(|w| w.lower.trim_end_matches(char::is_alphabetic).to_string())
        } else if is_day_of_month(previous) {
            mark(used, index - 1);
            previous.map(|w| w.lower.trim_end_matches(char::is_alphabetic).to_string())
        } else {
            None
        };
        return Some(match day {
            Some(day) => format!("{month} {day}"),
            None => month.to_string(),
        });
    }
    if WEEKDAYS.contains(&lower) || RELATIVE_DAYS.contains(&lower) {
        return Some(lower.to_string());
    }
    if RELATIVE_PERIODS.contains(&lower)
        && let Some(marker) = previous.filter(|w| RELATIVE_MARKERS.contains(&w.lower.as_str()))
    {
        return Some(format!("{} {lower}", marker.lower));
    }
    // Quarters: "Q3".
    if lower.len() == 2 && lower.starts_with('q') && lower.ends_with(['1', '2', '3', '4']) {
        return Some(lower.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negation_one_side_lacks_differs() {
        let cases = [
            (
                "Is the VPN required on the office network?",
                "Is the VPN not required on the office network?",
            ),
            (
                "Can I expense a taxi to the airport?",
                "Can't I expense a taxi to the airport?",
            ),
            (
                "Which services restart during a deploy?",
                "Which services never restart during a deploy?",
            ),
            (
                "How do I ship a build with tests?",
                "How do I ship a build without tests?",
            ),
            (
                "List every region",
                "List every region except the primary one",
            ),
        ];
        for (a, b) in cases {
            assert_eq!(specifics_differ(a, b), Some(NEGATION), "{a:?} / {b:?}");
        }
        assert_eq!(
            specifics_differ("Don't cache this", "Do not cache this"),
            None
        );
    }

    #[test]
    fn a_different_number_differs() {
        let cases = [
            (
                "What is the limit for 5 users?",
                "What is the limit for 6 users?",
            ),
            ("top five hotels in town", "top 10 hotels in town"),
            ("Give a 20% discount", "Give a 25% discount"),
            ("Retry 3 times", "Retry 3 times, then 3 more"),
            (
                "set the timeout to 2.5 seconds",
                "set the timeout to 25 seconds",
            ),
            ("what does 30 percent cover", "what does 30 cover"),
        ];
        for (a, b) in cases {
            assert_eq!(specifics_differ(a, b), Some(NUMBER), "{a:?} / {b:?}");
        }
        assert_eq!(
            specifics_differ("top five hotels", "the top 5 hotels"),
            None
        );
        assert_eq!(specifics_differ("50 percent off", "50% off"), None);
        assert_eq!(specifics_differ("1,000 requests", "1000 requests"), None);
    }

    #[test]
    fn a_different_date_differs() {
        let cases = [
            ("Sales figures for 2023", "Sales figures for 2024"),
            ("Who is on call on Monday?", "Who is on call on Tuesday?"),
            ("What happened on May 5?", "What happened on May 6?"),
            ("Is the office open tomorrow?", "Is the office open today?"),
            ("deploys on 2024-05-01", "deploys on 2024-06-01"),
            ("holidays in March", "holidays in April"),
            ("the report for last week", "the report for next week"),
            ("revenue in Q3", "revenue in Q4"),
        ];
        for (a, b) in cases {
            assert_eq!(specifics_differ(a, b), Some(DATE), "{a:?} / {b:?}");
        }
        assert_eq!(
            specifics_differ("May I see the report?", "Can I see the report?"),
            None
        );
        assert_eq!(specifics_differ("on 5 May", "on May 5th"), None);
    }

    #[test]
    fn a_different_named_entity_differs() {
        let cases = [
            (
                "What is the weather in London?",
                "What is the weather in Paris?",
            ),
            (
                "How do I configure AWS credentials?",
                "How do I configure GCP credentials?",
            ),
            ("Who founded Acme Corp?", "Who founded Globex Corp?"),
            (
                "How do I install the agent on Ubuntu?",
                "How do I install the agent?",
            ),
            (
                "AWS credentials: how do I rotate them?",
                "GCP credentials: how do I rotate them?",
            ),
        ];
        for (a, b) in cases {
            assert_eq!(specifics_differ(a, b), Some(ENTITY), "{a:?} / {b:?}");
        }
    }

    #[test]
    fn paraphrases_do_not_differ() {
        let cases = [
            ("What is the capital of France?", "What's France's capital?"),
            (
                "How do I reset my VPN password?",
                "how do i reset my vpn password",
            ),
            (
                "How do I reset my password?",
                "Reset my password: how do I do it?",
            ),
            (
                "Explain the on-call rota.",
                "Can you explain the on-call rota?",
            ),
            ("Where is the Berlin office?", "where's the berlin office"),
        ];
        for (a, b) in cases {
            assert_eq!(specifics_differ(a, b), None, "{a:?} / {b:?}");
            assert_eq!(specifics_differ(b, a), None, "{b:?} / {a:?}");
        }
    }

    /// The labelled pairs the semantic cache is evaluated on: every near miss is caught with
    /// its kind, no paraphrase is flagged.
    #[test]
    fn labelled_pairs_are_classified() {
        #[derive(serde::Deserialize)]
        struct Pair {
            cached: String,
            asked: String,
            should_hit: bool,
            kind: String,
        }
        let pairs: Vec<Pair> = serde_json::from_str(include_str!(
            "../../../tests/data/semantic_cache/pairs.json"
        ))
        .unwrap();
        assert!(pairs.len() >= 40);
        for pair in &pairs {
            let differ = specifics_differ(&pair.cached, &pair.asked);
            if pair.should_hit {
                assert_eq!(differ, None, "{:?} / {:?}", pair.cached, pair.asked);
            } else {
                assert_eq!(
                    differ,
                    Some(pair.kind.as_str()),
                    "{:?} / {:?}",
                    pair.cached,
                    pair.asked
                );
            }
            assert_eq!(
                specifics_differ(&pair.asked, &pair.cached),
                differ,
                "not symmetric"
            );
        }
    }
}
