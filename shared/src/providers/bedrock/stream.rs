//! ConverseStream events as OpenAI chunks.

use std::collections::VecDeque;
use std::time::Duration;

use aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlockDelta, ContentBlockStart, ConverseStreamOutput, ReasoningContentBlockDelta,
};
use futures_util::StreamExt;

use super::errors::sdk_error;
use super::response::{finish_reason, redacted_data, usage};
use crate::api::{ChatChunk, Usage};
use crate::providers::messages::{
    ChunkWriter, REASONING_CONTENT, REDACTED_THINKING, THINKING_SIGNATURE,
};
use crate::providers::{ChunkStream, ProviderError, ProviderErrorKind};

/// The ConverseStream events as OpenAI chunks; a gap longer than `idle` between events ends the
/// stream with a timeout error, and an exception event or a broken body with its error.
pub(super) fn chunk_stream(
    receiver: EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>,
    translator: StreamTranslator,
    idle: Duration,
) -> ChunkStream {
    futures_util::stream::unfold(Some((receiver, translator)), move |state| async move {
        let (mut receiver, mut translator) = state?;
        loop {
            match translator.pending.pop_front() {
                Some(Ok(chunk)) => return Some((Ok(chunk), Some((receiver, translator)))),
                Some(Err(error)) => return Some((Err(error), None)),
                None => {}
            }
            if translator.finished {
                return None;
            }
            match tokio::time::timeout(idle, receiver.recv()).await {
                Err(_) => {
                    let error = ProviderError::new(
                        ProviderErrorKind::Timeout,
                        format!("stream stalled: no event for {} ms", idle.as_millis()),
                    );
                    return Some((Err(error), None));
                }
                Ok(Ok(Some(event))) => translator.translate(event),
                // The upstream closed: whatever was not sent (a finish, usage) never will be.
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => return Some((Err(sdk_error(e, None)), None)),
            }
        }
    })
    .boxed()
}

/// Turns ConverseStream events into OpenAI chunks in the order the Anthropic translator emits
/// them. Bedrock sends the usage after the stop, in a metadata event, and may send it before:
/// the usage-only chunk waits for both.
pub(super) struct StreamTranslator {
    chunks: ChunkWriter<i32>,
    stopped: bool,
    usage: Option<Usage>,
    /// What the events so far became, not yet taken by the stream; an error ends it.
    pending: VecDeque<Result<ChatChunk, ProviderError>>,
    finished: bool,
}

impl StreamTranslator {
    pub(super) fn new(id: String, model: &str) -> Self {
        Self {
            chunks: ChunkWriter::new(id, model),
            stopped: false,
            usage: None,
            pending: VecDeque::new(),
            finished: false,
        }
    }

    fn push(&mut self, chunk: ChatChunk) {
        self.pending.push_back(Ok(chunk));
    }

    /// The usage-only chunk that ends the stream, once both the stop and the usage are known.
    fn finish_if_complete(&mut self) {
        if let (true, Some(usage)) = (self.stopped, self.usage) {
            self.push(self.chunks.usage(usage));
            self.finished = true;
        }
    }

