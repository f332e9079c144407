//! The reconciler: the facts about a run go to [`decide`](crate::decide::decide), which
//! chooses the next step; each step is a module of its own. Everything needed to resume lives
//! in the API (the run's status, its pod, the pod's log), so a new leader neither loses nor
//! repeats a run.
use std::sync::Arc;

use codeinterp_crds::CodeRun;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tokio::time::Duration;
use tracing::{instrument, warn};

use crate::Error;
use crate::context::Context;
use crate::decide::Step;
use crate::metrics::ErrorLabels;
use crate::outcome::Outcome;

pub mod admit;
pub mod cancel;
pub mod collect;
pub mod deliver;
pub mod finish;
pub mod place;
pub mod read;
pub mod restart;

#[instrument(skip_all, fields(run = %run.name_any(), ns = run.namespace().unwrap_or_default()))]
pub async fn reconcile(run: Arc<CodeRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let step = ctx.next_step(&run);
    tracing::debug!(?step, "next step");
    match step {
        Step::Nothing => Ok(Action::await_change()),
        Step::Wait(d) => Ok(Action::requeue(d)),
        Step::Collect {
            pod,
            delete_run,
            recheck_in,
        } => collect::collect(&ctx, &run, pod.as_ref(), delete_run, recheck_in).await,
        Step::Admit => admit::admit(&ctx, &run).await,
        Step::Cancel { pod } => cancel::unstarted(&ctx, &run, pod.as_ref()).await,
        Step::Stop { pod, read } => cancel::stop(&ctx, &run, &pod, read).await,
        Step::Fail {
            pod,
            reason,
            message,
        } => {
            warn!(%reason, %message, "the run cannot finish");
            finish::end(&ctx, &run, pod.as_ref(), Outcome::ended(reason, message)).await?;
            Ok(Action::await_change())
        }
        Step::Read { pod, fresh } => {
            let how = if fresh {
                read::How::Fresh(None)
            } else {
                read::How::Resume
            };
            read::start(&ctx, &run, pod, how);
            Ok(Action::requeue(crate::context::RECHECK))
        }
        Step::InContainer => crate::containers::step_for_run(&ctx, &run).await,
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

#[cfg(test)]
mod tests;
