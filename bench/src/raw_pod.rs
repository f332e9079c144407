//! The baseline: a plain pod from the same runner image running the same program, created
//! and read back through the Kubernetes API, with none of the platform in between.
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

pub const PYTHON_IMAGE: &str = "localhost/codeinterp/runner-python:dev";
const WITHIN: Duration = Duration::from_secs(180);

/// A pod that runs `python3 -c 'print(1+1)'` once.
pub fn python_print(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"codeinterp.dev/bench": "raw"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": PYTHON_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", "print(1+1)"],
            }],
        },
    })
}

/// Creates the pod, waits for its container to end and reads its log; the time that took.
///
/// It waits for the container's terminated state, as the operator does, not for the pod's
/// phase: the kubelet marks the phase Succeeded only after tearing the pod down, about a
/// second later, which would flatter the platform.
pub async fn run_python_print(pods: &Api<Pod>, name: &str) -> anyhow::Result<Duration> {
    run_manifest(pods, name, python_print(name)).await
}

/// The same for a pod of `python_print` changed by the caller (e.g. given requests).
pub async fn run_manifest(
    pods: &Api<Pod>,
    name: &str,
    manifest: serde_json::Value,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    pods.create(&PostParams::default(), &testkit::pod(manifest))
        .await?;
    let ended = tokio::time::timeout(WITHIN, await_condition(pods.clone(), name, container_ended))
        .await
        .with_context(|| format!("raw pod {name} did not end within {WITHIN:?}"))??
        .context("raw pod disappeared")?;
    let log = testkit::pod_log(pods, name).await?;
    let took = started.elapsed();
    let exit = terminated(&ended).map(|t| t.exit_code);
    if exit != Some(0) || log != "2\n" {
        bail!("raw pod {name} ended with exit code {exit:?} and log {log:?}");
    }
    Ok(took)
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

fn container_ended(pod: Option<&Pod>) -> bool {
    pod.is_some_and(|p| {
        terminated(p).is_some()
            || p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Failed" || phase == "Succeeded")
    })
}

/// Deletes a finished pod without waiting (the operator does the same with runner pods).
pub fn delete_in_background(pods: &Api<Pod>, name: &str) {
    let (pods, name) = (pods.clone(), name.to_string());
    tokio::spawn(async move {
        let _ = pods
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::background()
                },
            )
            .await;
    });
}
