//! Personal data and secrets in text: emails, phone numbers, payment cards, IBANs, a few national
//! ids, IP addresses, AWS keys and provider API keys. Each kind is a bounded regex (linear time)
//! that proposes candidates, then a validator (checksums, value ranges, the characters around the
//! match) that keeps only what is really that kind: ordinary numbers, dates, versions, hashes and
//! order numbers must pass untouched, because a redacted price or date changes the answer.

use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// What a match is. The order is the precedence when two candidates overlap at the same start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    ApiKey,
    AwsAccessKey,
    AwsSecretKey,
    Email,
    Iban,
    Card,
    UsSsn,
    UkNino,
    EsDni,
    InAadhaar,
    IpAddress,
    Phone,
}

impl PiiKind {
    pub const ALL: [PiiKind; 12] = [
        PiiKind::ApiKey,
        PiiKind::AwsAccessKey,
        PiiKind::AwsSecretKey,
        PiiKind::Email,
        PiiKind::Iban,
        PiiKind::Card,
        PiiKind::UsSsn,
        PiiKind::UkNino,
        PiiKind::EsDni,
        PiiKind::InAadhaar,
        PiiKind::IpAddress,
        PiiKind::Phone,
    ];

    /// The name in metrics, error messages and the labelled set.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::ApiKey => "api_key",
            PiiKind::AwsAccessKey => "aws_access_key",
            PiiKind::AwsSecretKey => "aws_secret_key",
            PiiKind::Email => "email",
            PiiKind::Iban => "iban",
            PiiKind::Card => "card",
            PiiKind::UsSsn => "us_ssn",
            PiiKind::UkNino => "uk_nino",
            PiiKind::EsDni => "es_dni",
            PiiKind::InAadhaar => "in_aadhaar",
            PiiKind::IpAddress => "ip_address",
            PiiKind::Phone => "phone",
        }
    }

    /// The word in a redaction placeholder: `[EMAIL_1]`.
    pub fn placeholder_label(self) -> &'static str {
        match self {
            PiiKind::ApiKey => "API_KEY",
            PiiKind::AwsAccessKey => "AWS_KEY",
            PiiKind::AwsSecretKey => "AWS_SECRET",
            PiiKind::Email => "EMAIL",
            PiiKind::Iban => "IBAN",
            PiiKind::Card => "CARD",
            PiiKind::UsSsn => "SSN",
            PiiKind::UkNino => "NINO",
            PiiKind::EsDni => "DNI",
            PiiKind::InAadhaar => "AADHAAR",
            PiiKind::IpAddress => "IP",
            PiiKind::Phone => "PHONE",
        }
    }

    pub fn parse(name: &str) -> Option<PiiKind> {
        PiiKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// One finding: its kind and its byte range in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiMatch {
    pub kind: PiiKind,
    pub range: Range<usize>,
}

/// Every finding in `text`, sorted by start and never overlapping (of two overlapping
/// candidates the one starting first wins, then the longer, then the kind listed first).
pub fn find(text: &str) -> Vec<PiiMatch> {
    let mut candidates = Vec::new();
    for detector in DETECTORS.iter() {
        let Some(regex) = &detector.regex else {
            continue;
        };
        for found in regex.find_iter(text) {
            if let Some(range) = (detector.validate)(text, found.range()) {
                candidates.push(PiiMatch {
                    kind: detector.kind,
                    range,
                });
            }
        }
    }
    candidates.sort_by(|a, b| {
        a.range
            .start
            .cmp(&b.range.start)
            .then(b.range.end.cmp(&a.range.end))
            .then(a.kind.cmp(&b.kind))
    });
    let mut kept: Vec<PiiMatch> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if kept
            .last()
            .is_none_or(|last| candidate.range.start >= last.range.end)
        {
            kept.push(candidate);
        }
    }
    kept
}

struct Detector {
    kind: PiiKind,
    regex: Option<Regex>,
    /// The range to report (it may trim the candidate), or `None` to reject it.
    validate: fn(&str, Range<usize>) -> Option<Range<usize>>,
}

