use std::collections::BTreeMap;

use serde_json::Value;

use super::*;

fn kinds(text: &str) -> Vec<(&'static str, &str)> {
    find(text)
        .into_iter()
        .map(|m| (m.kind.as_str(), &text[m.range]))
        .collect()
}

#[test]
fn every_pattern_compiles() {
    assert!(DETECTORS.iter().all(|d| d.regex.is_some()));
}

#[test]
fn cards_need_luhn_and_a_known_issuer() {
    assert_eq!(
        kinds("card 4111 1111 1111 1111 ok"),
        [("card", "4111 1111 1111 1111")]
    );
    assert_eq!(
        kinds("amex 3782-822463-10005"),
        [("card", "3782-822463-10005")]
    );
    assert!(kinds("card 4111 1111 1111 1112").is_empty(), "Luhn fails");
    // Luhn-valid but no network starts with 9.
    assert!(kinds("9111 1111 1111 1113").is_empty());
    assert!(kinds("0000 0000 0000 0000").is_empty());
    assert_eq!(
        kinds("4111 1111 1111 1111 12/25"),
        [("card", "4111 1111 1111 1111")],
        "the expiry after the number is not part of it"
    );
}

#[test]
fn ibans_need_their_country_length_and_mod_97() {
    assert_eq!(
        kinds("IBAN DE89 3704 0044 0532 0130 00."),
        [("iban", "DE89 3704 0044 0532 0130 00")]
    );
    assert_eq!(
        kinds("GB82WEST12345698765432 THEN"),
        [("iban", "GB82WEST12345698765432")]
    );
    assert!(kinds("DE89 3704 0044 0532 0130 01").is_empty());
    assert!(kinds("DE89 3704 0044 0532 0130").is_empty(), "too short");
    assert!(
        kinds("QQ89 3704 0044 0532 0130 00").is_empty(),
        "no such country"
    );
}

#[test]
fn national_ids_and_their_checks() {
    assert_eq!(kinds("SSN 536-90-4399"), [("us_ssn", "536-90-4399")]);
    for never in [
        "000-12-3456",
        "666-12-3456",
        "912-12-3456",
        "123-00-4567",
        "123-45-0000",
    ] {
        assert!(kinds(never).is_empty(), "{never}");
    }
    assert_eq!(kinds("NINO AB123456C."), [("uk_nino", "AB123456C")]);
    assert_eq!(kinds("NINO AB 12 34 56 C"), [("uk_nino", "AB 12 34 56 C")]);
    assert!(
        kinds("GB123456A").is_empty(),
        "GB is not an allocated prefix"
    );
    assert_eq!(kinds("DNI 12345678Z"), [("es_dni", "12345678Z")]);
    assert_eq!(kinds("NIE X1234567L"), [("es_dni", "X1234567L")]);
    assert!(kinds("DNI 12345678A").is_empty(), "wrong check letter");
    assert_eq!(
        kinds("Aadhaar 2345 6789 0125"),
        [("in_aadhaar", "2345 6789 0125")]
    );
    assert!(kinds("2345 6789 0123").is_empty(), "Verhoeff fails");
    assert!(
        kinds("order 234567890125").is_empty(),
        "bare without the word"
    );
    assert_eq!(
        kinds("aadhaar no 234567890125"),
        [("in_aadhaar", "234567890125")]
    );
}

#[test]
fn verhoeff_matches_the_published_example() {
    // 236 has check digit 3 (Verhoeff's worked example).
    assert!(verhoeff_ok(&[2, 3, 6, 3]));
    assert!(!verhoeff_ok(&[2, 3, 6, 4]));
}

#[test]
fn ip_addresses_but_not_versions_or_times() {
    assert_eq!(kinds("from 203.0.113.7."), [("ip_address", "203.0.113.7")]);
    assert_eq!(
        kinds("at 2001:db8::8a2e:370:7334"),
        [("ip_address", "2001:db8::8a2e:370:7334")]
    );
    assert_eq!(
        kinds("on ::ffff:192.0.2.128"),
        [("ip_address", "::ffff:192.0.2.128")]
    );
    for not_ip in [
        "version 1.2.3.4",
        "v10.0.0.1",
        "1.2.3.4.5",
        "256.1.1.1",
        "01.02.03.04",
        "12:30:45",
        "std::io::Read",
        "00:1A:2B:3C:4D:5E",
        "a::b",
    ] {
        assert!(kinds(not_ip).is_empty(), "{not_ip}: {:?}", kinds(not_ip));
    }
}

