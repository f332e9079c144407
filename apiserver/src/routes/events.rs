//! Live output: `GET /v1/runs/{id}/events` (and `POST /v1/runs` with `"stream": true`)
//! answer `text/event-stream`. A run's events, each with a `sequence_number`:
//! `run.created`, `run.queued`, `run.in_progress`, `run.output.delta` as the program writes,
//! `run.artifact` per output file, then one terminal event with the whole run. While the
//! program runs, its pod's log is followed (through the Kubernetes API, decoded by the same
//! validating decoder the operator uses); a finished run replays its stored output. Every
//! event's id is a cursor: reconnecting with `Last-Event-ID` resumes after it, with no gap
//! and no repeat. A stream costs a bounded buffer whatever the program prints: the log is
//! read only as fast as the client reads.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use codeinterp_crds::{CodeRun, Phase};
use futures::{AsyncBufReadExt, Stream};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use runner_protocol::{Decoder, Event as RecordEvent, Stream as OutputKind};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::routes::runs::{Answer, answer};
use crate::run_object::{Artifact, Run};
use crate::state::AppState;
use crate::streams::Slot;

/// Bytes of output per replayed delta event.
const DELTA_BYTES: usize = 16 * 1024;
/// The container's whole record is at most this (2 x 1 MiB of output, 4 MiB of files, base64).
const MAX_LOG_BYTES: i64 = 12 * 1024 * 1024;
/// How long a stream waits for a run to change before looking again.
const WAIT_STEP: Duration = Duration::from_secs(30);

/// One event of a run's stream (the `data` of each server-sent event; its `event` is the
/// `type`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type")]
pub enum RunEvent {
    /// First: the run as created.
    #[serde(rename = "run.created")]
    Created { sequence_number: u64, run: Box<Run> },
    /// The run waits for its program to start; its place in line, if it waits for room.
    #[serde(rename = "run.queued")]
    Queued {
        sequence_number: u64,
        run_id: String,
        queue_position: Option<u32>,
    },
    /// The program has started.
    #[serde(rename = "run.in_progress")]
    InProgress { sequence_number: u64, run: Box<Run> },
    /// Output the program wrote (what is over `max_output_bytes` is not streamed).
    #[serde(rename = "run.output.delta")]
    OutputDelta {
        sequence_number: u64,
        run_id: String,
        /// `stdout` or `stderr`.
        stream: String,
        delta: String,
    },
    /// An output file, with its signed URL.
    #[serde(rename = "run.artifact")]
    Artifact {
        sequence_number: u64,
        run_id: String,
        artifact: Artifact,
    },
    #[serde(rename = "run.completed")]
    Completed { sequence_number: u64, run: Box<Run> },
    #[serde(rename = "run.failed")]
    Failed { sequence_number: u64, run: Box<Run> },
    #[serde(rename = "run.timed_out")]
    TimedOut { sequence_number: u64, run: Box<Run> },
    #[serde(rename = "run.cancelled")]
    Cancelled { sequence_number: u64, run: Box<Run> },
}

impl RunEvent {
    fn name(&self) -> &'static str {
        match self {
            RunEvent::Created { .. } => "run.created",
            RunEvent::Queued { .. } => "run.queued",
            RunEvent::InProgress { .. } => "run.in_progress",
            RunEvent::OutputDelta { .. } => "run.output.delta",
            RunEvent::Artifact { .. } => "run.artifact",
            RunEvent::Completed { .. } => "run.completed",
            RunEvent::Failed { .. } => "run.failed",
            RunEvent::TimedOut { .. } => "run.timed_out",
            RunEvent::Cancelled { .. } => "run.cancelled",
        }
    }

    fn terminal(run: Run, sequence_number: u64) -> Self {
        let run = Box::new(run);
        match run.status {
            crate::run_object::RunStatus::Completed => RunEvent::Completed {
                sequence_number,
                run,
            },
            crate::run_object::RunStatus::TimedOut => RunEvent::TimedOut {
                sequence_number,
                run,
            },
            crate::run_object::RunStatus::Cancelled => RunEvent::Cancelled {
                sequence_number,
                run,
            },
            _ => RunEvent::Failed {
                sequence_number,
                run,
            },
        }
    }
}

