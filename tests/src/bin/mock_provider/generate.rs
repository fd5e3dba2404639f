//! The deterministic "model" behind every vendor route: it echoes the last user turn, one
//! whitespace-separated word per token, so tests can predict text and usage exactly.

use serde_json::{Value, json};

/// Id of the single tool call the mock makes (OpenAI `call_...` / Anthropic `toolu_...`).
pub const OPENAI_TOOL_CALL_ID: &str = "call_1";
pub const ANTHROPIC_TOOL_USE_ID: &str = "toolu_1";

/// The tool-call arguments, split the way a real tokenizer streams JSON.
pub const TOOL_ARGUMENT_PIECES: [&str; 5] = ["{\"", "city", "\":\"", "Paris", "\"}"];

/// Whitespace-separated words, the mock's unit of tokens.
pub fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Plain text of a message `content`: a string, or the text of an array of blocks. Tool results
/// count as text because they are what a real model reads after a tool call.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(block_text)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn block_text(block: &Value) -> Option<String> {
    match block.get("type")?.as_str()? {
        "text" => block.get("text")?.as_str().map(str::to_owned),
        "tool_result" => block.get("content").map(content_text),
        _ => None,
    }
}

/// Why generation stopped, in vendor-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Complete,
    MaxTokens,
    StopSequence(String),
}

/// A generated text answer as its list of tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub tokens: Vec<String>,
    pub finish: Finish,
}

impl Completion {
    /// `echo: <user words>`, prefixed by `[system: <first 3 words>]` when a system prompt is
    /// given, cut at the earliest stop sequence, then at `max_tokens`.
    pub fn generate(
        system: Option<&str>,
        user_text: &str,
        max_tokens: Option<u64>,
        stop_sequences: &[String],
    ) -> Self {
        let mut full = String::new();
        if let Some(system) = system.filter(|s| count_words(s) > 0) {
            let head: Vec<&str> = system.split_whitespace().take(3).collect();
            full.push_str(&format!("[system: {}] ", head.join(" ")));
        }
        full.push_str("echo: ");
        full.push_str(&user_text.split_whitespace().collect::<Vec<_>>().join(" "));

        let hit = stop_sequences
            .iter()
            .filter(|stop| !stop.is_empty())
            .filter_map(|stop| full.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        let (text, mut finish) = match hit {
            Some((at, stop)) => (&full[..at], Finish::StopSequence(stop.clone())),
            None => (full.as_str(), Finish::Complete),
        };
        let mut tokens: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        // A usize cap beyond the address space can never truncate, so saturating is exact.
        let max = max_tokens.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        if tokens.len() > max {
            tokens.truncate(max);
            finish = Finish::MaxTokens;
        }
        Self { tokens, finish }
    }

    /// Exactly `count` words, `w1 w2 ... wcount`, for streams a fault cuts at a known point.
    pub fn numbered(count: usize) -> Self {
        Self {
            tokens: (1..=count).map(|i| format!("w{i}")).collect(),
            finish: Finish::Complete,
        }
    }

    pub fn text(&self) -> String {
        self.tokens.join(" ")
    }

    /// Stream deltas: each token with the trailing space a tokenizer would emit, except the last,
    /// so the concatenated stream equals the non-streamed `text()`.
    pub fn pieces(&self) -> Vec<String> {
        let last = self.tokens.len().saturating_sub(1);
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                if i < last {
                    format!("{token} ")
                } else {
                    token.clone()
                }
            })
            .collect()
    }
}

/// What the caller allowed via `tool_choice`, in vendor-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The answer: either text or a single call to the named tool with `{"city":"Paris"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Text(Completion),
    ToolCall(String),
}

impl Reply {
    /// Calls a tool when forced to, or on `auto` when the user asks about the weather.
    pub fn decide(
        choice: ToolChoice,
        tool_names: &[String],
        user_text: &str,
        text: impl FnOnce() -> Completion,
    ) -> Self {
        let first = tool_names.first().cloned();
        let tool = match choice {
            _ if first.is_none() => None,
            ToolChoice::None => None,
            ToolChoice::Named(name) => Some(name),
            ToolChoice::Required => first,
            ToolChoice::Auto => first.filter(|_| user_text.to_lowercase().contains("weather")),
        };
        tool.map_or_else(|| Self::Text(text()), Self::ToolCall)
    }

    pub fn output_tokens(&self) -> usize {
        match self {
            Self::Text(completion) => completion.tokens.len(),
            Self::ToolCall(_) => TOOL_ARGUMENT_PIECES.len(),
        }
    }
}

