//! The CodeRun reconciler: find what is known about the run, let [`decide`] choose the next
//! step, take it. Each step is a short module. Everything needed to resume lives in the API
//! (the run's status, its pod, the pod's log), so a new leader neither loses nor repeats a run.
use std::sync::Arc;
use std::time::Duration;

use codeinterp_crds::CodeRun;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{instrument, warn};

use crate::Error;
use crate::context::Context;
use crate::decide::{Step, Timing, decide};
use crate::metrics::ErrorLabels;

pub mod cancel;
pub mod collect;
pub mod finish;
pub mod start;

pub fn timing(ctx: &Context) -> Timing {
    Timing {
        start_timeout_secs: ctx.cfg.start_timeout_seconds,
        queue_timeout_secs: ctx.cfg.queue_timeout_seconds,
        ttl_secs: ctx.cfg.run_ttl_seconds,
    }
}

#[instrument(skip_all, fields(run = %run.name_any(), ns = run.namespace().unwrap_or_default()))]
pub async fn reconcile(run: Arc<CodeRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !run.is_finished() && ctx.finished.contains(&run.uid().unwrap_or_default()) {
        // Finished a moment ago; the cache will bring the final status, and a reconcile.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let pod = ctx.find_pod(&run);
    if pod.is_none() && ctx.created.contains(&run.uid().unwrap_or_default()) {
        // Created a moment ago; its arrival in the cache wakes this run.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let reading = ctx.is_reading(&run.uid().unwrap_or_default());
    let step = decide(
        &run,
        pod.as_ref(),
        reading,
        Timestamp::now().as_second(),
        timing(&ctx),
    );
    tracing::debug!(?step, "next step");
    match step {
        Step::Nothing => Ok(Action::await_change()),
        Step::Wait(d) => Ok(Action::requeue(d)),
        Step::Collect {
            delete_run,
            recheck_in,
        } => collect::collect(&ctx, &run, pod.as_ref(), delete_run, recheck_in).await,
        Step::Admit => start::admit(&ctx, &run).await,
        Step::CancelUnstarted => cancel::unstarted(&ctx, &run, pod.as_ref()).await,
        Step::StopProgram { also_read } => cancel::stop(&ctx, &run, pod.as_ref(), also_read).await,
        Step::Fail { reason, message } => {
            warn!(%reason, %message, "the run cannot finish");
            let outcome = crate::outcome::Outcome::ended(reason, message);
            finish::end(&ctx, &run, pod.as_ref(), outcome).await?;
            Ok(Action::await_change())
        }
        Step::Read => {
            if let Some(pod) = pod {
                crate::session::start(&ctx, &run, pod, crate::session::Delivery::Unknown, None);
            }
            Ok(Action::requeue(Duration::from_secs(300)))
        }
    }
}

pub fn error_policy(run: Arc<CodeRun>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: error.metric_label().into(),
        })
        .inc();
    match error {
        // The cache was behind: look again as soon as it catches up.
        Error::Conflict => Action::requeue(Duration::from_millis(200)),
        _ => {
            warn!(run = %run.name_any(), %error, "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}