/// Where a client is in a run's events: how many it has had, how many bytes of each stream
/// and how many artifacts. The id of every event, and what `Last-Event-ID` gives back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    pub out: [u64; 2],
    pub artifacts: u64,
}

impl Cursor {
    pub fn id(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.seq, self.out[0], self.out[1], self.artifacts
        )
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.trim().split('.').map(|p| p.parse::<u64>().ok());
        let c = Cursor {
            seq: parts.next()??,
            out: [parts.next()??, parts.next()??],
            artifacts: parts.next()??,
        };
        parts.next().is_none().then_some(c)
    }
}

const STAGE_CREATED: u64 = 0;
const STAGE_QUEUED: u64 = 1;
const STAGE_IN_PROGRESS: u64 = 2;

/// Turns output bytes into text without splitting a character across events: a character
/// cut at the end waits for its next bytes; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Text {
    carry: Vec<u8>,
}

impl Utf8Text {
    /// The text the bytes complete, and how many bytes it stands for.
    pub fn push(&mut self, bytes: &[u8]) -> (String, u64) {
        self.carry.extend_from_slice(bytes);
        let mut text = String::new();
        let mut used = 0usize;
        loop {
            match std::str::from_utf8(&self.carry[used..]) {
                Ok(s) => {
                    text.push_str(s);
                    used = self.carry.len();
                    break;
                }
                Err(e) => {
                    let valid = used + e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.carry[used..valid]).expect("valid"));
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            used = valid + n;
                        }
                        None => {
                            used = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.carry.drain(..used);
        (text, used as u64)
    }
}

fn kind_index(kind: OutputKind) -> usize {
    match kind {
        OutputKind::Stdout => 0,
        OutputKind::Stderr => 1,
    }
}

fn sse(event: &RunEvent, cursor: &Cursor) -> Event {
    Event::default()
        .event(event.name())
        .id(cursor.id())
        .json_data(event)
        .expect("events serialize")
}

/// The run's events from `from` on.
pub fn run_events(
    state: AppState,
    tenant: String,
    id: String,
    from: Cursor,
    slot: Slot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let _slot = slot;
        let mut c = from;
        let Ok(Some(mut current)) = answer(&state, &tenant, &id).await else {
            return;
        };
        if c.seq == STAGE_CREATED {
            let mut run = current.into_run(&state);
            run.status = crate::run_object::RunStatus::Queued;
            c.seq = STAGE_QUEUED;
            yield Ok(sse(&RunEvent::Created { sequence_number: STAGE_CREATED, run: Box::new(run) }, &c));
            current = match answer(&state, &tenant, &id).await { Ok(Some(a)) => a, _ => return };
        }
        if c.seq <= STAGE_QUEUED {
            let position = match &current { Answer::Live(run) => run.queue_position, Answer::Done(_) => None };
            c.seq = STAGE_IN_PROGRESS;
            yield Ok(sse(&RunEvent::Queued { sequence_number: STAGE_QUEUED, run_id: id.clone(), queue_position: position }, &c));
        }
        // Wait for the program to start (or the run to end).
        let started = |r: &CodeRun| r.is_finished() || r.phase() == Some(Phase::Running);
        let mut live = state.runs.get_for(&tenant, &id);
        while let Some(run) = live.clone() {
            if started(&run) {
                break;
            }
            live = state.runs.wait_until(&id, Instant::now() + WAIT_STEP, started).await;
        }
        if c.seq <= STAGE_IN_PROGRESS {
            let run = match answer(&state, &tenant, &id).await { Ok(Some(a)) => a.into_run(&state), _ => return };
            c.seq = STAGE_IN_PROGRESS + 1;
            yield Ok(sse(&RunEvent::InProgress { sequence_number: STAGE_IN_PROGRESS, run: Box::new(run) }, &c));
        }
        // While it runs: its pod's log, as the wrapper writes it.
        if let Some(run) = live.filter(|r| !r.is_finished())
            && let Some(pod) = run.status.as_ref().and_then(|s| s.pod_name.clone())
        {
            let limits = run.spec.limits.clamp(&state.settings.maxima);
            let pods: Api<Pod> = Api::namespaced(state.kube.clone(), state.runs.namespace());
            let params = LogParams {
                container: Some("runner".into()),
                follow: true,
                limit_bytes: Some(MAX_LOG_BYTES),
                ..Default::default()
            };
            if let Ok(mut log) = pods.log_stream(&pod, &params).await {
                let mut decoder = Decoder::events_only(&limits);
                let mut text = [Utf8Text::default(), Utf8Text::default()];
                // Bytes of each stream read from the log so far, and already delivered.
                let mut seen = [0u64; 2];
                let mut ended = false;
                while !ended {
                    let bytes = match log.fill_buf().await {
                        Ok([]) | Err(_) => break,
                        Ok(b) => b.to_vec(),
                    };
                    log.consume_unpin(bytes.len());
                    let Ok(events) = decoder.push(&bytes) else { break };
                    for event in events {
                        match event {
                            RecordEvent::Output { stream, bytes } => {
                                let i = kind_index(stream);
                                let start = seen[i];
                                seen[i] += bytes.len() as u64;
                                // The client has the first `c.out[i]` bytes of this stream.
                                let skip = c.out[i].saturating_sub(start).min(bytes.len() as u64) as usize;
                                if skip == bytes.len() {
                                    continue;
                                }
                                let (delta, used) = text[i].push(&bytes[skip..]);
                                if delta.is_empty() {
                                    continue;
                                }
                                c.out[i] += used;
                                let seq = c.seq;
                                c.seq += 1;
                                yield Ok(sse(&RunEvent::OutputDelta {
                                    sequence_number: seq,
                                    run_id: id.clone(),
                                    stream: stream.as_str().into(),
                                    delta,
                                }, &c));
                            }
                            RecordEvent::Exit(_) | RecordEvent::End => ended = true,
                            _ => {}
                        }
                    }
                }
            }
        }
        // The run's end: the stored record is the whole truth. Output not streamed yet
        // (the log missed it, or the run finished before it could be followed) comes from it.
        loop {
            match state.runs.get_for(&tenant, &id) {
                Some(run) if !run.is_finished() => {
                    state.runs.wait_until(&id, Instant::now() + WAIT_STEP, CodeRun::is_finished).await;
                }
                _ => break,
            }
        }
        let done = match answer(&state, &tenant, &id).await {
            Ok(Some(Answer::Done(p))) => p,
            // Finished, but its record cannot be read: the status answers.
            Ok(Some(Answer::Live(run))) => {
                let seq = c.seq;
                c.seq += 1;
                yield Ok(sse(&RunEvent::terminal(*run, seq), &c));
                return;
            }
            _ => return,
        };
        let run = done.to_run(&state.links());
        let stored = match state.store.get_run_by_id(&tenant, &id).await {
            Ok(Some(rec)) => Some(rec),
            _ => None,
        };
        if let Some(rec) = stored {
            for kind in [OutputKind::Stdout, OutputKind::Stderr] {
                let which = match kind {
                    OutputKind::Stdout => codeinterp_store::OutputStream::Stdout,
                    OutputKind::Stderr => codeinterp_store::OutputStream::Stderr,
                };
                let Ok(all) = state.store.get_output(&rec, which).await else { continue };
                let i = kind_index(kind);
                let mut at = (c.out[i] as usize).min(all.len());
                let mut text = Utf8Text::default();
                while at < all.len() {
                    let end = (at + DELTA_BYTES).min(all.len());
                    let (delta, used) = text.push(&all[at..end]);
                    at = end;
                    if at == all.len() && used == 0 && delta.is_empty() {
                        // Bytes that never complete a character: shown as U+FFFD.
                        let rest = String::from_utf8_lossy(&text.carry).into_owned();
                        c.out[i] = all.len() as u64;
                        let seq = c.seq;
                        c.seq += 1;
                        yield Ok(sse(&RunEvent::OutputDelta { sequence_number: seq, run_id: id.clone(), stream: kind.as_str().into(), delta: rest }, &c));
                        break;
                    }
                    if delta.is_empty() {
                        continue;
                    }
                    c.out[i] += used;
                    let seq = c.seq;
                    c.seq += 1;
                    yield Ok(sse(&RunEvent::OutputDelta { sequence_number: seq, run_id: id.clone(), stream: kind.as_str().into(), delta }, &c));
                }
            }
        }
        for artifact in run.artifacts.iter().skip(c.artifacts as usize) {
            let seq = c.seq;
            c.seq += 1;
            c.artifacts += 1;
            yield Ok(sse(&RunEvent::Artifact { sequence_number: seq, run_id: id.clone(), artifact: artifact.clone() }, &c));
        }
        let seq = c.seq;
        c.seq += 1;
        yield Ok(sse(&RunEvent::terminal(run, seq), &c));
    }
}

