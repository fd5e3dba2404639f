//! Splits a document into chunks that fit an embedding model's token budget.
//!
//! Chunks break on paragraph boundaries (blank lines; a markdown heading starts a paragraph)
//! where they can, else between sentences, and only a sentence longer than a whole chunk is cut
//! between words (or, for one overlong "word", between characters). Consecutive chunks share about
//! `overlap_tokens` of whole sentences so that a fact cut at a boundary is still found whole.
//! Each chunk of a markdown document starts with its heading path ("Setup > VPN") so that it
//! makes sense alone, to the retriever and to the model reading it.
//!
//! The output depends only on the text and the settings: ingest relies on that to recognise an
//! unchanged document by its chunks.

use std::ops::Range;

use crate::api::tokenizer::cl100k;
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

pub const MIN_MAX_TOKENS: u32 = 16;
/// The input limit of OpenAI's embedding models.
pub const MAX_MAX_TOKENS: u32 = 8191;

/// A heading path costing more than this share of a chunk is left out: the chunk's own text
/// matters more.
const MAX_PREFIX_SHARE: u32 = 4;
/// Bytes one token spans at most, in practice, for the window in which an overlong piece is cut:
/// a cl100k token is rarely more than a few dozen bytes. A window holding fewer tokens than the
/// budget only makes a piece shorter.
const MAX_BYTES_PER_TOKEN: usize = 64;
const HEADING_SEPARATOR: &str = " > ";
/// BPE merging is quadratic in the length of one pre-tokenised piece, and a run of letters
/// without spaces is one piece: a pasted blob or a long run of one letter would take seconds,
/// or hours, to count. Longer runs are counted in slices of this many characters, which cannot
/// merge across a cut and so count as many tokens as the whole run, or a few more: budgets hold.
/// A multiple of 3, the tokenizer's digit group, so that digit runs count exactly.
const LONG_RUN_CHARS: usize = 240;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkSettings {
    /// The most tokens (cl100k) one chunk may have, heading path included.
    pub max_tokens: u32,
    /// About how many tokens of whole sentences a chunk repeats from the end of the one before.
    pub overlap_tokens: u32,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self {
            max_tokens: 400,
            overlap_tokens: 60,
        }
    }
}

impl ChunkSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_MAX_TOKENS..=MAX_MAX_TOKENS).contains(&self.max_tokens) {
            return Err(format!(
                "max_tokens must be between {MIN_MAX_TOKENS} and {MAX_MAX_TOKENS}, got {}",
                self.max_tokens
            ));
        }
        if self.overlap_tokens.saturating_mul(2) >= self.max_tokens {
            return Err(format!(
                "overlap_tokens must be less than half of max_tokens ({}), got {}",
                self.max_tokens, self.overlap_tokens
            ));
        }
        Ok(())
    }

    /// The nearest valid settings: `chunk_text` never works outside the bounds.
    fn clamped(&self) -> Self {
        let max_tokens = self.max_tokens.clamp(MIN_MAX_TOKENS, MAX_MAX_TOKENS);
        let overlap_tokens = self.overlap_tokens.min(max_tokens.saturating_sub(1) / 2);
        Self {
            max_tokens,
            overlap_tokens,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the document, from 0.
    pub index: u32,
    pub text: String,
    /// cl100k tokens in `text`.
    pub tokens: u32,
}

/// cl100k tokens in `text`, special-token markers counted as plain text. Exact, except that a
/// run of more than `LONG_RUN_CHARS` non-space characters is counted in slices (see there).
pub fn count_tokens(text: &str) -> usize {
    let Some(bpe) = cl100k() else {
        // Every token spans at least one byte: an upper bound keeps budgets held.
        return text.len();
    };
    let mut total = 0;
    let mut counted_to = 0;
    for run in long_runs(text) {
        total += bpe
            .encode_ordinary(text.get(counted_to..run.start).unwrap_or_default())
            .len();
        let run_text = text.get(run.clone()).unwrap_or_default();
        let mut slice_start = 0;
        for (index, (offset, _)) in run_text.char_indices().enumerate() {
            if index > 0 && index % LONG_RUN_CHARS == 0 {
                total += bpe
                    .encode_ordinary(run_text.get(slice_start..offset).unwrap_or_default())
                    .len();
                slice_start = offset;
            }
        }
        total += bpe
            .encode_ordinary(run_text.get(slice_start..).unwrap_or_default())
            .len();
        counted_to = run.end;
    }
    total
        + bpe
            .encode_ordinary(text.get(counted_to..).unwrap_or_default())
            .len()
}

/// Byte ranges of the runs of non-whitespace characters longer than `LONG_RUN_CHARS`.
fn long_runs(text: &str) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut run_start = None;
    let mut run_chars = 0;
    for (offset, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        if c.is_whitespace() {
            if let Some(start) = run_start.take()
                && run_chars > LONG_RUN_CHARS
            {
                runs.push(start..offset);
            }
            run_chars = 0;
        } else {
            run_start.get_or_insert(offset);
            run_chars += 1;
        }
    }
    runs
}

