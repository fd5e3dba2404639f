//! The SSE relay: an upstream stream to the client while the whole answer is assembled, so a
//! complete stream is billed and cached and an incomplete one never passes for an answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};

use super::settlement::{Settlement, finish_in_background};
use super::sse::{SSE_DONE, sse_data, sse_error, sse_relay_frame};
use super::validate;
use crate::api::{ChatChunk, CompletionAssembler, MalformedChunk, Usage};
use crate::background::Background;
use crate::cache::Leader;
use crate::error::{ApiError, ErrorKind};
use crate::guard::schema::OutputSchema;
use crate::providers::{ChunkStream, ErrorSource, ProviderError, ProviderErrorKind};
use crate::telemetry::{METRICS, RequestTrace};

/// Most bytes of SSE events a detached relay holds for a client that does not read them.
pub(crate) const DETACHED_BACKLOG_BYTES: usize = 16 * 1024 * 1024;

/// Most bytes of ready SSE events the relay puts in one write.
pub(crate) const COALESCE_BYTES: usize = 16 * 1024;

/// Relays an upstream stream to the client as SSE while assembling the whole answer, so that a
/// complete stream is billed and cached and an incomplete one never passes for an answer.
pub(crate) struct StreamRelay {
    pub(crate) upstream: ChunkStream,
    pub(crate) assembler: CompletionAssembler,
    pub(crate) include_usage: bool,
    pub(crate) usage_sent: bool,
    pub(crate) settlement: Option<Settlement>,
    pub(crate) model: String,
    /// Who answered: the provider's config name and its own name for the model, to word an
    /// upstream failure for the client.
    pub(crate) provider: String,
    pub(crate) upstream_model: String,
    /// The request's span: a stream fails after the handler has returned, and its log line
    /// must still carry the request id.
    pub(crate) span: tracing::Span,
    /// The request's trace, for the same reason: a broken stream is the request's failure.
    pub(crate) trace: Option<Arc<RequestTrace>>,
    pub(crate) leader: Option<Leader>,
    pub(crate) background: Background,
    pub(crate) cache_ttl_s: u64,
    pub(crate) prompt_estimate: u64,
    pub(crate) deadline: tokio::time::Instant,
    /// After every choice has its finish reason, how long to wait for the usage chunk and the
    /// end: a provider that forgets `[DONE]` must not hold the client.
    pub(crate) finish_grace: Duration,
    pub(crate) finished: bool,
    /// The schema of `response_format`, checked when the stream ends.
    pub(crate) output_schema: Option<Arc<OutputSchema>>,
}

