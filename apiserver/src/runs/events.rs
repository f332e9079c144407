//! Live output: `GET /v1/runs/{id}/events` (and `POST /v1/runs` with `"stream": true`)
//! answer `text/event-stream`. A run's events, each with a `sequence_number`:
//! `run.created`, `run.queued`, `run.in_progress`, `run.output.delta` as the program writes,
//! `run.artifact` per output file, then one terminal event with the run. Every event's id is
//! a cursor: reconnecting with `Last-Event-ID` resumes after it, with no gap and no repeat.
//!
//! A stream is small streams chained, each a stage of the run: `phases` (created, queued,
//! in progress), `live` (the pod's log followed while the program runs, decoded by the
//! protocol's own follower), then, once the run has finished, `replay` (the output not
//! streamed live, read from storage, then the artifacts and the terminal event). Stages make
//! unnumbered events; `Cursor::stamp` numbers them as they go out.
//!
//! Memory per stream is bounded whatever the program printed, and this composition is where
//! the bound holds: every stage is pulled only as fast as the client reads (hyper stops
//! polling a response once its write buffer holds ~400 KiB), and a stage holds one event at
//! a time. The largest events are a delta of at most `replay::DELTA_BYTES` (16 KiB) of
//! output, at most 96 KiB as JSON (a control byte escapes to six), and a run object with at
//! most 4 KiB of each stream ([`crate::runs::model::Run::with_heads`]; under 64 KiB as JSON
//! with 64 artifacts). A replay reads storage one 16 KiB range at a time: a replaying stream
//! costs under 1 MiB. Following a log adds the follower's 64 KiB read buffer, a line of at
//! most 64 KiB and the log client's read buffer (~400 KiB): under 1.5 MiB. So the 32 streams
//! one tenant may hold (`MAX_STREAMS_PER_TENANT`) cost under 48 MiB, never 32 copies of the
//! run's output.
mod container_log;
mod live;
mod phases;
mod replay;
mod slots;
mod text;
mod wire;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use codeinterp_crds::CodeRun;
use futures::future::ready;
use futures::{Stream, StreamExt, stream};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ErrorBody};
use crate::runs::service::{self, Summary};
use crate::state::AppState;

pub use slots::{Slot, StreamSlots};
pub use text::Utf8Text;
pub use wire::{Cursor, RunEvent, RunEventMessage};

use wire::Emit;

/// How long a stream waits for a run to change before looking again.
const WAIT_STEP: Duration = Duration::from_secs(30);
/// A comment this often keeps an idle stream open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What a client refused a stream should wait before trying again.
const STREAMS_FULL_RETRY_SECS: u64 = 5;

/// What every stage of one stream reads: the server, and whose run it follows.
struct Ctx {
    state: AppState,
    tenant: String,
    id: String,
}

impl Ctx {
    /// The run as events show it (heads of its output only); `None` once it cannot be found.
    async fn summary(&self) -> Option<Summary> {
        match service::summary(&self.state, &self.tenant, &self.id).await {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(run = %self.id, error = %e, "reading a streamed run");
                None
            }
        }
    }

    /// Waits until `done` holds for the run, or it is no longer in the cache (finished and
    /// collected, or never there: its record tells the rest).
    async fn wait_for(&self, done: fn(&CodeRun) -> bool) {
        let runs = &self.state.runs;
        let mut current = runs.get_for(&self.tenant, &self.id);
        while let Some(run) = current {
            if done(&run) {
                return;
            }
            let deadline = Instant::now() + WAIT_STEP;
            current = runs.wait_until(&self.id, deadline, done).await;
        }
    }
}

/// The cursor as the client has it: each event moves it as it goes out, and the stage that
/// must know what went before it (the replay) reads it when it starts.
#[derive(Clone)]
struct Delivered(Arc<Mutex<Cursor>>);

impl Delivered {
    fn stamp(&self, emit: Emit, run_id: &str) -> Option<sse::Event> {
        self.0.lock().expect("cursor lock").stamp(emit, run_id)
    }

    fn advance(&self, emit: Emit, run_id: &str) -> Option<RunEvent> {
        self.0.lock().expect("cursor lock").advance(emit, run_id)
    }

    fn get(&self) -> Cursor {
        *self.0.lock().expect("cursor lock")
    }
}