/// Splits `text` into chunks of at most `settings.max_tokens` tokens (settings outside their
/// bounds are clamped into them; `validate` tells a client). Empty text has no chunks.
pub fn chunk_text(text: &str, settings: &ChunkSettings) -> Vec<Chunk> {
    let settings = settings.clamped();
    let units = split_units(text, settings.max_tokens);
    pack_units(text, &units, &settings)
}

/// A sentence, or a piece of an overlong one: the smallest span chunks are made of.
#[derive(Debug)]
struct Unit {
    /// Byte range in the document, without surrounding whitespace.
    span: Range<usize>,
    tokens: u32,
    /// Tokens of the whitespace before it, at least 1: what joining it to the unit before costs.
    gap_tokens: u32,
    starts_paragraph: bool,
    /// A markdown heading line: it never ends a chunk.
    is_heading: bool,
    /// The heading path a chunk starting here carries ("" for none), and what it costs.
    prefix: String,
    prefix_tokens: u32,
    /// Counts headings before it: overlap never carries text across a heading.
    section: usize,
}

/// A paragraph: its byte range and, for a markdown heading, its level and title.
struct Paragraph {
    span: Range<usize>,
    heading: Option<(usize, String)>,
}

fn split_units(text: &str, max_tokens: u32) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut section = 0;
    let mut previous_end = 0;
    for paragraph in split_paragraphs(text) {
        section += usize::from(paragraph.heading.is_some());
        let prefix = match &paragraph.heading {
            Some((level, title)) => {
                headings.retain(|(open_level, _)| open_level < level);
                // A heading's own chunk shows it in its text: the prefix is its parents.
                let parents = heading_path(&headings);
                headings.push((*level, title.clone()));
                parents
            }
            None => heading_path(&headings),
        };
        let mut prefix_tokens = if prefix.is_empty() {
            0
        } else {
            count_u32(&format!("{prefix}\n\n"))
        };
        let prefix = if prefix_tokens > max_tokens / MAX_PREFIX_SHARE {
            prefix_tokens = 0;
            String::new()
        } else {
            prefix
        };
        let budget = max_tokens.saturating_sub(prefix_tokens);
        let paragraph_text = slice(text, &paragraph.span);
        let mut first = true;
        for (offset, sentence) in paragraph_text.split_sentence_bound_indices() {
            let Some(span) = trimmed_span(sentence, paragraph.span.start + offset) else {
                continue;
            };
            for piece in split_to_budget(text, span, budget) {
                let gap = slice(text, &(previous_end..piece.start));
                previous_end = piece.end;
                units.push(Unit {
                    tokens: count_u32(slice(text, &piece)),
                    gap_tokens: count_u32(gap).max(1),
                    span: piece,
                    starts_paragraph: first,
                    is_heading: paragraph.heading.is_some(),
                    prefix: prefix.clone(),
                    prefix_tokens,
                    section,
                });
                first = false;
            }
        }
    }
    units
}

/// Paragraphs separated by blank lines; a markdown heading is a paragraph of its own, and blank
/// lines inside a fenced code block do not end it.
fn split_paragraphs(text: &str) -> Vec<Paragraph> {
    let mut paragraphs = Vec::new();
    let mut current: Option<Range<usize>> = None;
    let mut in_fence = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_span = offset..offset + line.len();
        offset += line.len();
        let trimmed = line.trim();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        if in_fence || trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            extend(&mut current, line_span);
            continue;
        }
        if trimmed.is_empty() {
            close(&mut paragraphs, &mut current, text);
        } else if let Some(heading) = markdown_heading(trimmed) {
            close(&mut paragraphs, &mut current, text);
            paragraphs.push(Paragraph {
                span: line_span,
                heading: Some(heading),
            });
        } else {
            extend(&mut current, line_span);
        }
    }
    close(&mut paragraphs, &mut current, text);
    paragraphs
}

