//! Reading a run's record, in a task of its own: the job is handed to the pod and the record
//! read from the same stream (a pod this process placed), or the pod's log is followed (a
//! program that started before), or the log alone says the job never arrived; the record
//! then finishes the run, or gives it a new pod. The choices are the tables of
//! [`crate::reading`]; this module only does what they say.
use std::sync::Arc;

use codeinterp_crds::CodeRun;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use runner_protocol::{Decoder, EffectiveLimits, Follower};
use tokio::time::{Duration, Instant};

use crate::Error;
use crate::context::Context;
use crate::outcome::{self, PodProgress};
use crate::pod_spec;
use crate::reading::{Conclusion, Ending, LogState, Plan, Read, Start, better_of, conclude, plan};
use crate::steps::deliver::{self, Delivered};
use crate::steps::{finish, restart};
use crate::streams::Attached;
use crate::tasks::Kind;

/// After the stream ends without an end frame: how long the kubelet may take to report how
/// the container ended.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(15);

/// How long a read that failed waits before the reconcile looks again.
const READ_RETRY: Duration = Duration::from_secs(2);

/// How reading begins.
pub enum How {
    /// This process placed the pod and has not handed it the job; with the session held
    /// open to it, if it has one (a claimed pool pod).
    Fresh(Option<Attached>),
    /// Anything else: the pod's log tells where it is.
    Resume,
}

/// Starts reading the run's record in a task, unless one reads it already.
pub fn start(ctx: &Arc<Context>, run: &CodeRun, pod: Pod, how: How) {
    let uid = run.uid().unwrap_or_default();
    if !ctx.index.begin_reading(&uid, &pod.name_any()) {
        return;
    }
    let name = format!(
        "reading {}/{}",
        run.namespace().unwrap_or_default(),
        run.name_any()
    );
    let guard = Reading {
        ctx: ctx.clone(),
        uid,
        run: ObjectRef::from_obj(run),
    };
    let (ctx, run) = (ctx.clone(), run.clone());
    ctx.tasks.clone().spawn(name, Kind::Work, async move {
        let _guard = guard;
        if let Err(e) = read(&ctx, &run, &pod, how).await {
            tracing::warn!(run = %run.name_any(), error = %e, "reading the run's record; the reconcile resumes it");
            // Still marked as read meanwhile: an error that holds (a status the API server
            // refuses) is tried again every few seconds, not as fast as the API answers.
            tokio::time::sleep(READ_RETRY).await;
        }
    });
}

/// While a task reads the run. However the task ends (done, an error, a panic), the run is
/// no longer being read and its reconcile is woken to look again.
struct Reading {
    ctx: Arc<Context>,
    uid: String,
    run: ObjectRef<CodeRun>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.ctx.index.end_reading(&self.uid);
        self.ctx.wake(self.run.clone());
    }
}

async fn read(ctx: &Arc<Context>, run: &CodeRun, pod: &Pod, how: How) -> Result<(), Error> {
    let limits = ctx.limits(run);
    let deadline = Instant::now()
        + Duration::from_millis(limits.timeout_ms)
        + Duration::from_secs(ctx.cfg().deadline_slack_seconds + 60);
    let (start, session) = match how {
        How::Fresh(session) => (Start::Fresh, session),
        How::Resume => (Start::Log(probe(ctx, pod, &limits).await), None),
    };
    let plan = plan(start, ended(pod));
    if plan == Plan::Deliver
        && let Some(why) = not_ours(ctx, run, pod, &limits)
    {
        return restart::restart(ctx, run, pod, &why).await;
    }
    let (stream, written) = match plan {
        Plan::Deliver => match deliver::deliver(ctx, run, pod, session, deadline).await? {
            Delivered::Read { read, run } => (*read, run.map(|r| *r)),
            Delivered::NotHanded { why } => return restart::restart(ctx, run, pod, &why).await,
            Delivered::Refused(outcome) => {
                return finish::end(ctx, run, Some(pod), outcome).await;
            }
        },
        Plan::Follow => (from_log(ctx, run, pod, true, deadline).await, None),
        Plan::Conclude => (Read::nothing(), None),
    };
    let (done, ending) = complete(ctx, run, pod, stream).await;
    let latest = latest(ctx, run, written);
    match conclude(done.followed.record, &ending, latest.cancel_requested()) {
        Conclusion::Finish { record, outcome } => {
            let record = record.as_deref();
            finish::from_record(ctx, &latest, Some(pod), record, &done.files, outcome).await
        }
        Conclusion::Restart { why } => restart::restart(ctx, &latest, pod, &why).await,
    }
}

