//! The active operator replica dying mid-burst. In a file of its own: test files run one
//! after another, so no other test sees the leader go away.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, Language, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use testkit::*;

#[tokio::test]
async fn the_leader_dying_mid_burst_hands_over_within_seconds_and_every_run_runs_once() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-restart").await;
    let runs = ns.runs();
    let mut s = spec(
        Language::Python,
        "import time, os\nprint('once', os.getpid(), flush=True)\ntime.sleep(6)\nprint('done')",
    );
    s.limits.timeout_ms = Some(60_000);
    runs.create(&PostParams::default(), &CodeRun::new("survivor", s))
        .await
        .unwrap();
    wait_phase(&runs, "survivor", Phase::Running).await;
    // Its pod's event recorded (events are written a moment after the step, off the run's
    // critical path), so the count below is evidence.
    let recorded = eventually_async(Duration::from_secs(10), || async {
        events_for(&client, &ns.name, "survivor")
            .await
            .iter()
            .any(|e| e.starts_with("PodCreated") || e.starts_with("PodClaimed"))
    })
    .await;
    assert!(recorded, "the survivor's pod event was never recorded");
    // A burst around the kill: some running, some waiting, some not yet seen by anyone.
    let burst: Vec<String> = (0..24).map(|i| format!("burst-{i:02}")).collect();
    let create = |names: &[String]| {
        let runs = runs.clone();
        let names = names.to_vec();
        async move {
            for name in names {
                let mut s = spec(
                    Language::Python,
                    "import time\ntime.sleep(2)\nprint('burst')",
                );
                s.limits.memory_mb = Some(1024);
                runs.create(&PostParams::default(), &CodeRun::new(&name, s))
                    .await
                    .unwrap();
            }
        }
    };
    create(&burst[..12]).await;

    // Two replicas run; kill the one holding the lease outright (no time to hand over).
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leader = stack_pod(&client, "operator").await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let killed = Instant::now();
    pods.delete(
        &leader,
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let took_over = eventually_async(Duration::from_secs(60), || async {
        leases
            .get("codeinterp-operator")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .is_some_and(|holder| holder != leader)
    })
    .await;
    assert!(took_over, "no standby took the lease");
    create(&burst[12..]).await;
    let handover = killed.elapsed();
    eprintln!("the standby took over {handover:?} after the leader was killed");
    assert!(handover < Duration::from_secs(20), "{handover:?}");

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
            .filter(|e| e.starts_with("PodCreated") || e.starts_with("PodClaimed"))
            .count(),
        1,
        "{events:?}"
    );
    // Every run of the burst completed, with exactly one pod made (or claimed) for it.
    for name in &burst {
        let run = wait_finished(&runs, name, Duration::from_secs(240))
            .await
            .unwrap();
        assert_eq!(
            run.phase(),
            Some(Phase::Completed),
            "{name} {:?}",
            run.status
        );
        let events = events_for(&client, &ns.name, name).await;
        let pods = events
            .iter()
            .filter(|e| e.starts_with("PodCreated") || e.starts_with("PodClaimed"))
            .count();
        // An event published just before the kill may be lost with it: at most one.
        assert!(pods <= 1, "{name}: {events:?}");
    }
    // The new leader keeps serving: a run after the handover runs.
    let after = run_to_end(
        &runs,
        spec(Language::Python, "print('after')"),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(after.phase(), Some(Phase::Completed));
}