fn extend(current: &mut Option<Range<usize>>, line: Range<usize>) {
    match current {
        Some(span) => span.end = line.end,
        None => *current = Some(line),
    }
}

fn close(paragraphs: &mut Vec<Paragraph>, current: &mut Option<Range<usize>>, text: &str) {
    if let Some(span) = current.take()
        && !slice(text, &span).trim().is_empty()
    {
        paragraphs.push(Paragraph {
            span,
            heading: None,
        });
    }
}

/// `## Title ##` -> (2, "Title"); an ATX heading needs a space after its hashes.
fn markdown_heading(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = line.get(level..)?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let title = rest.trim().trim_end_matches('#').trim();
    (!title.is_empty()).then(|| (level, title.to_string()))
}

fn heading_path(headings: &[(usize, String)]) -> String {
    headings
        .iter()
        .map(|(_, title)| title.as_str())
        .collect::<Vec<_>>()
        .join(HEADING_SEPARATOR)
}

/// `piece`'s span in the document without its surrounding whitespace, or None if blank.
fn trimmed_span(piece: &str, start: usize) -> Option<Range<usize>> {
    let trimmed_start = piece.len() - piece.trim_start().len();
    let trimmed = piece.trim();
    (!trimmed.is_empty()).then(|| {
        let begin = start + trimmed_start;
        begin..begin + trimmed.len()
    })
}

/// Cuts a span into pieces of at most `budget` tokens: between words where it can, else
/// between characters. A span within budget comes back whole.
fn split_to_budget(text: &str, span: Range<usize>, budget: u32) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut rest = span;
    while !rest.is_empty() {
        let remaining = slice(text, &rest);
        // Longer than any budget's worth of tokens: no need to count it all to know.
        let surely_over = remaining.len() > window_bytes(budget);
        if !surely_over && count_u32(remaining) <= budget {
            pieces.push(rest);
            break;
        }
        let cut = longest_fitting_prefix(remaining, budget);
        let piece_end = rest.start + cut;
        if let Some(piece) = trimmed_span(slice(text, &(rest.start..piece_end)), rest.start) {
            pieces.push(piece);
        }
        let next = rest.start + cut;
        let tail = slice(text, &(next..rest.end));
        rest = next + (tail.len() - tail.trim_start().len())..rest.end;
    }
    pieces
}

/// The byte length of the longest prefix of `text` (over budget) that fits `budget`, ending at
/// a word boundary, else at a character boundary; at least one character.
fn longest_fitting_prefix(text: &str, budget: u32) -> usize {
    let window = window_bytes(budget).min(text.len());
    let fits = |end: usize| count_u32(text.get(..end).unwrap_or_default().trim_end()) <= budget;
    let word_ends: Vec<usize> = text
        .split_word_bound_indices()
        .map(|(start, word)| start + word.len())
        .take_while(|end| *end <= window)
        .collect();
    if let Some(end) = last_fitting(&word_ends, fits) {
        return end;
    }
    let char_ends: Vec<usize> = text
        .char_indices()
        .map(|(start, c)| start + c.len_utf8())
        .take_while(|end| *end <= window)
        .collect();
    last_fitting(&char_ends, fits)
        .or_else(|| char_ends.first().copied())
        .unwrap_or(text.len())
}

fn window_bytes(budget: u32) -> usize {
    (budget as usize).saturating_mul(MAX_BYTES_PER_TOKEN)
}

/// The last of the ascending `ends` that `fits` (which holds for a prefix of them), by
/// binary search.
fn last_fitting(ends: &[usize], fits: impl Fn(usize) -> bool) -> Option<usize> {
    let fitting = ends.partition_point(|end| fits(*end));
    fitting
        .checked_sub(1)
        .and_then(|last| ends.get(last).copied())
}

