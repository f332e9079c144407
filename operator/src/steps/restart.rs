//! A run whose job never reached its pod gets a new pod: nothing ran, so running it there is
//! not running it twice. Its status says so first (guarded by its resourceVersion, so two
//! readers never both count a restart), then the old pod is removed; its deletion wakes the
//! run, which is admitted again with the room it holds. After a few tries the run fails.
use codeinterp_crds::{CodeRun, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::Error;
use crate::context::Context;
use crate::kube_io::{delete_by_uid, update_status};
use crate::outcome::Outcome;
use crate::status;
use crate::steps::finish;

/// Pods a run may be given in all before it fails (`job_delivery_failed`).
pub const MAX_RESTARTS: u32 = 3;

pub async fn restart(ctx: &Context, run: &CodeRun, pod: &Pod, why: &str) -> Result<(), Error> {
    let restarts = run.status.as_ref().map_or(0, |s| s.restarts);
    if restarts >= MAX_RESTARTS {
        let message = format!("the job could not be handed to a pod in {restarts} tries: {why}");
        let outcome = Outcome::ended(Reason::JobDeliveryFailed, message);
        return finish::end(ctx, run, Some(pod), outcome).await;
    }
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    let name = pod.name_any();
    let (_, wrote) = update_status(&api, run, |s| status::restarted(s, &name, why)).await?;
    if !wrote {
        // Finished or restarted by someone else meanwhile.
        return Ok(());
    }
    if let Some(uid) = pod.uid() {
        ctx.index.removing(&uid);
    }
    let pods = ctx.pods_api(&pod.namespace().unwrap_or_default());
    delete_by_uid(&pods, &name, pod.uid(), Some(0)).await?;
    tracing::info!(pod = %name, why, "the job never reached the pod; the run gets a new one");
    ctx.record(
        run,
        EventType::Warning,
        "PodReplaced",
        "Restart",
        &format!("{name}: {why}; a new pod is made (nothing ran)"),
    );
    Ok(())
}
