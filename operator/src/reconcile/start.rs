//! Starting a run: its inputs are checked, it asks for room (and waits in line, its place in
//! its status, when there is none), then it claims a warm pod or gets a pod made for it.
use std::sync::Arc;
use std::time::Duration;

use codeinterp_crds::{CodeRun, Phase, Reason, StartMode};
use kube::ResourceExt;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::Error;
use crate::admission::Decision;
use crate::context::Context;
use crate::inputs;
use crate::metrics::LanguageLabels;
use crate::outcome::Outcome;
use crate::pod_spec;
use crate::reconcile::finish;
use crate::session::{self, Delivery};
use crate::status::{self, MANAGER};

pub async fn admit(ctx: &Arc<Context>, run: &CodeRun) -> Result<Action, Error> {
    let limits = ctx.limits(run);
    let tenant = ctx.tenant(run);
    let readable = ctx.is_rest_run(run).then_some(tenant.as_str());
    if let Err(refusal) = inputs::resolve(
        &ctx.store,
        run,
        &limits,
        readable,
        ctx.maxima.max_input_bytes,
    )
    .await
    {
        finish::end(
            ctx,
            run,
            None,
            Outcome::ended(refusal.reason, refusal.message),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let entry = ctx.entry(run);
    let mut decision = ctx.queue.lock().expect("lock").request(entry.clone());
    if matches!(decision, Decision::Queued { .. }) {
        ctx.pump();
        decision = ctx.queue.lock().expect("lock").request(entry);
    }
    match decision {
        Decision::Full => {
            let message = format!(
                "tenant {tenant} already has {} runs waiting",
                ctx.cfg.max_queued_per_tenant
            );
            finish::end(ctx, run, None, Outcome::ended(Reason::QueueFull, message)).await?;
            Ok(Action::await_change())
        }
        Decision::Queued { position } => {
            let status = run.status.clone().unwrap_or_default();
            if status.phase != Some(Phase::Queued) || status.queue_position.is_none() {
                finish::write_status(ctx, run, |s| {
                    status::queued(s, position, "waiting for room in the cluster")
                })
                .await?;
            }
            // Woken when admitted; otherwise checked again at the queue timeout.
            let waited = run
                .creation_timestamp()
                .map(|t| (status::now().0.as_second() - t.0.as_second()).max(0) as u64)
                .unwrap_or(0);
            Ok(Action::requeue(Duration::from_secs(
                ctx.cfg.queue_timeout_seconds.saturating_sub(waited) + 1,
            )))
        }
        Decision::Admitted => start_pod(ctx, run).await,
    }
}

async fn start_pod(ctx: &Arc<Context>, run: &CodeRun) -> Result<Action, Error> {
    ctx.starts.mark();
    let ns = run.namespace().unwrap_or_default();
    let limits = ctx.limits(run);
    ctx.ensure_deny_all(&ns).await?;
    let applied = match ctx.isolation() {
        Ok(applied) => applied,
        Err(msg) => {
            finish::end(
                ctx,
                run,
                None,
                Outcome::ended(Reason::ApparmorUnavailable, msg),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let language = LanguageLabels {
        language: run.spec.language.as_str().into(),
    };
    if let Some(pool) = ctx.pool_for(run, &limits) {
        if let Some((pod, held)) = crate::pool::claim(ctx, run, &limits, pool, &applied).await {
            ctx.metrics.pool_hits.get_or_create(&language).inc();
            ctx.publish(
                run,
                EventType::Normal,
                "PodClaimed",
                "ClaimPod",
                format!("claimed warm pod {} of {}", pod.name_any(), pool.name()),
            );
            session::start(ctx, run, pod, Delivery::Fresh(StartMode::Warm), Some(held));
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        ctx.metrics.pool_misses.get_or_create(&language).inc();
    }
    let pod = pod_spec::cold_pod(run, &limits, &ctx.cfg, &applied);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let uid = run.uid().unwrap_or_default();
    match ctx.pods_api(&ns).create(&params, &pod).await {
        Ok(created) => {
            ctx.created.note(&uid);
            ctx.fresh_pods
                .lock()
                .expect("lock")
                .insert(created.uid().unwrap_or_default());
            ctx.publish(
                run,
                EventType::Normal,
                "PodCreated",
                "CreatePod",
                format!(
                    "runner pod created (seccomp {}, apparmor {}, network policy {})",
                    applied.seccomp, applied.apparmor, applied.network_policy
                ),
            );
            Ok(Action::requeue(Duration::from_secs(
                ctx.cfg.start_timeout_seconds,
            )))
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let existing = ctx.pods_api(&ns).get_opt(&run.name_any()).await?;
            if existing
                .as_ref()
                .is_some_and(|p| pod_spec::owned_by(p, &uid))
            {
                // Made by this run before (a restart between the create and now).
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            let message = format!(
                "a pod named {:?} already exists in {ns} and is not this run's; nothing was touched",
                run.name_any()
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
        Err(e) if crate::refused_for_good(&e) => {
            let message = format!("the cluster refused the runner pod: {e}");
            finish::end(ctx, run, None, Outcome::ended(Reason::PodRejected, message)).await?;
            Ok(Action::await_change())
        }
        Err(e) => Err(e.into()),
    }
}

/// Refreshes the place in line shown in waiting runs' statuses. A place is rewritten only
/// when it has moved a good deal (halved, or under ten), so a line of thousands costs a few
/// writes per run, not one per run admitted ahead of it.
pub async fn refresh_positions(ctx: &Arc<Context>) {
    let positions = ctx.queue.lock().expect("lock").positions();
    let mut writes = 0;
    for (key, position) in positions {
        if writes >= 50 {
            break;
        }
        let Some(run) = ctx.runs.get(&key) else {
            continue;
        };
        let Some(shown) = run.status.as_ref().and_then(|s| s.queue_position) else {
            continue;
        };
        let moved = position != shown && (position <= shown / 2 || position < 10);
        if !moved || run.phase() != Some(Phase::Queued) {
            continue;
        }
        writes += 1;
        // Guarded by the cached run's resourceVersion: a run that changed meanwhile (it was
        // admitted) is left alone.
        let api = ctx.runs_api(&run.namespace().unwrap_or_default());
        let status = status::queued(
            run.status.clone().unwrap_or_default(),
            position,
            "waiting for room in the cluster",
        );
        if let Err(e) = status::write(&api, &run, &status).await
            && !matches!(e, Error::Conflict)
        {
            tracing::debug!(run = %ObjectRef::from_obj(run.as_ref()), error = %e, "refreshing a place in line");
        }
    }
}