/// Groups units into chunks: as many as fit, ending at a paragraph boundary when one lies in
/// the second half of the chunk, each chunk after the first starting with the last whole
/// sentences of the one before (about `overlap_tokens`).
fn pack_units(text: &str, units: &[Unit], settings: &ChunkSettings) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut start = 0;
    // The first unit the next chunk must include, so that every chunk brings new text.
    let mut must_reach = 0;
    while must_reach < units.len() {
        let budget = budget_from(units, start, settings.max_tokens);
        let mut end = start;
        let mut estimate = 0u32;
        while let Some(unit) = units.get(end) {
            let cost = unit.tokens + if end > start { unit.gap_tokens } else { 0 };
            if end > must_reach && estimate + cost > budget {
                break;
            }
            estimate += cost;
            end += 1;
        }
        if end < units.len() {
            end = paragraph_break(units, start, must_reach, end, budget).unwrap_or(end);
            while end > must_reach + 1 && units.get(end - 1).is_some_and(|unit| unit.is_heading) {
                end -= 1;
            }
        }
        let (text, tokens) = fit_chunk(text, units, &mut start, must_reach, &mut end, settings);
        chunks.push(Chunk {
            index: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
            text,
            tokens,
        });
        must_reach = end;
        start = overlap_start(units, start, end, settings);
    }
    chunks
}

/// Tokens a chunk starting at unit `start` has for its units, after its heading path.
fn budget_from(units: &[Unit], start: usize, max_tokens: u32) -> u32 {
    let prefix_tokens = units.get(start).map_or(0, |unit| unit.prefix_tokens);
    max_tokens.saturating_sub(prefix_tokens)
}

/// The latest paragraph start in `start..end` after `must_reach` leaving at least half the budget
/// used, to end the chunk there instead of mid-paragraph.
fn paragraph_break(
    units: &[Unit],
    start: usize,
    must_reach: usize,
    end: usize,
    budget: u32,
) -> Option<usize> {
    let mut used = 0u32;
    let mut best = None;
    for index in start..end {
        let unit = units.get(index)?;
        if unit.starts_paragraph && index > must_reach && index > start && used >= budget / 2 {
            best = Some(index);
        }
        used += unit.tokens + unit.gap_tokens;
    }
    best
}

/// The chunk's text for units `start..end` and its real token count, shrinking the span until
/// it fits: estimates add token counts of units, which joining can shift by a token or two.
fn fit_chunk(
    text: &str,
    units: &[Unit],
    start: &mut usize,
    must_reach: usize,
    end: &mut usize,
    settings: &ChunkSettings,
) -> (String, u32) {
    loop {
        let chunk = render(text, units, *start, *end, true);
        let tokens = count_u32(&chunk);
        if tokens <= settings.max_tokens {
            return (chunk, tokens);
        }
        if *end > must_reach + 1 && *end > *start + 1 {
            // Drop about as many tokens as are over, at least one unit: one unit at a time
            // would count the chunk again for every unit when joins cost much more than guessed.
            let mut excess = tokens - settings.max_tokens;
            while excess > 0 && *end > must_reach + 1 && *end > *start + 1 {
                *end -= 1;
                let dropped = units
                    .get(*end)
                    .map_or(1, |unit| unit.tokens + unit.gap_tokens);
                excess = excess.saturating_sub(dropped);
            }
        } else if *start < must_reach {
            *start += 1;
        } else {
            // One unit: it fit its budget alone, so only the join with its heading path can
            // overflow; without the path it fits, or is cut as a last resort.
            let chunk = render(text, units, *start, *end, false);
            let cut = longest_fitting_prefix(&chunk, settings.max_tokens);
            let chunk = chunk.get(..cut).unwrap_or_default().trim_end().to_string();
            let tokens = count_u32(&chunk);
            return (chunk, tokens);
        }
    }
}

fn render(text: &str, units: &[Unit], start: usize, end: usize, with_prefix: bool) -> String {
    let (Some(first), Some(last)) = (
        units.get(start),
        end.checked_sub(1).and_then(|i| units.get(i)),
    ) else {
        return String::new();
    };
    let body = slice(text, &(first.span.start..last.span.end));
    if with_prefix && !first.prefix.is_empty() {
        format!("{}\n\n{body}", first.prefix)
    } else {
        body.to_string()
    }
}