/// The SSE answer for a run of the tenant, from the client's cursor (`Last-Event-ID`).
pub fn stream_response(
    state: &AppState,
    tenant: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse)
        .unwrap_or_default();
    let Some(slot) = state.streams.take(tenant) else {
        return Err(ApiError::RateLimited {
            retry_after_secs: 5,
        });
    };
    let events = run_events(
        state.clone(),
        tenant.to_string(),
        id.to_string(),
        from,
        slot,
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must not buffer a live stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

/// Stream a run's events
///
/// Server-sent events of the run, from its creation (or, with `Last-Event-ID`, from after
/// that event) to its end: `run.created`, `run.queued`, `run.in_progress`,
/// `run.output.delta` as the program writes, `run.artifact` per output file, and one of
/// `run.completed`, `run.failed`, `run.timed_out`, `run.cancelled` with the whole run. A
/// finished run replays its events. Comments keep an idle stream alive. A tenant may hold
/// a limited number of streams open (429 beyond).
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run's id", max_length = 63),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: the stream resumes after it"),
    ),
    responses(
        (status = 200, description = "The run's events", content_type = "text/event-stream", body = RunEvent),
        (status = 404, description = "No such run for this API key", body = ErrorBody),
        (status = 429, description = "Too many open streams", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if answer(&state, &caller.tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("run", &id));
    }
    stream_response(&state, &caller.tenant, &id, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_junk_is_no_cursor() {
        let c = Cursor {
            seq: 7,
            out: [10, 3],
            artifacts: 1,
        };
        assert_eq!(Cursor::parse(&c.id()), Some(c));
        for junk in ["", "1.2.3", "a.b.c.d", "1.2.3.4.5", "-1.0.0.0"] {
            assert_eq!(Cursor::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn text_never_splits_a_character_and_shows_invalid_bytes_as_replacements() {
        let mut t = Utf8Text::default();
        let e = "é".as_bytes();
        assert_eq!(t.push(&[b'a', e[0]]), ("a".to_string(), 1));
        assert_eq!(t.push(&[e[1], b'b']), ("éb".to_string(), 3));
        assert_eq!(t.push(b"\xff\xfex"), ("\u{FFFD}\u{FFFD}x".to_string(), 3));
        let mut whole = String::new();
        let mut t = Utf8Text::default();
        for b in "naïve ☃ text".as_bytes() {
            whole.push_str(&t.push(std::slice::from_ref(b)).0);
        }
        assert_eq!(whole, "naïve ☃ text");
    }
}
