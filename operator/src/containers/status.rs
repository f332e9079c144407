//! Writing a container's status: merge patches of the fields each step owns (its phase and
//! pod, its activity, how far its file operations got), so steps never undo each other.
use codeinterp_crds::{CodeContainer, ContainerPhase, FileOpError};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::context::Context;
use crate::status::{self, MANAGER};

async fn patch(ctx: &Context, container: &CodeContainer, status: Value) {
    let api: Api<CodeContainer> = Api::namespaced(
        ctx.api.run.clone(),
        &container.namespace().unwrap_or_default(),
    );
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let body = json!({ "status": status });
    if let Err(e) = api
        .patch_status(&container.name_any(), &params, &Patch::Merge(&body))
        .await
    {
        tracing::warn!(container = %container.name_any(), error = %e, "writing a container's status");
    }
}

/// The container runs in `pod`.
pub async fn running(ctx: &Context, container: &CodeContainer, pod: &str) {
    let shown = container.status.as_ref();
    if shown.and_then(|s| s.phase) == Some(ContainerPhase::Running)
        && shown.and_then(|s| s.pod_name.as_deref()) == Some(pod)
    {
        return;
    }
    patch(ctx, container, json!({"phase": "Running", "podName": pod})).await;
}

/// A run ended in it: it was active now.
pub async fn ran(ctx: &Context, container: &CodeContainer) {
    let runs = container.status.as_ref().map_or(0, |s| s.runs) + 1;
    patch(
        ctx,
        container,
        json!({"lastActiveAt": status::now(), "runs": runs}),
    )
    .await;
}

/// A file operation was carried out (or failed with `error`).
pub async fn file_op_done(
    ctx: &Context,
    container: &CodeContainer,
    seq: u64,
    error: Option<String>,
) {
    let mut body = json!({"fileOpsDone": seq, "lastActiveAt": status::now()});
    if let Some(message) = error {
        let errors: Vec<FileOpError> = container
            .status
            .as_ref()
            .map(|s| s.file_op_errors.clone())
            .unwrap_or_default();
        body["fileOpErrors"] = json!(super::files::with_error(errors, seq, message));
    }
    patch(ctx, container, body).await;
}

/// It ended.
pub async fn ended(
    ctx: &Context,
    container: &CodeContainer,
    phase: ContainerPhase,
    reason: &str,
    message: &str,
) {
    let body = json!({
        "phase": phase,
        "reason": reason,
        "message": message,
        "lastActiveAt": status::now(),
    });
    patch(ctx, container, body).await;
}

/// It cannot run.
pub async fn failed(ctx: &Context, container: &CodeContainer, reason: &str, message: &str) {
    ended(ctx, container, ContainerPhase::Failed, reason, message).await;
}
