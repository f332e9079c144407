//! Containers: a CodeContainer is a pod whose interpreters and folder (`/mnt/data`) live
//! between runs. Its reconcile decides (see [`decide`]) whether it is served, ended or
//! collected; one task per container ([`serve`]) holds its line (an attach session) and
//! does its work in order: file operations, then the runs that name it.
//!
//! A container's pod is a second kind of pod this operator owns beside a run's: its
//! controller is the CodeContainer, it has no deadline (the operator ends it when it idles),
//! and it takes no room in the run queue (a tenant's containers are capped at the door).
use std::sync::Arc;

use codeinterp_crds::{CodeContainer, CodeRun, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio::time::Duration;
use tracing::instrument;

use crate::Error;
use crate::context::Context;
use crate::outcome::Outcome;
use crate::pod_spec;

pub mod decide;
pub mod files;
pub mod line;
pub mod run;
pub mod serve;
pub mod status;

use decide::{Facts, Step};

/// The container's pod in the cache: the one this process knows it owns, only if its
/// controller is the container.
pub fn pod_of(ctx: &Context, container: &CodeContainer) -> Option<Arc<Pod>> {
    let uid = container.uid()?;
    let name = ctx.index.container_pod(&uid)?;
    let ns = container.namespace()?;
    ctx.cluster
        .pods
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|p| pod_spec::owned_by_kind(p, "CodeContainer", &uid))
}

