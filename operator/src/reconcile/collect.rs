//! A finished run: what is left of its pod goes, and after its TTL the run itself (its record
//! stays in object storage).
use std::sync::Arc;
use std::time::Duration;

use codeinterp_crds::CodeRun;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;

use crate::Error;
use crate::context::Context;
use crate::reconcile::finish;

pub async fn collect(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Option<&Pod>,
    delete_run: bool,
    recheck_in: Duration,
) -> Result<Action, Error> {
    if let Some(pod) = pod {
        finish::remove_pod(ctx, pod);
    }
    ctx.queue
        .lock()
        .expect("lock")
        .release(&run.uid().unwrap_or_default());
    if !delete_run {
        return Ok(Action::requeue(recheck_in));
    }
    tracing::info!("deleting finished run after its TTL; its record stays in object storage");
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: run.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match ctx
        .tidy_runs(&run.namespace().unwrap_or_default())
        .delete(&run.name_any(), &dp)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
