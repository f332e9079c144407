//! Reading a run's record. A fresh pod gets its job over `attach` (stdin) and its record is
//! read from the same stream as the wrapper writes it, so the run is over when the end frame
//! arrives, not when the kubelet notices the container exit. A pod this process knows
//! nothing about (after a restart, or a cancel) is read from its log: if the log shows the
//! job arrived, the log is followed; if not, the job is handed over now. Either way every
//! byte goes through the protocol's validating decoder, and the run is finished once.
use std::sync::Arc;
use std::time::Duration;

use codeinterp_crds::{CodeRun, Reason, StartMode};
use futures::{AsyncBufReadExt, AsyncReadExt};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::api::{AttachedProcess, LogParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use runner_protocol::{Decoder, EffectiveLimits, Event, ParseError, Record};
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;

use crate::Error;
use crate::context::{Context, claim_session};
use crate::inputs;
use crate::outcome::{self, Outcome};
use crate::pod_spec::RUNNER_CONTAINER;
use crate::reconcile::finish;
use crate::status;

/// A record can never be larger than this: 2 x 1 MiB of output and 4 MiB of files, base64.
const MAX_LOG_BYTES: i64 = 12 * 1024 * 1024;
/// Buffer of the attach stream, each way.
pub const STREAM_BUFFER: usize = 64 * 1024;
/// After the stream ends without an end frame: how long the kubelet may take to report how
/// the container ended.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(15);

/// Whether the job may already have been handed to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// It has not: the pod was just claimed or created by this process.
    Fresh(StartMode),
    /// It may have: its log tells.
    Unknown,
}

/// Starts reading the run's record, unless this process already does.
/// `held`: a session already open to the pod (a claimed pool pod's), used instead of a new one.
pub fn start(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Pod,
    delivery: Delivery,
    held: Option<AttachedProcess>,
) {
    let uid = run.uid().unwrap_or_default();
    if !claim_session(ctx, &uid) {
        return;
    }
    let ctx = ctx.clone();
    let run = run.clone();
    tokio::spawn(async move {
        if let Err(e) = read(&ctx, &run, &pod, delivery, held).await {
            tracing::warn!(run = %run.name_any(), error = %e, "reading the run's record; the reconcile will resume it");
        }
        ctx.sessions.lock().expect("lock").remove(&uid);
        let _ = ctx.wake.unbounded_send(ObjectRef::from_obj(&run));
    });
}

/// What reading the record came to.
struct Observed {
    /// The run as the Running status write left it (fresher than the cache).
    run: Option<CodeRun>,
    record: Result<Record, ParseError>,
    /// The end frame arrived (nothing of the record is missing).
    complete: bool,
    /// The job could not be handed over.
    delivery_failed: Option<String>,
}