#[instrument(skip_all, fields(container = %container.name_any(), ns = container.namespace().unwrap_or_default()))]
pub async fn reconcile(container: Arc<CodeContainer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = container.uid().unwrap_or_default();
    let pod = pod_of(&ctx, &container);
    let step = decide::decide(&Facts {
        container: &container,
        pod: pod.as_deref(),
        busy: ctx.index.busy_with(&uid).is_some(),
        now: k8s_openapi::jiff::Timestamp::now().as_second(),
        max_lifetime_secs: ctx.cfg().container_max_lifetime_seconds,
    });
    tracing::debug!(?step, "next step");
    match step {
        Step::Nothing => Ok(Action::await_change()),
        Step::Serve { recheck_in } => {
            serve::start(&ctx, &container);
            // New file operations or runs: the task looks again.
            ctx.index.container_wake(&uid).notify_one();
            Ok(Action::requeue(recheck_in))
        }
        Step::End {
            phase,
            reason,
            message,
        } => {
            tracing::info!(%reason, %message, "the container ends");
            status::ended(&ctx, &container, phase, reason, &message).await;
            ctx.index.container_wake(&uid).notify_one();
            if let Some(pod) = pod {
                ctx.tidy.remove(&ctx.index, &pod);
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Step::Collect {
            remove_pod,
            delete,
            recheck_in,
        } => {
            if let Some(pod) = pod.filter(|_| remove_pod) {
                ctx.tidy.remove(&ctx.index, &pod);
            }
            fail_waiting(&ctx, &container).await;
            if delete {
                let api: Api<CodeContainer> = Api::namespaced(
                    ctx.api.run.clone(),
                    &container.namespace().unwrap_or_default(),
                );
                match api
                    .delete(&container.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(Action::await_change());
            }
            Ok(Action::requeue(recheck_in))
        }
    }
}

/// Runs that still wait for an ended container cannot run: they fail.
async fn fail_waiting(ctx: &Context, container: &CodeContainer) {
    let runs: Vec<Arc<CodeRun>> = ctx
        .cluster
        .runs
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace() == container.namespace()
                && r.spec.container.as_deref() == Some(container.name_any().as_str())
                && !r.is_finished()
        })
        .collect();
    for run in runs {
        ctx.wake(ObjectRef::from_obj(&*run));
    }
}

pub fn error_policy(container: Arc<CodeContainer>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(container = %container.name_any(), %error, "container reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// What a run that names a container does next (its own reconcile's step): it fails if the
/// container is not there for it (none of that name for its tenant, or ended), a cancel is
/// passed on, and otherwise the container's task is woken to run it in turn.
pub async fn step_for_run(ctx: &Arc<Context>, run: &CodeRun) -> Result<Action, Error> {
    let name = run.spec.container.clone().unwrap_or_default();
    let ns = run.namespace().unwrap_or_default();
    let found = ctx
        .cluster
        .containers
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|c| c.tenant_in(ctx.settings.sandbox_namespace()) == ctx.tenant(run));
    let fail = |reason, message: String| Outcome::ended(reason, message);
    let Some(container) = found else {
        if may_yet_show(ctx, run, &ns, &name).await? {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let outcome = fail(
            codeinterp_crds::Reason::ContainerNotFound,
            format!("no container {name:?}"),
        );
        crate::steps::finish::end(ctx, run, None, outcome).await?;
        return Ok(Action::await_change());
    };
    let uid = container.uid().unwrap_or_default();
    let run_uid = run.uid().unwrap_or_default();
    let busy_with_it = ctx.index.busy_with(&uid).as_deref() == Some(run_uid.as_str());
    if container.is_ended() && !busy_with_it {
        let outcome = fail(
            codeinterp_crds::Reason::ContainerExpired,
            "Container is expired.".into(),
        );
        crate::steps::finish::end(ctx, run, None, outcome).await?;
        return Ok(Action::await_change());
    }
    if run.cancel_requested() {
        if busy_with_it {
            serve::interrupt(ctx, &container, run);
        } else {
            // Not started: it ends here (the task skips a run that has ended).
            let outcome = fail(
                codeinterp_crds::Reason::Cancelled,
                "cancelled before it started".into(),
            );
            crate::steps::finish::end(ctx, run, None, outcome).await?;
            return Ok(Action::await_change());
        }
    }
    ctx.wake_container(ObjectRef::from_obj(&*container));
    ctx.index.container_wake(&uid).notify_one();
    show_place(ctx, &container, run).await?;
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Whether a container the cache does not show may yet show there, so that a run naming it
/// waits rather than fails: the cache has not finished its first list (a new leader lists
/// runs and containers side by side), the run is younger than the grace (a container made
/// a moment before its run), or the API server has it for this tenant and shard though the
/// watch lags. Only the last costs a read, and only on the way to failing a run.
async fn may_yet_show(ctx: &Context, run: &CodeRun, ns: &str, name: &str) -> Result<bool, Error> {
    use futures::FutureExt;
    let listed = ctx.cluster.containers.wait_until_ready().now_or_never();
    if !matches!(listed, Some(Ok(()))) {
        return Ok(true);
    }
    let age = k8s_openapi::jiff::Timestamp::now().as_second()
        - run.creation_timestamp().map_or(0, |t| t.0.as_second());
    if age < CACHE_GRACE_SECS {
        return Ok(true);
    }
    let api: Api<CodeContainer> = Api::namespaced(ctx.api.run.clone(), ns);
    let live = api.get_opt(name).await?;
    let shard = ctx.cfg().shared.shard.as_deref();
    Ok(live.is_some_and(|c| {
        c.labels()
            .get(codeinterp_crds::SHARD_LABEL)
            .map(String::as_str)
            == shard
            && c.tenant_in(ctx.settings.sandbox_namespace()) == ctx.tenant(run)
    }))
}

/// A run waiting for its container (busy with an earlier run, or not started yet) says so,
/// with its place; a run the container takes at once is not written to.
async fn show_place(ctx: &Context, container: &CodeContainer, run: &CodeRun) -> Result<(), Error> {
    let uid = container.uid().unwrap_or_default();
    let run_uid = run.uid().unwrap_or_default();
    let busy = ctx.index.busy_with(&uid);
    let starting = container.status.as_ref().and_then(|s| s.phase)
        != Some(codeinterp_crds::ContainerPhase::Running);
    if run.phase().is_some_and(|p| p != Phase::Queued)
        || (busy.is_none() && !starting)
        || busy.as_deref() == Some(run_uid.as_str())
    {
        return Ok(());
    }
    let waiting = serve::waiting_runs(ctx, container);
    let Some(i) = waiting
        .iter()
        .filter(|r| r.uid() != busy)
        .position(|r| r.uid().as_deref() == Some(run_uid.as_str()))
    else {
        return Ok(());
    };
    let position = i as u32 + 1;
    let shown = run.status.as_ref().and_then(|s| s.queue_position);
    if run.phase() == Some(Phase::Queued) && shown == Some(position) {
        return Ok(());
    }
    let why = if starting {
        "waiting for its container to start"
    } else {
        "waiting for its container, busy with an earlier run"
    };
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    crate::kube_io::update_status(&api, run, |s| crate::status::queued(s, position, why)).await?;
    Ok(())
}

/// How long a run may name a container the cache does not show yet.
const CACHE_GRACE_SECS: i64 = 10;