#[test]
fn emails_but_not_retina_assets() {
    assert_eq!(
        kinds("mail a.b+c@mail.example.org."),
        [("email", "a.b+c@mail.example.org")]
    );
    assert!(kinds("icon@2x.png").is_empty());
    assert!(kinds("npm i @types/node@20.11.5").is_empty());
}

#[test]
fn phones_but_not_dates_or_prices() {
    assert_eq!(
        kinds("call +44 20 7946 0958"),
        [("phone", "+44 20 7946 0958")]
    );
    assert_eq!(kinds("call (415) 555-2671"), [("phone", "(415) 555-2671")]);
    assert_eq!(
        kinds("appelle 06 12 34 56 78"),
        [("phone", "06 12 34 56 78")]
    );
    for not_phone in [
        "2024-01-15",
        "15.01.2024",
        "12:30",
        "1.2.3",
        "$1,234.56",
        "+1 and +44",
    ] {
        assert!(
            kinds(not_phone).is_empty(),
            "{not_phone}: {:?}",
            kinds(not_phone)
        );
    }
}

#[test]
fn keys_and_secrets() {
    assert_eq!(
        kinds("id AKIAIOSFODNN7EXAMPLE"),
        [("aws_access_key", "AKIAIOSFODNN7EXAMPLE")]
    );
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    assert_eq!(
        kinds(&format!("aws_secret_access_key={secret}")),
        [("aws_secret_key", secret)]
    );
    assert!(
        kinds(&format!("token {secret}")).is_empty(),
        "no AWS context"
    );
    let gateway = format!("gw-{}", "ab12".repeat(12));
    assert_eq!(kinds(&gateway), [("api_key", gateway.as_str())]);
    let anthropic = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345";
    assert_eq!(kinds(anthropic), [("api_key", anthropic)]);
    assert!(kinds("sk-this-is-not-a-key-but-prose-words").is_empty());
    assert!(
        kinds("commit a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0 aws").is_empty(),
        "a hex hash is not a secret"
    );
}

#[test]
fn matches_are_sorted_and_disjoint_on_multibyte_text() {
    let text = "é 顧客 anna@example.com — +33 6 12 34 56 78 — 203.0.113.9";
    let found = find(text);
    assert_eq!(found.len(), 3);
    assert!(found.windows(2).all(|w| w[0].range.end <= w[1].range.start));
}

/// The labelled set (tests/data/pii/set.jsonl): every kind found, precision >= 0.95 and recall
/// >= 0.9 on each split. A finding counts when its kind and range equal a labelled span.
#[test]
fn labelled_set_precision_and_recall() {
    let set = include_str!("../../../../tests/data/pii/set.jsonl");
    let mut seen_kinds = BTreeMap::new();
    for split in ["dev", "heldout"] {
        let (mut true_positives, mut found_total, mut labelled_total) = (0, 0, 0);
        for line in set.lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            if row["split"] != split {
                continue;
            }
            let text = row["text"].as_str().unwrap();
            let labelled: Vec<(String, usize, usize)> = row["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["kind"].as_str().unwrap().to_owned(),
                        s["start"].as_u64().unwrap() as usize,
                        s["end"].as_u64().unwrap() as usize,
                    )
                })
                .collect();
            let found: Vec<(String, usize, usize)> = find(text)
                .into_iter()
                .map(|m| (m.kind.as_str().to_owned(), m.range.start, m.range.end))
                .collect();
            for hit in &found {
                if labelled.contains(hit) {
                    true_positives += 1;
                    *seen_kinds.entry(hit.0.clone()).or_insert(0) += 1;
                } else {
                    eprintln!("{split} false positive {hit:?} in {text:?}");
                }
            }
            for span in &labelled {
                if !found.contains(span) {
                    eprintln!("{split} missed {span:?} in {text:?}");
                }
            }
            found_total += found.len();
            labelled_total += labelled.len();
        }
        let precision = f64::from(true_positives) / found_total as f64;
        let recall = f64::from(true_positives) / labelled_total as f64;
        eprintln!("{split}: precision {precision:.3} recall {recall:.3}");
        assert!(precision >= 0.95, "{split} precision {precision}");
        assert!(recall >= 0.9, "{split} recall {recall}");
    }
    for kind in PiiKind::ALL {
        assert!(
            seen_kinds.contains_key(kind.as_str()),
            "{} never found",
            kind.as_str()
        );
    }
}
