//! A run in a container that ends while no operator leads (the leader died and the next has
//! not attached yet): the container never runs it a second time, and the run says that its
//! record was lost. Alone in its file: the operator is stopped for a few seconds, which
//! every other test running beside it would feel.
use std::time::Duration;

use codeinterp_crds::{CodeContainer, CodeRun, Language, Phase, Reason};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use testkit::*;

const WITHIN: Duration = Duration::from_secs(120);
const OPERATOR: &str = "codeinterp-operator";

async fn scale_operator(client: &Client, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let patch = json!({"spec": {"replicas": replicas}});
    deployments
        .patch_scale(OPERATOR, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Stops every operator replica at once: none has time to read anything more.
async fn stop_operator(client: &Client) {
    scale_operator(client, 0).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let selector = ListParams::default().labels("app.kubernetes.io/component=operator");
    pods.delete_collection(&now, &selector).await.unwrap();
}

/// Starts the operator's two replicas again and waits until both are ready.
async fn start_operator(client: &Client) {
    scale_operator(client, 2).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let ready = eventually_async(Duration::from_secs(120), || async {
        deployments
            .get(OPERATOR)
            .await
            .ok()
            .and_then(|d| d.status?.ready_replicas)
            == Some(2)
    })
    .await;
    assert!(ready, "the operator did not come back");
}

async fn run_in(ns: &TestNamespace, container: &str, code: &str) -> CodeRun {
    let mut s = spec(Language::Python, code);
    s.container = Some(container.to_string());
    run_to_end(&ns.runs(), s, WITHIN).await.unwrap()
}

fn out(run: &CodeRun) -> String {
    let st = run.status.as_ref().unwrap();
    st.stdout_preview.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_run_that_ends_while_no_operator_leads_is_never_run_twice() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "ctr-takeover").await;
    let name = format!("box-{}", random_suffix());
    let c: CodeContainer = serde_json::from_value(json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
        "metadata": {"name": name},
        "spec": {"memoryLimit": "1g", "idleMinutes": 20},
    }))
    .unwrap();
    let containers: Api<CodeContainer> = Api::namespaced(client.clone(), &ns.name);
    containers.create(&PostParams::default(), &c).await.unwrap();
    let first = run_in(&ns, &name, "n = 1\nprint(n)").await;
    assert_eq!(out(&first), "1\n", "{:?}", first.status);

    let mut s = spec(
        Language::Python,
        "import time\ntime.sleep(1)\nn += 1\nprint(n)",
    );
    s.container = Some(name.clone());
    let flight = format!("flight-{}", random_suffix());
    ns.runs()
        .create(&PostParams::default(), &CodeRun::new(&flight, s))
        .await
        .unwrap();
    wait_phase(&ns.runs(), &flight, Phase::Running).await;
    stop_operator(&client).await;
    // The run ends meanwhile; its record goes out on a line no one reads.
    tokio::time::sleep(Duration::from_secs(5)).await;
    start_operator(&client).await;
    let flown = wait_finished(&ns.runs(), &flight, WITHIN).await.unwrap();
    let st = flown.status.clone().unwrap();
    assert_eq!(
        (st.phase, st.reason),
        (Some(Phase::Failed), Some(Reason::RecordLost)),
        "{st:?}"
    );
    assert!(st.message.unwrap_or_default().contains("it ran once"));
    // It ran once: the next run sees what that one left.
    let next = run_in(&ns, &name, "n += 1\nprint(n)").await;
    assert_eq!(out(&next), "3\n", "{:?}", next.status);
}