impl StreamRelay {
    pub(crate) fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut relay| async move {
            let mut frame = relay.next_frame().await?;
            // Chunks the upstream has already delivered leave in the same write (each item of
            // the body is a write of its own). `next_frame` loses nothing when it is dropped
            // while waiting, so a chunk that is not there yet is simply read next time.
            if let Some(Some(more)) = relay.next_frame().now_or_never() {
                let mut frames = BytesMut::from(frame);
                frames.extend_from_slice(&more);
                while frames.len() < COALESCE_BYTES
                    && let Some(Some(more)) = relay.next_frame().now_or_never()
                {
                    frames.extend_from_slice(&more);
                }
                frame = frames.freeze();
            }
            Some((Ok(frame), relay))
        })
    }

    /// Runs the relay in the background at the upstream's pace and hands its frames to the
    /// client as it reads them: the answer is completed, billed and cached even if this client
    /// reads slowly or leaves. What waits for a slow reader is capped at `DETACHED_BACKLOG_BYTES`;
    /// past that the client's stream is cut, not the answer.
    pub(crate) fn detached(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let pumped = Arc::clone(&backlog);
        let background = self.background.clone();
        background.spawn(async move {
            let mut relay = self;
            let mut client = Some(sender);
            while let Some(frame) = relay.next_frame().await {
                let Some(sender) = &client else { continue };
                let queued = pumped.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
                if queued > DETACHED_BACKLOG_BYTES || sender.send(frame).is_err() {
                    client = None;
                }
            }
        });
        futures_util::stream::unfold(receiver, move |mut receiver| {
            let backlog = Arc::clone(&backlog);
            async move {
                let frame = receiver.recv().await?;
                backlog.fetch_sub(frame.len(), Ordering::Relaxed);
                Some((Ok(frame), receiver))
            }
        })
    }

    fn usage(&self) -> Usage {
        self.assembler.usage.unwrap_or_else(|| {
            Usage::new(
                self.prompt_estimate,
                self.assembler.estimated_completion_tokens(),
            )
        })
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            let finishing = self.assembler.is_finished();
            let wait_until = if finishing {
                self.deadline
                    .min(tokio::time::Instant::now() + self.finish_grace)
            } else {
                self.deadline
            };
            let next = match tokio::time::timeout_at(wait_until, self.upstream.next()).await {
                Ok(next) => next,
                Err(_) if finishing => None,
                Err(_) => {
                    self.finished = true;
                    return Some(self.fail(
                        "deadline",
                        ApiError::new(
                            ErrorKind::Timeout,
                            "The request's deadline passed before the answer was complete.",
                        ),
                        None,
                    ));
                }
            };
            match next {
                Some(Ok(mut chunk)) => {
                    if let Err(MalformedChunk(reason)) = self.assembler.push(&chunk) {
                        self.finished = true;
                        let error = ProviderError::new(ProviderErrorKind::Protocol, reason);
                        let source = ErrorSource {
                            provider: &self.provider,
                            model: &self.model,
                            upstream_model: &self.upstream_model,
                        };
                        let api_error = error.to_api_error(&source);
                        return Some(self.fail("protocol", api_error, Some(&error)));
                    }
                    let usage = self.usage();
                    if let Some(settlement) = &mut self.settlement {
                        settlement.observed = usage;
                    }
                    let usage_only = chunk.choices.is_empty() && chunk.usage.is_some();
                    if usage_only {
                        if !self.include_usage {
                            continue;
                        }
                        self.usage_sent = true;
                    }
                    // The upstream's own text when it has it (minus `usage`, unless the client
                    // asked for usage): no second serialisation of every chunk.
                    let strip_usage = !usage_only && !self.include_usage;
                    if let Some(frame) = chunk
                        .raw
                        .take()
                        .and_then(|raw| sse_relay_frame(&raw, strip_usage))
                    {
                        return Some(frame);
                    }
                    if strip_usage {
                        chunk.usage = None;
                    }
                    return Some(sse_data(&chunk));
                }
                Some(Err(error)) => {
                    self.finished = true;
                    let reason = format!("{:?}", error.kind).to_lowercase();
                    let source = ErrorSource {
                        provider: &self.provider,
                        model: &self.model,
                        upstream_model: &self.upstream_model,
                    };
                    let api_error = error.to_api_error(&source);
                    return Some(self.fail(&reason, api_error, Some(&error)));
                }
                None => {
                    self.finished = true;
                    return Some(self.complete());
                }
            }
        }
    }

    /// Ends a stream that broke: an SSE error event the SDKs raise, no cache entry; what was
    /// produced is billed when the settlement drops. The upstream's error, if that is the
    /// cause, goes to the log in full.
    fn fail(&mut self, reason: &str, error: ApiError, cause: Option<&ProviderError>) -> Bytes {
        self.span.in_scope(|| {
            tracing::warn!(
                reason,
                model = %self.model,
                provider = %self.provider,
                cause = cause.map(tracing::field::display),
                "stream broken after it started"
            );
        });
        METRICS.record_broken_stream(self.trace.as_deref(), reason);
        self.leader = None;
        self.settlement = None;
        sse_error(&error)
    }

    /// Ends a stream the upstream closed: `[DONE]` if the answer is complete, else an error.
    fn complete(&mut self) -> Bytes {
        if !self.assembler.is_finished() {
            return self.fail(
                "incomplete",
                ApiError::new(
                    ErrorKind::BadGateway,
                    format!(
                        "Provider `{}` ended the stream before the answer was complete.",
                        self.provider
                    ),
                ),
                None,
            );
        }
        let usage = self.usage();
        let mut frames = Vec::new();
        if self.include_usage && !self.usage_sent {
            let mut chunk = ChatChunk::new("", 0, "", Vec::new());
            chunk.usage = Some(usage);
            frames.extend_from_slice(&sse_data(&chunk));
        }
        frames.extend_from_slice(SSE_DONE);
        let assembled = std::mem::take(&mut self.assembler);
        let truncated = assembled.is_truncated();
        let mut completion = assembled.into_completion();
        completion.usage = Some(usage);
        if let Some(schema) = self.output_schema.take() {
            if let Err(failed) = validate::check(&schema, &completion) {
                validate::count(&self.model, "invalid");
                let error = validate::failure(&failed.violation, false);
                return self.fail("output_validation", error, None);
            }
            validate::count(&self.model, "valid");
        }
        if let Some(settlement) = self.settlement.take() {
            let price = settlement.price();
            settlement.finish(usage, price, &self.model);
        }
        if let Some(leader) = self.leader.take().filter(|_| !truncated)
            && let Ok(body) = serde_json::to_vec(&completion)
        {
            finish_in_background(
                &self.background,
                leader.complete(Bytes::from(body), self.cache_ttl_s),
            );
        }
        Bytes::from(frames)
    }
}