async fn read(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: &Pod,
    delivery: Delivery,
    held: Option<AttachedProcess>,
) -> Result<(), Error> {
    let limits = ctx.limits(run);
    let ns = pod.namespace().unwrap_or_default();
    let pods = ctx.pods_api(&ns);
    let name = pod.name_any();
    let deadline = Instant::now()
        + Duration::from_millis(limits.timeout_ms)
        + Duration::from_secs(ctx.cfg.deadline_slack_seconds + 60);
    let mode = match delivery {
        Delivery::Fresh(mode) => mode,
        Delivery::Unknown if crate::pool::is_pool_pod_name(pod) => StartMode::Warm,
        Delivery::Unknown => StartMode::Cold,
    };
    let fresh = matches!(delivery, Delivery::Fresh(_))
        || ctx
            .fresh_pods
            .lock()
            .expect("lock")
            .remove(&pod.uid().unwrap_or_default());

    let observed = if fresh && !ended(pod) {
        deliver(ctx, run, &pods, &name, &limits, mode, deadline, held).await?
    } else {
        let so_far = read_log(&pods, &name, false).await.unwrap_or_default();
        let mut probe = Decoder::events_only(&limits);
        let started = probe
            .push(&so_far)
            .map(|_| probe.record().started)
            .unwrap_or(true);
        if started || ended(pod) {
            follow_log(&pods, &name, &limits, deadline).await
        } else {
            deliver(ctx, run, &pods, &name, &limits, mode, deadline, held).await?
        }
    };

    // Without the end frame, the kubelet's word on how the container ended completes it.
    let (terminated, pod_reason, observed) = if observed.complete {
        (None, None, observed)
    } else {
        let (terminated, pod_reason) = wait_for_exit(&pods, &name).await;
        // The log holds everything the container wrote: read it whole once more.
        let whole = read_log(&pods, &name, false)
            .await
            .ok()
            .map(|log| runner_protocol::parse_record(&log, &limits));
        let observed = match whole {
            Some(Ok(rec))
                if rec.complete || observed.record.as_ref().map_or(true, |r| r.exit.is_none()) =>
            {
                Observed {
                    complete: rec.complete,
                    record: Ok(rec),
                    ..observed
                }
            }
            _ => observed,
        };
        (terminated, pod_reason, observed)
    };

    // The freshest view of the run: what the Running write returned, unless the cache has
    // since seen a cancel.
    let cached = ctx
        .runs
        .get(&ObjectRef::from_obj(run))
        .map(|r| (*r).clone());
    let latest = match (observed.run.clone(), cached) {
        (Some(written), Some(cached)) if !cached.cancel_requested() => written,
        (_, Some(cached)) => cached,
        (Some(written), None) => written,
        (None, None) => run.clone(),
    };
    let (record, outcome) = match (observed.delivery_failed, observed.record) {
        (Some(why), _) => (None, Outcome::ended(Reason::JobDeliveryFailed, why)),
        (None, Err(e)) => (
            None,
            Outcome::ended(Reason::InvalidRunnerOutput, e.to_string()),
        ),
        (None, Ok(rec)) => {
            let outcome = outcome::decide(
                Some(&rec),
                terminated.as_ref(),
                pod_reason.as_deref(),
                latest.cancel_requested(),
            );
            (Some(rec), outcome)
        }
    };
    finish::from_record(ctx, &latest, Some(pod), record.as_ref(), outcome).await
}

fn ended(pod: &Pod) -> bool {
    matches!(
        outcome::progress(pod, 0, u64::MAX),
        outcome::PodProgress::Finished { .. }
    )
}