/// The tool-call arguments as an object, as Anthropic sends them.
pub fn tool_input() -> Value {
    json!({"city": "Paris"})
}

/// The tool-call arguments as one JSON string, as OpenAI sends them.
pub fn tool_arguments() -> String {
    tool_input().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(system: Option<&str>, user: &str, max: Option<u64>, stops: &[&str]) -> Completion {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        Completion::generate(system, user, max, &stops)
    }

    #[test]
    fn counts_whitespace_separated_words() {
        assert_eq!(count_words("  one two\tthree\nfour  "), 4);
        assert_eq!(count_words(""), 0);
    }

    #[test]
    fn extracts_text_from_strings_and_blocks() {
        assert_eq!(content_text(&json!("hi there")), "hi there");
        let blocks = json!([
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:"}},
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "sunny"}]},
            {"type": "tool_result", "tool_use_id": "u", "content": "warm"},
        ]);
        assert_eq!(content_text(&blocks), "look sunny warm");
        assert_eq!(content_text(&Value::Null), "");
    }

    #[test]
    fn echoes_user_words() {
        let c = echo(None, "hello   big\nworld", None, &[]);
        assert_eq!(c.text(), "echo: hello big world");
        assert_eq!(c.tokens.len(), 4);
        assert_eq!(c.finish, Finish::Complete);
    }

    #[test]
    fn truncates_to_max_tokens() {
        let c = echo(None, "one two three", Some(2), &[]);
        assert_eq!(c.text(), "echo: one");
        assert_eq!(c.finish, Finish::MaxTokens);
        let exact = echo(None, "one two three", Some(4), &[]);
        assert_eq!(exact.finish, Finish::Complete);
    }

    #[test]
    fn prefixes_first_three_system_words() {
        let c = echo(Some("You are a pirate."), "ahoy", None, &[]);
        assert_eq!(c.text(), "[system: You are a] echo: ahoy");
        assert_eq!(c.tokens.len(), 6);
        let blank = echo(Some("  "), "ahoy", None, &[]);
        assert_eq!(blank.text(), "echo: ahoy");
    }

    #[test]
    fn stops_at_earliest_stop_sequence() {
        let c = echo(None, "one two three four", None, &["four", "two"]);
        assert_eq!(c.text(), "echo: one");
        assert_eq!(c.finish, Finish::StopSequence("two".into()));
        // A stop sequence beyond the token budget is never reached.
        let late = echo(None, "one two three four", Some(2), &["four"]);
        assert_eq!(late.finish, Finish::MaxTokens);
    }

    #[test]
    fn numbered_completion_has_exactly_the_requested_words() {
        let c = Completion::numbered(3);
        assert_eq!(c.text(), "w1 w2 w3");
        assert_eq!(c.finish, Finish::Complete);
        assert!(Completion::numbered(0).tokens.is_empty());
    }

    #[test]
    fn stream_pieces_concatenate_to_text() {
        let c = echo(None, "a b c", None, &[]);
        assert_eq!(c.pieces(), ["echo: ", "a ", "b ", "c"]);
        assert_eq!(c.pieces().concat(), c.text());
    }

    #[test]
    fn calls_tool_on_weather_or_when_forced() {
        let tools = vec!["get_weather".to_owned(), "other".to_owned()];
        let text = || echo(None, "x", None, &[]);
        let weather = "What's the Weather in Paris?";
        assert_eq!(
            Reply::decide(ToolChoice::Auto, &tools, weather, text),
            Reply::ToolCall("get_weather".into())
        );
        assert!(matches!(
            Reply::decide(ToolChoice::Auto, &tools, "hello", text),
            Reply::Text(_)
        ));
        assert!(matches!(
            Reply::decide(ToolChoice::None, &tools, weather, text),
            Reply::Text(_)
        ));
        assert!(matches!(
            Reply::decide(ToolChoice::Auto, &[], weather, text),
            Reply::Text(_)
        ));
        assert_eq!(
            Reply::decide(ToolChoice::Named("other".into()), &tools, "hi", text),
            Reply::ToolCall("other".into())
        );
        assert_eq!(
            Reply::decide(ToolChoice::Required, &tools, "hi", text),
            Reply::ToolCall("get_weather".into())
        );
    }

    #[test]
    fn streamed_tool_arguments_match_the_input() {
        assert_eq!(tool_arguments(), r#"{"city":"Paris"}"#);
        assert_eq!(TOOL_ARGUMENT_PIECES.concat(), tool_arguments());
    }
}
