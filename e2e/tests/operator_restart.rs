//! The operator restarting mid-run. In a file of its own: test files run one after another,
//! so no other test sees the operator go away.
use std::time::Duration;

use codeinterp_crds::{CodeRun, Language, Phase};
use kube::api::PostParams;
use testkit::*;

#[tokio::test]
async fn the_operator_restarting_mid_run_neither_loses_nor_repeats_the_run() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-restart").await;
    let runs = ns.runs();
    let mut s = spec(
        Language::Python,
        "import time, os\nprint('once', os.getpid(), flush=True)\ntime.sleep(4)\nprint('done')",
    );
    s.limits.timeout_ms = Some(60_000);
    runs.create(&PostParams::default(), &CodeRun::new("survivor", s))
        .await
        .unwrap();
    wait_phase(&runs, "survivor", Phase::Running).await;

    // The operator runs as the chart's Deployment: kill its pod outright and let the
    // Deployment start another.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let selector = kube::api::ListParams::default().labels("app.kubernetes.io/component=operator");
    let old: Vec<String> = pods
        .list(&selector)
        .await
        .unwrap()
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();
    assert_eq!(old.len(), 1, "one operator pod: {old:?}");
    pods.delete(
        &old[0],
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let replaced = eventually_async(Duration::from_secs(90), || async {
        pods.list(&selector).await.unwrap().items.iter().any(|p| {
            kube::ResourceExt::name_any(p) != old[0]
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
    })
    .await;
    assert!(replaced, "no new operator pod became ready");

    let run = wait_finished(&runs, "survivor", Duration::from_secs(90))
        .await
        .unwrap();
    let st = run.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(Phase::Completed), "{st:?}");
    let out = st.stdout_preview.clone().unwrap_or_default();
    assert_eq!(
        out.matches("once").count(),
        1,
        "the program ran more than once: {out}"
    );
    assert!(out.ends_with("done\n"), "{out}");
    let events = events_for(&client, &ns.name, "survivor").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("PodCreated"))
            .count(),
        1,
        "{events:?}"
    );
}