/// The patterns are constants that the unit tests compile; one that failed would match nothing
/// rather than take the process down.
fn regex(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    vec![
        Detector {
            kind: PiiKind::ApiKey,
            regex: regex(concat!(
                r"sk-ant-[A-Za-z0-9_-]{20,200}",
                r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}",
                r"|gw-[0-9a-f]{48}",
                r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}",
                r"|AIza[0-9A-Za-z_-]{35}",
                r"|xox[abposr]-[A-Za-z0-9-]{10,200}",
            )),
            validate: api_key,
        },
        Detector {
            kind: PiiKind::AwsAccessKey,
            regex: regex(r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z2-7]{16}"),
            validate: word_bounded,
        },
        Detector {
            kind: PiiKind::AwsSecretKey,
            regex: regex(r"[A-Za-z0-9/+]{40}"),
            validate: aws_secret,
        },
        Detector {
            kind: PiiKind::Email,
            regex: regex(
                r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}",
            ),
            validate: email,
        },
        Detector {
            kind: PiiKind::Iban,
            regex: regex(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,32}"),
            validate: iban,
        },
        Detector {
            kind: PiiKind::Card,
            regex: regex(r"[0-9](?:[ -]?[0-9]){12,18}"),
            validate: card,
        },
        Detector {
            kind: PiiKind::UsSsn,
            regex: regex(r"[0-9]{3}([- ])[0-9]{2}[- ][0-9]{4}"),
            validate: us_ssn,
        },
        Detector {
            kind: PiiKind::UkNino,
            regex: regex(
                r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]",
            ),
            validate: uk_nino,
        },
        Detector {
            kind: PiiKind::EsDni,
            regex: regex(r"[XYZ]-?[0-9]{7}-?[A-Z]|[0-9]{8}-?[A-Z]"),
            validate: es_dni,
        },
        Detector {
            kind: PiiKind::InAadhaar,
            regex: regex(r"[2-9][0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}"),
            validate: in_aadhaar,
        },
        Detector {
            kind: PiiKind::IpAddress,
            regex: regex(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"),
            validate: ipv4,
        },
        Detector {
            kind: PiiKind::IpAddress,
            regex: regex(
                // A trailing dotted quad first, so `::ffff:192.0.2.1` is taken whole.
                r"(?i)[0-9a-f]{0,4}(?::(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]{0,4})){2,7}",
            ),
            validate: ipv6,
        },
        Detector {
            kind: PiiKind::Phone,
            regex: regex(concat!(
                // International: +CC then groups (E.164 allows at most 15 digits).
                r"\+[1-9][0-9]{0,2}[ .-]?(?:\(0?[0-9]{1,4}\)[ .-]?)?[0-9]{1,5}(?:[ .-]?[0-9]{2,5}){1,5}",
                // North America: (555) 123-4567, 555-123-4567, 555.123.4567.
                r"|\([2-9][0-9]{2}\) ?[0-9]{3}[ .-][0-9]{4}|[2-9][0-9]{2}[.-][0-9]{3}[.-][0-9]{4}",
                // France and others in pairs: 06 12 34 56 78, 01.23.45.67.89.
                r"|0[1-9](?:[ .-][0-9]{2}){4}",
                // UK and Germany style trunk prefix and area code: 020 7946 0958, 07700 900123,
                // 030 12345678, 0171/1234567.
                r"|0[1-9][0-9]{1,4}[ /-][0-9]{3,8}(?:[ -][0-9]{3,4})?",
            )),
            validate: phone,
        },
    ]
});

fn char_before(text: &str, at: usize) -> Option<char> {
    text.get(..at).and_then(|head| head.chars().next_back())
}

fn char_after(text: &str, at: usize) -> Option<char> {
    text.get(at..).and_then(|tail| tail.chars().next())
}

fn slice(text: &str, range: Range<usize>) -> &str {
    text.get(range).unwrap_or_default()
}

/// Not glued to a letter, digit or underscore on either side.
fn word_bounded(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    (!glued(char_before(text, range.start)) && !glued(char_after(text, range.end))).then_some(range)
}

