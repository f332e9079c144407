//! Cancelling a run. Before its program started: end it, removing its pod. While its program
//! runs: lower the pod's deadline, so the kubelet stops the container (SIGTERM to the
//! wrapper, which kills the program and still writes what it printed) and keeps the pod, so
//! its record can be read to the end.
use std::sync::Arc;

use codeinterp_crds::{CodeRun, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use tokio::time::Duration;

use crate::Error;
use crate::context::Context;
use crate::outcome::Outcome;
use crate::steps::{finish, read};

pub async fn unstarted(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Option<&Pod>,
) -> Result<Action, Error> {
    let outcome = Outcome::ended(Reason::Cancelled, "cancelled before the program started");
    finish::end(ctx, run, pod, outcome).await?;
    Ok(Action::await_change())
}

pub async fn stop(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: &Pod,
    read: bool,
) -> Result<Action, Error> {
    let deadline = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    if deadline != Some(1) {
        let patch = json!({"spec": {"activeDeadlineSeconds": 1}});
        ctx.pods_api(&pod.namespace().unwrap_or_default())
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await?;
        ctx.record(
            run,
            EventType::Normal,
            "Cancelling",
            "Cancel",
            "stopping the program; its output so far is kept",
        );
    }
    if read {
        read::start(ctx, run, pod.clone(), read::How::Resume);
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}