/// Attaches to the pod (or uses the session held open to it), hands it the job and reads the
/// record from the attach stream; the Running status is written while the program runs.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pods: &Api<Pod>,
    name: &str,
    limits: &EffectiveLimits,
    mode: StartMode,
    deadline: Instant,
    held: Option<AttachedProcess>,
) -> Result<Observed, Error> {
    let tenant = ctx.tenant(run);
    let readable = ctx.is_rest_run(run).then_some(tenant.as_str());
    let inputs = match inputs::resolve(
        &ctx.store,
        run,
        limits,
        readable,
        ctx.maxima.max_input_bytes,
    )
    .await
    {
        Ok(inputs) => inputs,
        Err(refusal) => {
            return Ok(Observed {
                record: Ok(Record::default()),
                complete: true,
                delivery_failed: Some(refusal.message),
                run: None,
            });
        }
    };
    let params = crate::held::params(STREAM_BUFFER);
    let mut held = held;
    let mut attempt = 0;
    let mut attached = loop {
        if let Some(session) = held.take() {
            break session;
        }
        match pods.attach(name, &params).await {
            Ok(a) => break a,
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(pod = name, error = %e, "attaching; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                return Ok(Observed {
                    record: Ok(Record::default()),
                    complete: true,
                    delivery_failed: Some(format!("could not attach to the runner pod: {e}")),
                    run: None,
                });
            }
        }
    };
    let (Some(mut stdin), Some(mut stdout)) = (attached.stdin(), attached.stdout()) else {
        return Ok(Observed {
            record: Ok(Record::default()),
            complete: true,
            delivery_failed: Some("the attach stream has no stdin or stdout".into()),
            run: None,
        });
    };
    // The wrapper writes nothing before it has the whole job, so the write cannot wait on
    // unread output.
    if let Err(e) = inputs.write(&ctx.store, &mut stdin).await {
        return Ok(Observed {
            record: Ok(Record::default()),
            complete: true,
            delivery_failed: Some(format!("the job could not be written to the runner: {e}")),
            run: None,
        });
    }
    ctx.publish(
        run,
        kube::runtime::events::EventType::Normal,
        "Started",
        "Run",
        format!("the job was handed to {name}; the program runs"),
    );
    let applied = ctx.isolation().unwrap_or_default();
    let pod_name = name.to_string();
    let generation = run.metadata.generation;
    let running = finish::write_status(ctx, run, |s| {
        status::running(s, &pod_name, mode, &applied, generation)
    });
    let reading = async {
        let mut decoder = Decoder::new(limits);
        let mut buf = vec![0u8; STREAM_BUFFER];
        let mut complete = false;
        loop {
            let n = tokio::select! {
                n = stdout.read(&mut buf) => n,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => match decoder.push(&buf[..n]) {
                    Ok(events) if events.contains(&Event::End) => {
                        complete = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        (decoder.finish(), complete)
    };
    let (written, (record, complete)) = tokio::join!(running, reading);
    let written = written
        .map_err(|e| tracing::warn!(error = %e, "writing the Running status"))
        .ok();
    // Holding stdin open until now keeps the stream whole; dropping it ends the session.
    drop(stdin);
    drop(attached);
    Ok(Observed {
        run: written,
        record,
        complete,
        delivery_failed: None,
    })
}

/// Follows the container's log from its start until the end frame or the log's end.
async fn follow_log(
    pods: &Api<Pod>,
    name: &str,
    limits: &EffectiveLimits,
    deadline: Instant,
) -> Observed {
    let params = LogParams {
        container: Some(RUNNER_CONTAINER.to_string()),
        follow: true,
        limit_bytes: Some(MAX_LOG_BYTES),
        ..Default::default()
    };
    let mut decoder = Decoder::new(limits);
    let mut complete = false;
    match pods.log_stream(name, &params).await {
        Ok(mut stream) => loop {
            let chunk = tokio::select! {
                c = stream.fill_buf() => c.map(|b| b.to_vec()),
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match chunk {
                Ok(bytes) if bytes.is_empty() => break,
                Ok(bytes) => {
                    stream.consume_unpin(bytes.len());
                    match decoder.push(&bytes) {
                        Ok(events) if events.contains(&Event::End) => {
                            complete = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        },
        Err(e) => tracing::warn!(pod = name, error = %e, "following the runner's log"),
    }
    Observed {
        run: None,
        record: decoder.finish(),
        complete,
        delivery_failed: None,
    }
}

/// The runner container's log so far (bounded).
async fn read_log(pods: &Api<Pod>, name: &str, follow: bool) -> Result<Vec<u8>, kube::Error> {
    let params = LogParams {
        container: Some(RUNNER_CONTAINER.to_string()),
        follow,
        limit_bytes: Some(MAX_LOG_BYTES),
        ..Default::default()
    };
    let mut stream = pods.log_stream(name, &params).await?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))?;
    Ok(buf)
}

/// Waits (boundedly) for the kubelet to report how the runner container ended.
async fn wait_for_exit(
    pods: &Api<Pod>,
    name: &str,
) -> (Option<ContainerStateTerminated>, Option<String>) {
    let until = Instant::now() + EXIT_REPORT_WAIT;
    loop {
        if let Ok(Some(pod)) = pods.get_opt(name).await
            && let outcome::PodProgress::Finished {
                terminated,
                pod_reason,
            } = outcome::progress(&pod, 0, u64::MAX)
        {
            return (terminated, pod_reason);
        }
        if Instant::now() >= until {
            return (None, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
