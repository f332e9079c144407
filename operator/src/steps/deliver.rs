//! Handing a pod its job: attach to it (or use the session held open to it), write the job
//! to its stdin, and read the record from the same stream as the wrapper writes it, so the
//! run is over when the end frame arrives, not when the kubelet notices the exit. `Running`
//! is written once the program has run for a moment: a program that ends sooner goes from
//! waiting to finished in one status write.
use codeinterp_crds::CodeRun;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use runner_protocol::{Decoder, Event, Follower};
use tokio::time::{Duration, Instant, sleep_until};

use crate::Error;
use crate::context::Context;
use crate::inputs;
use crate::kube_io::update_status;
use crate::outcome::Outcome;
use crate::reading::Read;
use crate::status;
use crate::steps::place::start_mode;
use crate::streams::Attached;

/// How long the program runs before its `Running` status is written.
pub const RUNNING_GRACE: Duration = Duration::from_millis(100);
/// Attempts at attaching to a pod that has no session held open.
const ATTACH_ATTEMPTS: u32 = 3;

pub enum Delivered {
    /// The job was written (or the writing broke off: the record says so) and the stream
    /// was read; `run` is the run as the `Running` write left it, if it was written.
    Read {
        read: Box<Read>,
        run: Option<Box<CodeRun>>,
    },
    /// The pod could not be reached: the job never got to it.
    NotHanded { why: String },
    /// The run's inputs are refused: it ends without a pod.
    Refused(Outcome),
}

pub async fn deliver(
    ctx: &Context,
    run: &CodeRun,
    pod: &Pod,
    held: Option<Attached>,
    deadline: Instant,
) -> Result<Delivered, Error> {
    let inputs = match inputs::for_run(ctx, run).await {
        Ok(inputs) => inputs,
        Err(refusal) => {
            return Ok(Delivered::Refused(Outcome::ended(
                refusal.reason,
                refusal.message,
            )));
        }
    };
    let mut session = match held {
        Some(session) => session,
        None => match attach(ctx, pod).await {
            Ok(session) => session,
            Err(why) => return Ok(Delivered::NotHanded { why }),
        },
    };
    let (Some(mut stdin), Some(stdout)) = (session.stdin.take(), session.stdout.take()) else {
        return Ok(Delivered::NotHanded {
            why: "the attach session has no stdin or stdout".into(),
        });
    };
    ctx.record(
        run,
        EventType::Normal,
        "Started",
        "Run",
        &format!("the job was handed to {}", pod.name_any()),
    );
    // The job is written while the stream is read: a pod whose stdin is gone (it took a
    // job from an earlier leader a moment ago) never reads ours, and its stream, not our
    // write, says how the run went. A write that breaks off leaves a job cut short: the
    // record says so.
    let (read, stop_writing) = tokio::sync::oneshot::channel::<()>();
    let writing = async {
        let limit = write_limit(inputs.job.payload_bytes());
        tokio::select! {
            written = tokio::time::timeout(limit, inputs.write(&ctx.store, &mut stdin)) => match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(pod = %pod.name_any(), error = %e, "writing the job"),
                Err(_) => tracing::warn!(pod = %pod.name_any(), "the job's write stalled; reading on"),
            },
            _ = stop_writing => {}
        }
    };
    let reading = async {
        let follower = Follower::new(stdout, Decoder::streaming(&ctx.limits(run)));
        let out = read_stream(ctx, run, pod, follower, deadline).await;
        let _ = read.send(());
        out
    };
    let ((), (done, written)) = tokio::join!(writing, reading);
    // Holding stdin open until now keeps the stream whole; dropping it ends the session.
    drop((stdin, session));
    Ok(Delivered::Read {
        read: Box::new(done),
        run: written.map(Box::new),
    })
}

/// How long writing a job of `payload` bytes may take: ample at a few MiB a second.
fn write_limit(payload: u64) -> Duration {
    Duration::from_secs(30 + payload / (2 << 20))
}

async fn attach(ctx: &Context, pod: &Pod) -> Result<Attached, String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut attempt = 0;
    loop {
        match ctx.streams.attach(&ns, &pod.name_any()).await {
            Ok(session) => return Ok(session),
            Err(e) if attempt + 1 < ATTACH_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(pod = %pod.name_any(), error = %e, "attaching; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => return Err(format!("could not attach to the runner pod: {e}")),
        }
    }
}

type Write = BoxFuture<'static, Result<(CodeRun, bool), Error>>;

/// Reads the record until its end frame, the stream's end or `deadline`, storing its files
/// as they come and writing `Running` once the program has run for [`RUNNING_GRACE`].
async fn read_stream<R>(
    ctx: &Context,
    run: &CodeRun,
    pod: &Pod,
    mut follower: Follower<R>,
    deadline: Instant,
) -> (Read, Option<CodeRun>)
where
    R: futures::io::AsyncRead + Unpin,
{
    let mut files = crate::artifacts::for_run(ctx, run);
    let mut started: Option<Instant> = None;
    let mut writing: Option<Write> = None;
    let mut written = None;
    loop {
        let due = started.filter(|_| writing.is_none() && written.is_none());
        tokio::select! {
            event = follower.next() => match event {
                None => break,
                Some(Event::Started) => started = Some(Instant::now()),
                Some(event) => files.take(&event).await,
            },
            _ = sleep_until(due.map_or(deadline, |t| t + RUNNING_GRACE)), if due.is_some() => {
                writing = Some(write_running(ctx, run, pod));
            }
            result = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                written = Some(result);
            }
            _ = sleep_until(deadline) => break,
        }
    }
    // A write in flight lands before the final one is made.
    if let Some(write) = writing {
        written = Some(write.await);
    }
    let written = written.and_then(|r| {
        r.map_err(|e| tracing::warn!(error = %e, "writing the Running status"))
            .ok()
            .map(|(run, _)| run)
    });
    if !follower.is_complete() {
        tracing::warn!(
            pod = %pod.name_any(),
            error = follower.broken().unwrap_or("the stream ended"),
            exited = follower.record().exit.is_some(),
            "the record from the pod broke off before its end frame"
        );
    }
    let read = Read {
        followed: follower.finish(),
        files: files.finish().await,
    };
    (read, written)
}

fn write_running(ctx: &Context, run: &CodeRun, pod: &Pod) -> Write {
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    let applied = ctx.isolation().unwrap_or_default();
    let (run, pod_name, mode) = (run.clone(), pod.name_any(), start_mode(pod));
    let generation = run.metadata.generation;
    Box::pin(async move {
        update_status(&api, &run, |s| {
            status::running(s, &pod_name, mode, &applied, generation)
        })
        .await
    })
}
