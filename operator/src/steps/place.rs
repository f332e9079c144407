//! An admitted run gets its pod: the namespace's deny-all policy first, then an idle pod of
//! a warm pool it fits (claimed, and handed the job at once over the session held open to
//! it), or a pod made for it (handed the job once it runs).
use std::sync::Arc;

use codeinterp_crds::{Applied, CodeRun, Reason, StartMode};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::Error;
use crate::context::{Context, RECHECK};
use crate::metrics::LanguageLabels;
use crate::outcome::Outcome;
use crate::pod_spec;
use crate::status::MANAGER;
use crate::steps::{finish, read};

pub async fn place(ctx: &Arc<Context>, run: &CodeRun) -> Result<Action, Error> {
    ctx.churn.mark();
    let ns = run.namespace().unwrap_or_default();
    ctx.ensure_deny_all(&ns).await?;
    let applied = match ctx.isolation() {
        Ok(applied) => applied,
        Err(msg) => {
            let outcome = Outcome::ended(Reason::ApparmorUnavailable, msg);
            finish::end(ctx, run, None, outcome).await?;
            return Ok(Action::await_change());
        }
    };
    if claim_warm(ctx, run, &applied).await {
        return Ok(Action::requeue(RECHECK));
    }
    create_cold(ctx, run, &applied).await
}

/// Claims an idle pod of the run's pool, if it has one, and starts handing it the job.
async fn claim_warm(ctx: &Arc<Context>, run: &CodeRun, applied: &Applied) -> bool {
    let limits = ctx.limits(run);
    let Some(pool) = ctx.pool_for(run, &limits) else {
        return false;
    };
    let language = LanguageLabels {
        language: run.spec.language.as_str().into(),
    };
    let claimed = crate::pool::claim(ctx, run, &limits, &pool, applied).await;
    ctx.index.pool_arrival(&pool.name, claimed.is_some());
    let Some((pod, session)) = claimed else {
        ctx.metrics.pool.misses.get_or_create(&language).inc();
        return false;
    };
    ctx.metrics.pool.hits.get_or_create(&language).inc();
    ctx.index
        .placed(&run.uid().unwrap_or_default(), &pod.name_any());
    ctx.record(
        run,
        EventType::Normal,
        "PodClaimed",
        "ClaimPod",
        &format!("claimed warm pod {} of {}", pod.name_any(), pool.name()),
    );
    read::start(ctx, run, pod, read::How::Fresh(Some(session)));
    true
}

/// Creates a pod for the run; the run is handed its job when the pod runs (the pod's
/// arrival in the cache wakes it).
async fn create_cold(
    ctx: &Arc<Context>,
    run: &CodeRun,
    applied: &Applied,
) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    let pod = pod_spec::cold_pod(run, &ctx.limits(run), ctx.cfg(), applied);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let uid = run.uid().unwrap_or_default();
    match ctx.pods_api(&ns).create(&params, &pod).await {
        Ok(created) => {
            ctx.index.placed(&uid, &created.name_any());
            let note = format!(
                "runner pod created (seccomp {}, apparmor {}, network policy {})",
                applied.seccomp, applied.apparmor, applied.network_policy
            );
            ctx.record(run, EventType::Normal, "PodCreated", "CreatePod", &note);
            Ok(Action::requeue(tokio::time::Duration::from_secs(
                ctx.cfg().start_timeout_seconds,
            )))
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => name_taken(ctx, run, &pod).await,
        Err(e) if crate::refused_for_good(&e) => {
            let message = format!("the cluster refused the runner pod: {e}");
            finish::end(ctx, run, None, Outcome::ended(Reason::PodRejected, message)).await?;
            Ok(Action::await_change())
        }
        Err(e) => Err(e.into()),
    }
}

/// A pod of the run's name exists: the run's own (made before a restart, or being replaced),
/// to wait for; or someone else's, which is never touched.
async fn name_taken(ctx: &Arc<Context>, run: &CodeRun, pod: &Pod) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    let existing = ctx.pods_api(&ns).get_opt(&pod.name_any()).await?;
    if existing
        .as_ref()
        .is_some_and(|p| pod_spec::owned_by(p, &uid))
    {
        return Ok(Action::requeue(tokio::time::Duration::from_secs(1)));
    }
    let message = format!(
        "a pod named {:?} already exists in {ns} and is not this run's; nothing was touched",
        pod.name_any()
    );
    finish::end(
        ctx,
        run,
        None,
        Outcome::ended(Reason::NameConflict, message),
    )
    .await?;
    Ok(Action::await_change())
}

/// How a pod came to the run (for its status).
pub fn start_mode(pod: &Pod) -> StartMode {
    if Context::is_pool_pod(pod) {
        StartMode::Warm
    } else {
        StartMode::Cold
    }
}