    /// Queues the chunks an event becomes, if any. Events after the usage chunk or an error are
    /// ignored.
    fn translate(&mut self, event: ConverseStreamOutput) {
        if self.finished {
            return;
        }
        match event {
            ConverseStreamOutput::MessageStart(_) => self.push(self.chunks.role()),
            ConverseStreamOutput::ContentBlockStart(start) => {
                if let Some(ContentBlockStart::ToolUse(tool)) = start.start {
                    let started = self.chunks.tool_start(
                        start.content_block_index,
                        tool.tool_use_id,
                        tool.name,
                    );
                    self.finished = started.is_err();
                    self.pending.push_back(started);
                }
            }
            ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta {
                Some(ContentBlockDelta::Text(text)) => self.push(self.chunks.text(text)),
                Some(ContentBlockDelta::ToolUse(tool)) => {
                    if let Some(chunk) = self
                        .chunks
                        .tool_arguments(&delta.content_block_index, tool.input)
                    {
                        self.push(chunk);
                    }
                }
                Some(ContentBlockDelta::ReasoningContent(reasoning)) => {
                    let (key, text) = match reasoning {
                        ReasoningContentBlockDelta::Text(text) => (REASONING_CONTENT, text),
                        ReasoningContentBlockDelta::Signature(signature) => {
                            (THINKING_SIGNATURE, signature)
                        }
                        ReasoningContentBlockDelta::RedactedContent(bytes) => {
                            (REDACTED_THINKING, redacted_data(&bytes))
                        }
                        _ => return,
                    };
                    self.push(self.chunks.thinking(key, text));
                }
                _ => {}
            },
            ConverseStreamOutput::MessageStop(stop) => {
                self.stopped = true;
                self.push(self.chunks.finish(finish_reason(&stop.stop_reason), None));
                self.finish_if_complete();
            }
            ConverseStreamOutput::Metadata(metadata) => {
                if let Some(u) = &metadata.usage {
                    self.usage = Some(usage(u));
                }
                self.finish_if_complete();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use aws_sdk_bedrockruntime::types::{
        ContentBlockDeltaEvent, ContentBlockStartEvent, ContentBlockStopEvent, ConversationRole,
        ConverseStreamMetadataEvent, MessageStartEvent, MessageStopEvent, StopReason, TokenUsage,
        ToolUseBlockDelta, ToolUseBlockStart,
    };

    use crate::api::CompletionAssembler;

    pub(in crate::providers) fn stream_events() -> Vec<ConverseStreamOutput> {
        vec![
            ConverseStreamOutput::MessageStart(
                MessageStartEvent::builder()
                    .role(ConversationRole::Assistant)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(0)
                    .delta(ContentBlockDelta::Text("Hi".into()))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockStop(
                ContentBlockStopEvent::builder()
                    .content_block_index(0)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockStart(
                ContentBlockStartEvent::builder()
                    .content_block_index(1)
                    .start(ContentBlockStart::ToolUse(
                        ToolUseBlockStart::builder()
                            .tool_use_id("tooluse_1")
                            .name("f")
                            .build()
                            .unwrap(),
                    ))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(1)
                    .delta(ContentBlockDelta::ToolUse(
                        ToolUseBlockDelta::builder()
                            .input("{\"a\":")
                            .build()
                            .unwrap(),
                    ))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(1)
                    .delta(ContentBlockDelta::ToolUse(
                        ToolUseBlockDelta::builder().input("1}").build().unwrap(),
                    ))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::MessageStop(
                MessageStopEvent::builder()
                    .stop_reason(StopReason::ToolUse)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::Metadata(
                ConverseStreamMetadataEvent::builder()
                    .usage(
                        TokenUsage::builder()
                            .input_tokens(7)
                            .output_tokens(9)
                            .total_tokens(16)
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ),
        ]
    }

    pub(in crate::providers) fn assert_tool_call_completion(chunks: &[ChatChunk]) {
        // The sequence clients see: a role chunk first, a finish chunk, then usage alone.
        assert_eq!(
            chunks[0].choices[0].delta.role.as_deref(),
            Some("assistant")
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(
            finish.choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
        let last = &chunks[chunks.len() - 1];
        assert!(last.choices.is_empty());
        assert_eq!(last.usage, Some(Usage::new(7, 9)));

        let mut assembler = CompletionAssembler::default();
        for chunk in chunks {
            assembler.push(chunk).unwrap();
        }
        assert!(assembler.is_finished());
        let completion = assembler.into_completion();
        assert_eq!(completion.choices[0].message.content.as_deref(), Some("Hi"));
        let calls = completion.choices[0].message.tool_calls.as_ref().unwrap();
        assert_eq!(
            (
                calls[0].id.as_str(),
                calls[0].function.name.as_str(),
                calls[0].function.arguments.as_str()
            ),
            ("tooluse_1", "f", "{\"a\":1}")
        );
        assert_eq!(completion.usage, Some(Usage::new(7, 9)));
    }

    #[test]
    fn stream_events_become_openai_chunks() {
        let mut t = StreamTranslator::new("chatcmpl-1".into(), "m");
        for event in stream_events() {
            t.translate(event);
        }
        assert!(t.finished);
        let chunks: Vec<ChatChunk> = t.pending.drain(..).collect::<Result<_, _>>().unwrap();
        assert_eq!(chunks.len(), 7);
        assert!(chunks.iter().all(|c| c.id == "chatcmpl-1"));
        assert_tool_call_completion(&chunks);
    }

    #[test]
    fn usage_before_the_stop_still_comes_last() {
        let mut events = stream_events();
        events.swap(6, 7);
        let mut t = StreamTranslator::new("c".into(), "m");
        for event in events {
            t.translate(event);
        }
        let chunks: Vec<ChatChunk> = t.pending.drain(..).collect::<Result<_, _>>().unwrap();
        assert_tool_call_completion(&chunks);
    }
}

#[cfg(test)]
mod properties {
    use aws_sdk_bedrockruntime::types::{
        ContentBlockDelta, ContentBlockDeltaEvent, ContentBlockStart, ContentBlockStartEvent,
        ContentBlockStopEvent, ConversationRole, ConverseStreamMetadataEvent, ConverseStreamOutput,
        MessageStartEvent, MessageStopEvent, StopReason, ToolUseBlockDelta, ToolUseBlockStart,
    };
    use proptest::prelude::*;

    use super::StreamTranslator;
    use crate::api::ChatChunk;
    use crate::providers::bedrock::response::properties::{STOP_REASONS, token_usage};
    use crate::providers::translation_properties::{
        GeneratedReply, ReplyBlock, assemble, check_completion, check_streamed_arguments, reply,
    };

    fn delta(index: i32, delta: ContentBlockDelta) -> ConverseStreamOutput {
        ConverseStreamOutput::ContentBlockDelta(
            ContentBlockDeltaEvent::builder()
                .content_block_index(index)
                .delta(delta)
                .build()
                .unwrap(),
        )
    }

    /// The events Bedrock streams the reply in; the usage comes before or after the stop.
    fn events(
        reply: &GeneratedReply,
        stop_reason: &str,
        usage_first: bool,
    ) -> Vec<ConverseStreamOutput> {
        let mut events = vec![ConverseStreamOutput::MessageStart(
            MessageStartEvent::builder()
                .role(ConversationRole::Assistant)
                .build()
                .unwrap(),
        )];
        for (index, block) in reply.blocks.iter().enumerate() {
            let index = i32::try_from(index).unwrap();
            match block {
                ReplyBlock::Text(pieces) => {
                    for piece in pieces {
                        events.push(delta(index, ContentBlockDelta::Text(piece.clone())));
                    }
                }
                ReplyBlock::ToolUse {
                    id, name, pieces, ..
                } => {
                    events.push(ConverseStreamOutput::ContentBlockStart(
                        ContentBlockStartEvent::builder()
                            .content_block_index(index)
                            .start(ContentBlockStart::ToolUse(
                                ToolUseBlockStart::builder()
                                    .tool_use_id(id)
                                    .name(name)
                                    .build()
                                    .unwrap(),
                            ))
                            .build()
                            .unwrap(),
                    ));
                    for piece in pieces {
                        let input = ToolUseBlockDelta::builder().input(piece).build().unwrap();
                        events.push(delta(index, ContentBlockDelta::ToolUse(input)));
                    }
                }
            }
            events.push(ConverseStreamOutput::ContentBlockStop(
                ContentBlockStopEvent::builder()
                    .content_block_index(index)
                    .build()
                    .unwrap(),
            ));
        }
        let stop = ConverseStreamOutput::MessageStop(
            MessageStopEvent::builder()
                .stop_reason(StopReason::from(stop_reason))
                .build()
                .unwrap(),
        );
        let metadata = ConverseStreamOutput::Metadata(
            ConverseStreamMetadataEvent::builder()
                .usage(token_usage(reply))
                .build(),
        );
        if usage_first {
            events.extend([metadata, stop]);
        } else {
            events.extend([stop, metadata]);
        }
        events
    }

    proptest! {
        #[test]
        fn streams_reassemble_into_the_answer(
            reply in reply(),
            (stop_reason, finish_reason) in prop::sample::select(STOP_REASONS.to_vec()),
            usage_first in any::<bool>(),
        ) {
            let mut translator = StreamTranslator::new("chatcmpl-1".into(), "m");
            for event in events(&reply, stop_reason, usage_first) {
                translator.translate(event);
            }
            prop_assert!(translator.finished);
            let chunks: Vec<ChatChunk> = translator
                .pending
                .drain(..)
                .collect::<Result<_, _>>()
                .unwrap();
            let completion = assemble(&chunks)?;
            check_completion(&completion, &reply, finish_reason)?;
            check_streamed_arguments(&completion, &reply)?;
        }
    }
}
