//! An upstream's explanation of a client mistake, made fit to pass on: the reason stays (the
//! client needs it to fix the request), whatever locates or names the upstream goes. Upstream
//! texts may quote URLs (with the Azure deployment and `api-version`), internal hosts and ports,
//! and the upstream's own name for the model.

/// What stands in for a removed URL, address or host.
const REDACTED: &str = "[redacted]";

/// Longer reasons are cut: the start says what is wrong, and an upstream may echo a whole body.
const MAX_CHARS: usize = 1000;

/// Last labels of a dotted name that make it a host name rather than a parameter path (such as
/// `messages.0.content`) or a file name. Two- and three-letter labels count too (`com`, `io`).
const HOST_SUFFIXES: &[&str] = &[
    "local",
    "localdomain",
    "internal",
    "intranet",
    "corp",
    "lan",
    "cloud",
    "cluster",
];

/// `text` without URLs, IP addresses, `host:port` pairs and host names, with the upstream's
/// name for the model (`upstream_model`) replaced by the public one (`model`), and cut to
/// `MAX_CHARS` characters.
pub(crate) fn client_text(text: &str, upstream_model: &str, model: &str) -> String {
    let renamed = rename_model(text, upstream_model, model);
    let mut out = String::with_capacity(renamed.len().min(MAX_CHARS + 8));
    let mut rest = renamed.as_str();
    while !rest.is_empty() {
        let space = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(space);
        out.push_str(&redact_word(word));
        let next = after
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(after.len());
        let (spaces, after) = after.split_at(next);
        out.push_str(spaces);
        rest = after;
    }
    truncate(out)
}

/// The word with its core (the word without surrounding quotes, brackets and punctuation)
/// replaced when the core locates a host. Square brackets stay: they belong to IPv6 addresses.
fn redact_word(word: &str) -> String {
    let edge = |c: char| "\"'`(){}<>,;:.!?".contains(c);
    let core = word.trim_start_matches(edge).trim_end_matches(edge);
    if core.is_empty() || !locates_a_host(core) {
        return word.to_owned();
    }
    let start = word.len() - word.trim_start_matches(edge).len();
    let end = start + core.len();
    format!(
        "{}{REDACTED}{}",
        word.get(..start).unwrap_or_default(),
        word.get(end..).unwrap_or_default()
    )
}

fn locates_a_host(core: &str) -> bool {
    if core.contains("://") {
        return true;
    }
    // `host[:port][/path]`, `ipv4[:port]`, `[ipv6]:port`.
    let authority = core.split('/').next().unwrap_or(core);
    if is_ipv6(authority) {
        return true;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if is_port(port) => (host, true),
        _ => (authority, false),
    };
    is_ipv4(host) || (port && (host == "localhost" || is_dotted_name(host))) || is_host_name(host)
}

fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

fn is_ipv4(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.parse::<u8>().is_ok())
}

/// An IPv6 address, bare or as `[address]:port`.
fn is_ipv6(text: &str) -> bool {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.split_once(']'))
        .map_or(text, |(address, _port)| address);
    bare.bytes()
        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'%'))
        && (bare.contains("::") || bare.matches(':').count() >= 4)
}

/// Labels of letters, digits and hyphens joined by dots, at least two of them.
fn is_dotted_name(text: &str) -> bool {
    let mut labels = 0;
    for label in text.split('.') {
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return false;
        }
        labels += 1;
    }
    labels >= 2
}

/// A fully qualified host name: three labels or more (two could be a file name), none all
/// digits (that would be a version or an index), and a last label that is a top-level domain.
fn is_host_name(text: &str) -> bool {
    if !is_dotted_name(text) || text.split('.').count() < 3 {
        return false;
    }
    if text
        .split('.')
        .any(|label| label.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let last = text.rsplit('.').next().unwrap_or_default();
    let lower = last.to_ascii_lowercase();
    ((2..=3).contains(&last.len()) && last.bytes().all(|b| b.is_ascii_alphabetic()))
        || HOST_SUFFIXES.contains(&lower.as_str())
}

/// Replaces whole-word occurrences of `upstream` (not part of a longer name) by `public`.
fn rename_model(text: &str, upstream: &str, public: &str) -> String {
    if upstream.is_empty() || upstream == public {
        return text.to_owned();
    }
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(upstream) {
        let (before, from) = rest.split_at(at);
        let after = from.get(upstream.len()..).unwrap_or_default();
        let whole = !before.chars().next_back().is_some_and(part_of_name)
            && !after.chars().next().is_some_and(part_of_name);
        out.push_str(before);
        out.push_str(if whole { public } else { upstream });
        rest = after;
    }
    out.push_str(rest);
    out
}

fn truncate(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(text: &str) -> String {
        client_text(text, "my-deployment", "azure-gpt")
    }

    #[test]
    fn urls_addresses_and_hosts_are_removed() {
        assert_eq!(
            clean(
                "error sending request for url (http://10.1.2.3:8443/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21)"
            ),
            "error sending request for url ([redacted])"
        );
        assert_eq!(
            clean("upstream connect error to 10.0.3.4:8000, reset"),
            "upstream connect error to [redacted], reset"
        );
        assert_eq!(clean("see 'vllm.internal:9000'."), "see '[redacted]'.");
        assert_eq!(clean("at localhost:8080"), "at [redacted]");
        assert_eq!(clean("host [fe80::1]:443 down"), "host [redacted] down");
        assert_eq!(
            clean("Resource myres.openai.azure.com not found"),
            "Resource [redacted] not found"
        );
        assert_eq!(
            clean("proxy llm.svc.cluster.local refused"),
            "proxy [redacted] refused"
        );
    }

    #[test]
    fn the_reason_a_client_needs_is_kept() {
        for text in [
            "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
            "Invalid type for 'messages[0].content': expected a string, but got an object.",
            "messages.1.content.0.image.source.base64: invalid base64 data",
            "Invalid value: 'tools.function.parameters' must be an object (gpt-3.5-turbo, v1.2.3).",
            "Unsupported file data.csv, e.g. use text/plain; at 12:30:45",
            "`max_tokens` is too large: 4294967295.",
        ] {
            assert_eq!(clean(text), text);
        }
    }

    #[test]
    fn the_upstream_model_name_becomes_the_public_one() {
        assert_eq!(
            clean("Invalid value for 'model': 'my-deployment'."),
            "Invalid value for 'model': 'azure-gpt'."
        );
        // Only the whole name: a longer name that contains it stays.
        assert_eq!(
            clean("my-deployment-2 and my-deployment"),
            "my-deployment-2 and azure-gpt"
        );
        assert_eq!(
            client_text("gpt-4o rejects", "gpt-4o", "gpt-4o"),
            "gpt-4o rejects"
        );
    }

    #[test]
    fn long_reasons_are_cut() {
        let long = "x".repeat(5000);
        let cut = clean(&long);
        assert_eq!(cut.chars().count(), MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
        let multibyte = "é".repeat(2000);
        assert_eq!(clean(&multibyte).chars().count(), MAX_CHARS + 1);
    }
}