/// The stages of a run's stream from the cursor `from` on, unnumbered.
fn stages(ctx: Arc<Ctx>, from: Cursor, delivered: Delivered) -> impl Stream<Item = Emit> {
    let ending = ending(ctx.clone(), delivered);
    phases::opening(ctx.clone(), from.seq)
        .chain(phases::started(ctx.clone(), from.seq))
        .chain(live::output(ctx, from.out))
        .chain(ending)
}

/// The run's events from the client's cursor on, holding the stream's slot until it ends.
fn run_events(
    ctx: Arc<Ctx>,
    from: Cursor,
    slot: Slot,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + Send + 'static {
    let delivered = Delivered(Arc::new(Mutex::new(from)));
    let id = ctx.id.clone();
    stages(ctx, from, delivered.clone()).scan(slot, move |_slot, emit| {
        ready(delivered.stamp(emit, &id).map(Ok))
    })
}

/// A run's events from its start, as values rather than server-sent events, for other
/// front ends of the same stream (MCP's progress notifications). It holds the slot until it
/// ends, like a stream does.
pub fn follow(
    state: &AppState,
    tenant: &str,
    id: &str,
    slot: Slot,
) -> impl Stream<Item = RunEvent> + Send + 'static {
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        tenant: tenant.to_string(),
        id: id.to_string(),
    });
    let from = Cursor::default();
    let delivered = Delivered(Arc::new(Mutex::new(from)));
    let id = ctx.id.clone();
    stages(ctx, from, delivered.clone())
        .scan(slot, move |_slot, emit| ready(delivered.advance(emit, &id)))
}

/// Once the run has finished, from one look at it: what the client has not had of its
/// stored output, its artifacts and the terminal event; without a record (storage cannot be
/// read), the terminal event as its status tells it.
fn ending(ctx: Arc<Ctx>, delivered: Delivered) -> impl Stream<Item = Emit> {
    stream::once(async move {
        ctx.wait_for(CodeRun::is_finished).await;
        // The chain polls this stage only after every earlier event went out.
        let has = delivered.get();
        let Some(summary) = ctx.summary().await else {
            return stream::iter([Emit::Stop]).boxed();
        };
        let run = Box::new(summary.to_run(&ctx.state));
        match summary {
            Summary::Record(rec) => replay::rest(ctx.state.store.clone(), *rec, run, has).boxed(),
            Summary::Status(_) => stream::iter([Emit::Terminal(run)]).boxed(),
        }
    })
    .flatten()
}

/// A slot for one more of the tenant's streams, or 429.
pub fn take_slot(state: &AppState, tenant: &str) -> Result<Slot, ApiError> {
    state.streams.take(tenant).ok_or(ApiError::RateLimited {
        retry_after_secs: STREAMS_FULL_RETRY_SECS,
    })
}

/// The SSE answer for a run of the tenant, from the client's cursor (`Last-Event-ID`).
pub fn respond(
    state: &AppState,
    tenant: &str,
    id: &str,
    headers: &HeaderMap,
    slot: Slot,
) -> Response {
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse)
        .unwrap_or_default();
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        tenant: tenant.to_string(),
        id: id.to_string(),
    });
    let mut response = Sse::new(run_events(ctx, from, slot))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies must not buffer a live stream.
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Stream a run's events
///
/// Server-sent events of the run, from its creation (or, with `Last-Event-ID`, from after
/// that event) to its end: `run.created`, `run.queued`, `run.in_progress`,
/// `run.output.delta` as the program writes, `run.artifact` per output file, and one of
/// `run.completed`, `run.failed`, `run.timed_out`, `run.cancelled` with the run. The output
/// comes once, in `run.output.delta` events: the runs inside events carry at most the first
/// 4 KiB of stdout and stderr. A finished run replays its events (its output read from
/// storage as the client takes it). Comments keep an idle stream alive. A tenant may hold a
/// limited number of streams open (429 beyond).
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run's id", max_length = 63),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: the stream resumes after it"),
    ),
    responses(
        (status = 200, description = "The run's events", content_type = "text/event-stream", body = RunEventMessage),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such run for this API key", body = ErrorBody),
        (status = 429, description = "Too many open streams", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant.as_str();
    if service::summary(&state, tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("run", &id));
    }
    let slot = take_slot(&state, tenant)?;
    Ok(respond(&state, tenant, &id, &headers, slot))
}