/// Why the pod must not be handed the run's job, if it must not: it is not exactly what this
/// operator would have made it (a pod planted with the run as its owner, where the chart's
/// admission policy is missing). It is replaced, as a pod the job never reached is.
fn not_ours(ctx: &Context, run: &CodeRun, pod: &Pod, limits: &EffectiveLimits) -> Option<String> {
    let differs = match ctx.isolation() {
        Ok(applied) => {
            let pools = ctx.pools();
            pod_spec::run_pod_differences(pod, run, limits, &pools, ctx.cfg(), &applied)
        }
        Err(why) => vec![why],
    };
    if differs.is_empty() {
        return None;
    }
    let why = format!(
        "the pod is not what this operator would create for the run ({}); the job was not handed to it",
        differs.join(", ")
    );
    tracing::warn!(pod = %pod.name_any(), %why, "an untrusted pod");
    Some(why)
}

fn ended(pod: &Pod) -> bool {
    matches!(
        outcome::progress(pod, 0, u64::MAX),
        PodProgress::Finished { .. }
    )
}

/// What the pod's log shows so far.
async fn probe(ctx: &Context, pod: &Pod, limits: &EffectiveLimits) -> LogState {
    let ns = pod.namespace().unwrap_or_default();
    match ctx.streams.log(&ns, &pod.name_any(), false).await {
        Ok(log) => {
            let mut follower = Follower::new(log, Decoder::events_only(limits));
            follower.to_end().await;
            LogState::of(follower.record())
        }
        Err(e) => {
            tracing::warn!(pod = %pod.name_any(), error = %e, "reading the runner's log");
            LogState::Empty
        }
    }
}

/// The record from the container's log (followed while the container runs, when `follow`,
/// until the end frame, its end, or `deadline`), its files stored as they come.
async fn from_log(
    ctx: &Context,
    run: &CodeRun,
    pod: &Pod,
    follow: bool,
    deadline: Instant,
) -> Read {
    let ns = pod.namespace().unwrap_or_default();
    let log = match ctx.streams.log(&ns, &pod.name_any(), follow).await {
        Ok(log) => log,
        Err(e) => {
            tracing::warn!(pod = %pod.name_any(), error = %e, "reading the runner's log");
            return Read::nothing();
        }
    };
    let mut follower = Follower::new(log, Decoder::streaming(&ctx.limits(run)));
    let mut files = crate::artifacts::for_run(ctx, run);
    let reading = async {
        while let Some(event) = follower.next().await {
            files.take(&event).await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, reading).await;
    Read {
        followed: follower.finish(),
        files: files.finish().await,
    }
}

/// Without the end frame, the kubelet's word on how the container ended completes the
/// record, and the log (which holds everything the container wrote) is read whole once more.
async fn complete(ctx: &Context, run: &CodeRun, pod: &Pod, stream: Read) -> (Read, Ending) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let done = |p: Option<&Pod>| p.is_none_or(ended);
    let until = if stream.followed.complete {
        Instant::now()
    } else {
        Instant::now() + EXIT_REPORT_WAIT
    };
    let now = ctx.cluster.wait_for_pod(&ns, &name, until, done).await;
    let ending = match now.as_deref().map(|p| outcome::progress(p, 0, u64::MAX)) {
        Some(PodProgress::Finished {
            terminated,
            pod_reason,
        }) => Ending {
            terminated,
            pod_reason,
        },
        _ => Ending::default(),
    };
    if stream.followed.complete {
        return (stream, ending);
    }
    let whole = from_log(ctx, run, pod, false, Instant::now() + EXIT_REPORT_WAIT).await;
    (better_of(stream, Some(whole)), ending)
}

/// The freshest view of the run: what the Running write returned, unless the cache has since
/// seen a cancel.
fn latest(ctx: &Context, run: &CodeRun, written: Option<CodeRun>) -> CodeRun {
    let cached = ctx
        .cluster
        .runs
        .get(&ObjectRef::from_obj(run))
        .map(|r| (*r).clone());
    match (written, cached) {
        (Some(written), Some(cached)) if !cached.cancel_requested() => written,
        (_, Some(cached)) => cached,
        (Some(written), None) => written,
        (None, None) => run.clone(),
    }
}