/// Part of a longer run of space-separated groups (`PL18 0868 7130 7354 ...`): a group of
/// digits or capitals just before, or a digit just after, across one space.
fn inside_groups(text: &str, range: &Range<usize>) -> bool {
    let before = text.get(..range.start).unwrap_or_default();
    let after = text.get(range.end..).unwrap_or_default();
    let group_before = before
        .strip_suffix(' ')
        .and_then(|head| head.chars().next_back())
        .is_some_and(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
    let group_after = after
        .strip_prefix(' ')
        .and_then(|tail| tail.chars().next())
        .is_some_and(|c| c.is_ascii_digit());
    group_before || group_after
}

/// A number standing on its own: not part of a longer number, a dotted version or a path
/// (`1.2.3.4.5`, `v1.2.3.4`, `10-20-30-...`).
fn number_bounded(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = word_bounded(text, range)?;
    let joins_number = |c: Option<char>, neighbour: Option<char>| {
        matches!(c, Some('.' | '-' | '/' | ':' | ',' | '_'))
            && neighbour.is_some_and(|n| n.is_ascii_digit())
    };
    let before = char_before(text, range.start);
    let before2 = before.and_then(|c| char_before(text, range.start.saturating_sub(c.len_utf8())));
    let after = char_after(text, range.end);
    let after2 = after.and_then(|c| char_after(text, range.end + c.len_utf8()));
    if joins_number(before, before2) || joins_number(after, after2) {
        return None;
    }
    Some(range)
}

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn api_key(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = word_bounded_prefix(text, range)?;
    let value = slice(text, range.clone());
    // `sk-` alone also starts ordinary hyphenated words: a key has digits and mixed case or
    // is long (`sk-this-is-not-a-key` is prose).
    if value.starts_with("sk-") && !value.starts_with("sk-ant-") {
        let body = value.trim_start_matches("sk-");
        let has_digit = body.chars().any(|c| c.is_ascii_digit());
        let has_upper = body.chars().any(|c| c.is_ascii_uppercase());
        if !(has_digit && (has_upper || body.len() >= 32)) {
            return None;
        }
    }
    Some(range)
}

/// Only the start must not be glued to a word: keys run to the end of their alphabet.
fn word_bounded_prefix(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let glued = char_before(text, range.start).is_some_and(|c| c.is_alphanumeric() || c == '_');
    let glued_after = char_after(text, range.end).is_some_and(|c| c.is_alphanumeric());
    (!glued && !glued_after).then_some(range)
}

/// A 40-character AWS secret access key counts only near AWS context: on its own it is just a
/// long token (a hash, base64 data).
fn aws_secret(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let glued = |c: Option<char>, also: &str| {
        c.is_some_and(|c| c.is_ascii_alphanumeric() || also.contains(c))
    };
    // `=` is base64 padding after a token, and an assignment before one.
    if glued(char_before(text, range.start), "/+") || glued(char_after(text, range.end), "/+=") {
        return None;
    }
    let value = slice(text, range.clone());
    let upper = value.chars().any(|c| c.is_ascii_uppercase());
    let lower = value.chars().any(|c| c.is_ascii_lowercase());
    let digit = value.chars().any(|c| c.is_ascii_digit());
    // Hex digests (git hashes, SHA-1) have no upper case; AWS secrets mix all three.
    if !(upper && lower && digit) {
        return None;
    }
    let window_start = floor_boundary(text, range.start.saturating_sub(160));
    let before = slice(text, window_start..range.start).to_ascii_lowercase();
    let near_context = ["aws", "secret", "akia", "asia"]
        .iter()
        .any(|word| before.contains(word));
    near_context.then_some(range)
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// File names with a scale suffix (`icon@2x.png`) look like addresses.
const FILE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "gif", "svg", "webp", "js", "css"];

fn email(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    if char_before(text, range.start).is_some_and(|c| c.is_alphanumeric() || "._%+-".contains(c)) {
        return None;
    }
    let value = slice(text, range.clone());
    let tld = value
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if FILE_EXTENSIONS.contains(&tld.as_str()) {
        return None;
    }
    if char_after(text, range.end).is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    Some(range)
}

/// IBAN lengths by country (ISO 13616 registry, the countries most often seen).
const IBAN_LENGTHS: [(&str, usize); 52] = [
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MT", 31),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PT", 25),
    ("RO", 24),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
];

fn iban(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let candidate = slice(text, range.clone());
    let country = candidate.get(..2)?;
    let (_, length) = IBAN_LENGTHS.iter().find(|(code, _)| *code == country)?;
    // The candidate may run into following capitals or digits: cut it at the country's length.
    let mut seen = 0;
    let mut end = range.start;
    for (offset, c) in candidate.char_indices() {
        if c == ' ' {
            continue;
        }
        seen += 1;
        if seen == *length {
            end = range.start + offset + c.len_utf8();
            break;
        }
    }
    if seen != *length {
        return None;
    }
    let range = range.start..end;
    let compact: String = slice(text, range.clone())
        .chars()
        .filter(|c| *c != ' ')
        .collect();
    if !iban_checksum_ok(&compact) {
        return None;
    }
    word_bounded(text, range)
}