/// Where the chunk after `start..end` starts: back over the last whole units of this one while
/// they total at most `overlap_tokens` and belong to the next unit's section, and never back to
/// this chunk's own start.
fn overlap_start(units: &[Unit], start: usize, end: usize, settings: &ChunkSettings) -> usize {
    let Some(section) = units.get(end).map(|unit| unit.section) else {
        return end;
    };
    let mut next = end;
    let mut overlap = 0u32;
    while next > start + 1 {
        let Some(unit) = units.get(next - 1) else {
            break;
        };
        let cost = unit.tokens + unit.gap_tokens;
        if unit.section != section || overlap + cost > settings.overlap_tokens {
            break;
        }
        overlap += cost;
        next -= 1;
    }
    // The overlap and the next new unit must fit one chunk together.
    while next < end {
        let budget = budget_from(units, next, settings.max_tokens);
        let needed: u32 = units
            .get(next..=end)
            .unwrap_or_default()
            .iter()
            .map(|unit| unit.tokens + unit.gap_tokens)
            .sum();
        if needed <= budget {
            break;
        }
        next += 1;
    }
    next
}

fn slice<'a>(text: &'a str, span: &Range<usize>) -> &'a str {
    text.get(span.clone()).unwrap_or_default()
}

fn count_u32(text: &str) -> u32 {
    u32::try_from(count_tokens(text)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPICS: [&str; 8] = [
        "the expense policy",
        "the VPN client",
        "the on-call rota",
        "the build cache",
        "the deploy pipeline",
        "the staging database",
        "the holiday calendar",
        "the laptop refresh",
    ];

    /// Distinct, numbered sentences, so a test can find each one in the chunks.
    fn sentence(n: usize) -> String {
        let topic = TOPICS.get(n % TOPICS.len()).copied().unwrap_or("the wiki");
        format!(
            "Sentence {n} explains how {topic} works for team number {}.",
            n * 7 % 13
        )
    }

    fn paragraph(first: usize, sentences: usize) -> String {
        (first..first + sentences)
            .map(sentence)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn settings(max_tokens: u32, overlap_tokens: u32) -> ChunkSettings {
        ChunkSettings {
            max_tokens,
            overlap_tokens,
        }
    }

    fn mixed_document() -> String {
        let overlong_sentence = (0..900)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let overlong_word = "é".repeat(3000) + &"x9".repeat(2000);
        format!(
            "# Handbook\n\n{}\n\n## Travel\n\n{}\n\n{overlong_sentence}.\n\n```bash\n# not a heading\necho hi\n\necho after a blank line\n```\n\n### Claims\n\n{overlong_word}\n\n{}\n- item one\n- item two\n",
            paragraph(0, 12),
            paragraph(12, 30),
            paragraph(42, 5)
        )
    }

    /// Short sentences joined by runs of exotic spaces: each join costs several tokens, more
    /// than the packer's estimate, so only the real count keeps the budget.
    fn whitespace_heavy_document() -> String {
        (0..300)
            .map(|i| format!("Item {i} ok."))
            .collect::<Vec<_>>()
            .join(" \u{3000}\u{2003}\u{3000} \u{2003}\u{3000}\t")
    }

    #[test]
    fn every_chunk_holds_the_token_budget_counted_by_the_real_tokenizer() {
        let cases = [(16, 7), (40, 10), (100, 30), (400, 60), (1000, 0)];
        for (document, (max_tokens, overlap)) in [mixed_document(), whitespace_heavy_document()]
            .iter()
            .flat_map(|document| cases.map(|case| (document, case)))
        {
            let chunks = chunk_text(document, &settings(max_tokens, overlap));
            assert!(
                chunks.len() > 1,
                "max {max_tokens}: {} chunks",
                chunks.len()
            );
            for chunk in &chunks {
                let counted = count_tokens(&chunk.text);
                assert!(
                    counted <= max_tokens as usize,
                    "max {max_tokens}: chunk {} has {counted} tokens: {:?}",
                    chunk.index,
                    chunk.text
                );
                assert_eq!(chunk.tokens as usize, counted);
                assert!(!chunk.text.trim().is_empty());
            }
            let indexes: Vec<u32> = chunks.iter().map(|chunk| chunk.index).collect();
            let expected: Vec<u32> = (0..u32::try_from(chunks.len()).unwrap()).collect();
            assert_eq!(indexes, expected);
        }
    }

    #[test]
    fn no_sentence_is_lost() {
        let document = (0..10)
            .map(|p| paragraph(p * 9, 9))
            .collect::<Vec<_>>()
            .join("\n\n");
        let chunks = chunk_text(&document, &settings(80, 20));
        let all = chunks
            .iter()
            .map(|chunk| chunk.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for n in 0..90 {
            assert!(all.contains(&sentence(n)), "sentence {n} missing");
        }
    }

    #[test]
    fn consecutive_chunks_overlap_by_whole_sentences() {
        let document = paragraph(0, 60);
        let chunks = chunk_text(&document, &settings(120, 40));
        assert!(chunks.len() > 3);
        for pair in chunks.windows(2) {
            let (previous, next) = (&pair[0], &pair[1]);
            let last_sentence = (0..60)
                .map(sentence)
                .find(|s| previous.text.ends_with(s.as_str()))
                .expect("chunks end on a whole sentence");
            assert!(
                next.text.contains(&last_sentence),
                "chunk {} does not repeat {last_sentence:?}: {:?}",
                next.index,
                next.text
            );
            let first_sentence = (0..60)
                .map(sentence)
                .find(|s| next.text.starts_with(s.as_str()))
                .expect("chunks start on a whole sentence");
            assert!(previous.text.contains(&first_sentence));
            let overlap = (0..60)
                .map(sentence)
                .filter(|s| previous.text.contains(s.as_str()) && next.text.contains(s.as_str()))
                .map(|s| count_tokens(&s))
                .sum::<usize>();
            assert!((10..=40).contains(&overlap), "overlap of {overlap} tokens");
        }
    }

    #[test]
    fn chunks_end_at_paragraph_boundaries_when_they_can() {
        // Paragraphs of about 80 tokens, chunks of up to 300: a greedy packer would take three
        // sentences of the fourth paragraph; breaking on paragraphs ends every chunk with a
        // paragraph's end.
        let paragraphs: Vec<String> = (0..12).map(|p| paragraph(p * 5, 5)).collect();
        let document = paragraphs.join("\n\n");
        let chunks = chunk_text(&document, &settings(300, 0));
        assert!(chunks.len() >= 4);
        for chunk in &chunks {
            assert!(
                paragraphs.iter().any(|p| chunk.text.ends_with(p.as_str())),
                "chunk {} ends mid-paragraph: {:?}",
                chunk.index,
                chunk.text
            );
            assert!(
                paragraphs
                    .iter()
                    .any(|p| chunk.text.starts_with(p.as_str())),
                "chunk {} starts mid-paragraph",
                chunk.index
            );
        }
    }

    #[test]
    fn markdown_chunks_carry_their_heading_path() {
        let document = format!(
            "# Setup\n\nIntro.\n\n## VPN\n\n{}\n\n```sh\n# install the client\nsudo apt install vpn\n```\n\n## Mail\n\n{}",
            paragraph(0, 20),
            paragraph(20, 20)
        );
        let chunks = chunk_text(&document, &settings(120, 20));
        let vpn_body: Vec<&Chunk> = chunks
            .iter()
            .filter(|chunk| chunk.text.contains(&sentence(10)))
            .collect();
        assert!(!vpn_body.is_empty());
        for chunk in vpn_body {
            assert!(
                chunk.text.starts_with("Setup > VPN\n\n"),
                "{:?}",
                chunk.text
            );
        }
        let code = chunks
            .iter()
            .find(|chunk| chunk.text.contains("sudo apt install vpn"))
            .unwrap();
        assert!(code.text.starts_with("Setup > VPN\n\n"), "{:?}", code.text);
        assert!(code.text.contains("```sh\n# install the client\n"));
        let mail = chunks
            .iter()
            .find(|chunk| chunk.text.contains(&sentence(30)))
            .unwrap();
        assert!(mail.text.starts_with("Setup > Mail\n\n"), "{:?}", mail.text);
        assert!(
            !chunks
                .iter()
                .any(|chunk| chunk.text.contains("install the client > "))
        );
        // Overlap does not carry the VPN section's sentences into the Mail section.
        let first_mail = chunks
            .iter()
            .find(|chunk| chunk.text.contains("## Mail"))
            .unwrap();
        assert!(
            first_mail.text.starts_with("Setup\n\n## Mail"),
            "{:?}",
            first_mail.text
        );
    }

    #[test]
    fn an_overlong_sentence_is_cut_between_words_and_an_overlong_word_between_characters() {
        let long_words = [
            "internationalization",
            "counterproductive",
            "misunderstanding",
            "electroencephalograph",
        ];
        let words: Vec<String> = (0..600)
            .map(|i| long_words[i % long_words.len()].to_string())
            .collect();
        let chunks = chunk_text(&words.join(" "), &settings(47, 0));
        let rejoined: Vec<&str> = chunks
            .iter()
            .flat_map(|chunk| chunk.text.split_whitespace())
            .collect();
        assert_eq!(rejoined, words);

        let blob = "日本語のテキスト".repeat(400);
        let chunks = chunk_text(&blob, &settings(64, 0));
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|chunk| chunk.tokens <= 64));
        let rejoined: String = chunks.iter().map(|chunk| chunk.text.as_str()).collect();
        assert_eq!(rejoined, blob);
    }

    #[test]
    fn the_same_text_always_gives_the_same_chunks() {
        let document = mixed_document();
        let first = chunk_text(&document, &ChunkSettings::default());
        for _ in 0..3 {
            assert_eq!(chunk_text(&document, &ChunkSettings::default()), first);
        }
    }

    #[test]
    fn empty_or_blank_text_has_no_chunks() {
        assert!(chunk_text("", &ChunkSettings::default()).is_empty());
        assert!(chunk_text(" \n\n\t\n", &ChunkSettings::default()).is_empty());
        let one = chunk_text("  Hello world.  ", &ChunkSettings::default());
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].text, "Hello world.");
        assert_eq!(one[0].tokens, 3);
    }

    #[test]
    fn settings_are_bounded() {
        assert_eq!(ChunkSettings::default(), settings(400, 60));
        assert!(ChunkSettings::default().validate().is_ok());
        assert!(settings(16, 7).validate().is_ok());
        assert!(settings(8191, 4095).validate().is_ok());
        assert!(
            settings(15, 0)
                .validate()
                .unwrap_err()
                .contains("max_tokens")
        );
        assert!(
            settings(8192, 0)
                .validate()
                .unwrap_err()
                .contains("max_tokens")
        );
        assert!(
            settings(100, 50)
                .validate()
                .unwrap_err()
                .contains("overlap_tokens")
        );
        // Out-of-bounds settings are clamped, never trusted.
        let chunks = chunk_text(&paragraph(0, 40), &settings(1, 1000));
        assert!(chunks.iter().all(|chunk| chunk.tokens <= MIN_MAX_TOKENS));
    }

    #[test]
    fn fifty_thousand_words_chunk_in_reasonable_time() {
        let document = (0..420)
            .map(|p| paragraph(p * 10, 10))
            .collect::<Vec<_>>()
            .join("\n\n");
        let words = document.split_whitespace().count();
        assert!(words >= 50_000, "{words} words");
        count_tokens("warm the tokenizer up");
        let started = std::time::Instant::now();
        let chunks = chunk_text(&document, &ChunkSettings::default());
        let elapsed = started.elapsed();
        eprintln!("{words} words -> {} chunks in {elapsed:?}", chunks.len());
        assert!(chunks.len() > 100);
        assert!(elapsed < std::time::Duration::from_secs(60), "{elapsed:?}");
    }

    #[test]
    fn counts_are_the_tokenizer_s_and_long_runs_count_fast_and_never_low() {
        let bpe = tiktoken_rs::cl100k_base().unwrap();
        let prose = mixed_document().replace(&"é".repeat(3000), "");
        assert_eq!(count_tokens(&prose), bpe.encode_ordinary(&prose).len());
        for run in ["é".repeat(2000), "ab9_".repeat(600), "7".repeat(1200)] {
            let text = format!("Before the run {run} and after it.");
            assert!(count_tokens(&text) >= bpe.encode_ordinary(&text).len());
            assert!(count_tokens(&text) <= bpe.encode_ordinary(&text).len() * 11 / 10 + 10);
        }
        let started = std::time::Instant::now();
        let huge = "a".repeat(1_000_000);
        assert!(count_tokens(&huge) > 1000);
        let elapsed = started.elapsed();
        eprintln!("a million-letter word counted in {elapsed:?}");
        assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    }

    #[test]
    fn the_tokenizer_is_built_once() {
        let started = std::time::Instant::now();
        assert_eq!(count_tokens("hello world"), 2);
        let first = started.elapsed();
        let started = std::time::Instant::now();
        assert_eq!(count_tokens("hello world"), 2);
        let second = started.elapsed();
        eprintln!("first count (may build the tokenizer): {first:?}, second: {second:?}");
        assert!(second < std::time::Duration::from_millis(50), "{second:?}");
    }
}