/// ISO 7064 mod 97-10: the country and check digits moved to the end, letters as 10..35.
pub(crate) fn iban_checksum_ok(compact: &str) -> bool {
    let (head, tail) = compact.split_at(compact.len().min(4));
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let Some(value) = c.to_digit(36) else {
            return false;
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

pub(crate) fn luhn_ok(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Issuer prefixes (IIN ranges) and lengths of the card networks in common use.
fn known_issuer(digits: &[u32]) -> bool {
    let prefix = |n: usize| digits.iter().take(n).fold(0u32, |acc, &d| acc * 10 + d);
    let len = digits.len();
    let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
    let visa = p1 == 4 && matches!(len, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16;
    let amex = matches!(p2, 34 | 37) && len == 15;
    let discover =
        (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || (622126..=622925).contains(&p6))
            && (16..=19).contains(&len);
    let jcb = (3528..=3589).contains(&p4) && (16..=19).contains(&len);
    let diners = ((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39) || p4 == 3095)
        && (14..=19).contains(&len);
    let unionpay = p2 == 62 && (16..=19).contains(&len);
    let maestro = (p2 == 50
        || (56..=58).contains(&p2)
        || matches!(p4, 6304 | 6759 | 6761 | 6763)
        || p2 == 67)
        && (12..=19).contains(&len);
    visa || mastercard || amex || discover || jcb || diners || unionpay || maestro
}

/// The regex is greedy: `4111 1111 1111 1111 12/25` reaches into the expiry date. The whole
/// candidate is tried first, then each shorter one ending at a separator.
fn card(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let candidate = slice(text, range.clone());
    let cuts = candidate
        .char_indices()
        .filter(|(_, c)| *c == ' ' || *c == '-')
        .map(|(offset, _)| range.start + offset)
        .rev();
    std::iter::once(range.end)
        .chain(cuts)
        .find_map(|end| card_exact(text, range.start..end))
}

fn card_exact(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = number_bounded(text, range)?;
    let value = slice(text, range.clone());
    // Separators, if any, are of one kind: `4111 1111-1111 1111` is not how cards are written.
    if value.contains(' ') && value.contains('-') {
        return None;
    }
    let digits = digits(value);
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| Some(&d) == digits.first()) {
        return None;
    }
    (luhn_ok(&digits) && known_issuer(&digits)).then_some(range)
}

fn us_ssn(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = number_bounded(text, range)?;
    let value = slice(text, range.clone());
    // One separator throughout: `123-45 6789` is not an SSN.
    let separators: Vec<char> = value.chars().filter(|c| !c.is_ascii_digit()).collect();
    if separators.first() != separators.last() {
        return None;
    }
    let digits = digits(value);
    let area = digits.iter().take(3).fold(0, |a, &d| a * 10 + d);
    let group = digits.iter().skip(3).take(2).fold(0, |a, &d| a * 10 + d);
    let serial = digits.iter().skip(5).take(4).fold(0, |a, &d| a * 10 + d);
    // Never issued: area 000, 666 and 900-999, group 00, serial 0000; 078-05-1120 is the
    // famous wallet-card sample.
    let never_issued = area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0;
    let sample = value.replace(' ', "-") == "078-05-1120";
    (!never_issued && !sample).then_some(range)
}

fn uk_nino(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = word_bounded(text, range)?;
    let prefix = slice(text, range.start..range.start + 2);
    if ["BG", "GB", "NK", "KN", "TN", "NT", "ZZ"].contains(&prefix) {
        return None;
    }
    // All spaced or none: `AB 12 3456C` is a reference code, not a NINO.
    let spaces = slice(text, range.clone()).matches(' ').count();
    matches!(spaces, 0 | 4).then_some(range)
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

fn es_dni(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = word_bounded(text, range)?;
    let value = slice(text, range.clone());
    let letter = value.chars().next_back()?;
    let mut number: u32 = match value.chars().next()? {
        'X' => 0,
        'Y' => 1,
        'Z' => 2,
        _ => 0,
    };
    for d in value.chars().filter_map(|c| c.to_digit(10)) {
        number = number * 10 + d;
    }
    let expected = DNI_LETTERS
        .get((number % 23) as usize)
        .map(|&b| char::from(b));
    (expected == Some(letter)).then_some(range)
}

/// Verhoeff's dihedral-group tables.
const VERHOEFF_D: [[u8; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const VERHOEFF_P: [[u8; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 8, 7, 0, 6],
    [4, 2, 8, 6, 5, 7, 0, 9, 3, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];

pub(crate) fn verhoeff_ok(digits: &[u32]) -> bool {
    let mut check: u8 = 0;
    for (i, &d) in digits.iter().rev().enumerate() {
        let permuted = VERHOEFF_P
            .get(i % 8)
            .and_then(|row| row.get(d as usize))
            .copied();
        let next = permuted.and_then(|p| {
            VERHOEFF_D
                .get(usize::from(check))
                .and_then(|row| row.get(usize::from(p)))
        });
        match next {
            Some(&value) => check = value,
            None => return false,
        }
    }
    check == 0
}

fn in_aadhaar(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = number_bounded(text, range)?;
    if inside_groups(text, &range) {
        return None;
    }
    let value = slice(text, range.clone());
    let grouped = value.contains(' ') || value.contains('-');
    // Twelve bare digits are as often an order or tracking number: without the 4-4-4 grouping
    // the word itself must be near.
    if !grouped {
        let window_start = floor_boundary(text, range.start.saturating_sub(60));
        let before = slice(text, window_start..range.start).to_lowercase();
        if !["aadhaar", "aadhar", "uidai", "आधार"]
            .iter()
            .any(|w| before.contains(w))
        {
            return None;
        }
    }
    verhoeff_ok(&digits(value)).then_some(range)
}

fn ipv4(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let range = word_bounded(text, range)?;
    // Part of a longer dotted number (`1.2.3.4.5`); a `:port` may follow.
    let dotted_digit = |c: Option<char>, next: Option<char>| {
        c == Some('.') && next.is_some_and(|n| n.is_ascii_digit())
    };
    let before = char_before(text, range.start);
    let before2 = before.and_then(|c| char_before(text, range.start - c.len_utf8()));
    let after = char_after(text, range.end);
    let after2 = after.and_then(|c| char_after(text, range.end + c.len_utf8()));
    if dotted_digit(before, before2) || dotted_digit(after, after2) {
        return None;
    }
    let value = slice(text, range.clone());
    let octets_ok = value.split('.').all(|octet| {
        (octet.len() == 1 || !octet.starts_with('0'))
            && octet.parse::<u16>().is_ok_and(|n| n <= 255)
    });
    if !octets_ok {
        return None;
    }
    // `v1.2.3.4`, `version 10.0.0.1` and friends are version numbers.
    let window_start = floor_boundary(text, range.start.saturating_sub(12));
    let before = slice(text, window_start..range.start).to_lowercase();
    let before = before.trim_end();
    if ["version", "release", "build", "ver.", "v"]
        .iter()
        .any(|w| before.ends_with(w))
    {
        return None;
    }
    Some(range)
}

fn ipv6(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
    if glued(char_before(text, range.start)) {
        return None;
    }
    let value = slice(text, range.clone());
    // The regex cannot stop before a trailing colon: `fe80::1:` in prose ends the sentence.
    let trimmed = value.trim_end_matches(':');
    let range = range.start..range.start + trimmed.len();
    if glued(char_after(text, range.end)) && !value.ends_with(':') {
        return None;
    }
    let groups = trimmed.split(':').filter(|g| !g.is_empty()).count();
    // `::`, `a::b` and `std::io::Read` are not addresses; an address has three groups or more
    // (`::1` and `fe80::1` included by their shape).
    let compressed_short = matches!(trimmed, "::1")
        || trimmed.to_ascii_lowercase().starts_with("fe80::")
        || trimmed.contains('.');
    if groups < 3 && !compressed_short {
        return None;
    }
    trimmed.parse::<Ipv6Addr>().is_ok().then_some(range)
}

fn phone(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let value = slice(text, range.clone());
    let range = if value.starts_with('+') || value.starts_with('(') {
        // `+` and `(` are not word characters: only what follows must stand alone.
        let after = char_after(text, range.end);
        let glued_before = char_before(text, range.start).is_some_and(|c| c.is_alphanumeric());
        let joins = matches!(after, Some('.' | '-' | '/' | ':' | ','))
            && after
                .and_then(|c| char_after(text, range.end + c.len_utf8()))
                .is_some_and(|n| n.is_ascii_digit());
        if glued_before || after.is_some_and(|c| c.is_alphanumeric()) || joins {
            return None;
        }
        range
    } else {
        number_bounded(text, range)?
    };
    if inside_groups(text, &range) {
        return None;
    }
    let count = digits(value).len();
    if !(8..=15).contains(&count) {
        return None;
    }
    // A price or a quantity: `€ 0612 345` is not dialled.
    let window_start = floor_boundary(text, range.start.saturating_sub(2));
    let before = slice(text, window_start..range.start);
    if before.contains(['$', '€', '£', '¥', '#']) {
        return None;
    }
    Some(range)
}

#[cfg(test)]
mod tests;
