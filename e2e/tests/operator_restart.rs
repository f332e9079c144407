//! The active operator replica dying at each moment of a run's delivery: before its pod is
//! up, while its job is being written, while its program runs. Every run must complete, and
//! every program must run exactly once: a witness follows the log of every runner pod in the
//! namespace and counts the pods in which each program printed its marker. In a file of its
//! own: test files run one after another, so no other test sees the leader go away.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codeinterp_crds::{CodeRun, Phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use runner_protocol::{Decoder, Event, Follower, RUNNER_CONTAINER};
use serde_json::json;
use testkit::rest::{Api as Rest, SANDBOX_NAMESPACE};
use testkit::*;

/// The pods in which each marker was printed.
#[derive(Clone, Default)]
struct Witness(Arc<Mutex<HashMap<String, HashSet<String>>>>);

impl Witness {
    /// Follows the log of every runner pod of the namespace from its start.
    fn start(client: kube::Client, ns: &str) -> (Self, tokio::task::JoinHandle<()>) {
        let witness = Witness::default();
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let seen = witness.clone();
        let task = tokio::spawn(async move {
            let mut following = HashSet::new();
            let config = watcher::Config::default().labels("codeinterp.dev/runner=true");
            let mut events = std::pin::pin!(watcher(pods.clone(), config).applied_objects());
            while let Some(Ok(pod)) = events.next().await {
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                // By UID: a run's new pod may have its old pod's name.
                if running && following.insert(pod.uid().unwrap_or_default()) {
                    tokio::spawn(seen.clone().follow(pods.clone(), pod.name_any(), pod.uid()));
                }
            }
        });
        (witness, task)
    }

    async fn follow(self, pods: Api<Pod>, pod: String, uid: Option<String>) {
        let params = LogParams {
            container: Some(RUNNER_CONTAINER.into()),
            follow: true,
            ..Default::default()
        };
        let Ok(log) = pods.log_stream(&pod, &params).await else {
            return;
        };
        let limits = codeinterp_crds::Maxima::default().max;
        let mut follower = Follower::new(log, Decoder::events_only(&limits));
        let mut text = Vec::new();
        while let Some(event) = follower.next().await {
            if let Event::Output { bytes, .. } = event {
                text.extend_from_slice(&bytes);
            }
        }
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(marker) = line.strip_prefix("ran ") {
                let mut seen = self.0.lock().unwrap();
                // By UID too: a run's new pod may have its old pod's name.
                let who = format!("{pod}/{}", uid.as_deref().unwrap_or_default());
                seen.entry(marker.to_string()).or_default().insert(who);
            }
        }
    }

    fn pods_of(&self, marker: &str) -> usize {
        self.0.lock().unwrap().get(marker).map_or(0, HashSet::len)
    }
}

/// A program that prints its marker, then runs for `secs` (long enough for the witness to
/// have its log).
fn marked(marker: &str, secs: u32) -> serde_json::Value {
    json!({
        "language": "python",
        "code": format!("import time\nprint('ran', '{marker}', flush=True)\ntime.sleep({secs})\nprint('done')"),
        "wait": false,
        // A shape no pool has: each run gets a pod made for it, whose start takes a moment.
        "limits": {"timeout_ms": 60000, "memory_mb": 96, "disk_mb": 100},
    })
}

/// Creates runs from `bodies`; returns their ids with their markers.
async fn create(api: &Rest, bodies: Vec<(String, serde_json::Value)>) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for (marker, body) in bodies {
        let run = api.create_run(body).await;
        ids.push((run["id"].as_str().unwrap().to_string(), marker));
    }
    ids
}

fn phase(run: &CodeRun) -> Option<Phase> {
    run.phase()
}

#[tokio::test]
async fn the_leader_dying_at_each_moment_of_delivery_loses_no_run_and_runs_none_twice() {
    let client = client().await;
    let api = Rest::main();
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let (witness, watching) = Witness::start(client.clone(), SANDBOX_NAMESPACE);
    let tag = random_suffix();
    let mut all = Vec::new();

    // 1. Before the pods are up: runs created, the leader killed at once.
    let early: Vec<_> = (0..6).map(|i| format!("{tag}-early-{i}")).collect();
    let bodies = early.iter().map(|m| (m.clone(), marked(m, 3))).collect();
    all.extend(create(&api, bodies).await);
    let handover = kill_leader_and_await_standby(&client).await;
    eprintln!("killed before the pods were up; handover {handover:?}");
    assert!(handover < Duration::from_secs(20), "{handover:?}");

    // 2. While jobs are being written: runs with a 96 MiB input, the leader killed once their
    // pods run and before their programs do.
    let input = vec![b'x'; 96 << 20];
    let file = api.upload_ok("big.bin", &input).await;
    let writing: Vec<_> = (0..4).map(|i| format!("{tag}-writing-{i}")).collect();
    let bodies = writing
        .iter()
        .map(|m| {
            let mut body = marked(m, 3);
            body["files"] = json!([file]);
            (m.clone(), body)
        })
        .collect();
    let ids = create(&api, bodies).await;
    all.extend(ids.clone());
    let mid_delivery = eventually_async(Duration::from_secs(60), || async {
        let mut delivering = false;
        for (id, _) in &ids {
            let Ok(run) = runs.get(id).await else {
                continue;
            };
            let pod = ns_pod_running(&client, &run).await;
            delivering |= pod && phase(&run) != Some(Phase::Running) && !run.is_finished();
        }
        delivering
    })
    .await;
    assert!(
        mid_delivery,
        "no run was seen between its pod's start and its program's"
    );
    let handover = kill_leader_and_await_standby(&client).await;
    eprintln!("killed while a job was written; handover {handover:?}");

    // 3. While programs run.
    let running: Vec<_> = (0..4).map(|i| format!("{tag}-running-{i}")).collect();
    let bodies = running.iter().map(|m| (m.clone(), marked(m, 8))).collect();
    let ids = create(&api, bodies).await;
    all.extend(ids.clone());
    let started = eventually_async(Duration::from_secs(60), || async {
        let mut n = 0;
        for (id, _) in &ids {
            if runs
                .get(id)
                .await
                .is_ok_and(|r| phase(&r) == Some(Phase::Running))
            {
                n += 1;
            }
        }
        n == ids.len()
    })
    .await;
    assert!(started, "the programs did not start");
    let handover = kill_leader_and_await_standby(&client).await;
    eprintln!("killed while programs ran; handover {handover:?}");

    // Every run completes, and its program ran in exactly one pod.
    for (id, marker) in &all {
        let run = api.wait_run(id, Duration::from_secs(240)).await;
        assert_eq!(run["status"], "completed", "{marker}: {run}");
        assert!(run["stdout"].as_str().unwrap().ends_with("done\n"), "{run}");
        let ran_in = eventually(Duration::from_secs(10), || witness.pods_of(marker) >= 1).await;
        assert!(ran_in, "{marker}: the witness never saw the program run");
        assert_eq!(
            witness.pods_of(marker),
            1,
            "{marker} ran in more than one pod"
        );
        let restarts = runs
            .get(id)
            .await
            .ok()
            .and_then(|r| r.status)
            .map_or(0, |s| s.restarts);
        eprintln!("{marker}: ran once; new pods given: {restarts}");
    }
    watching.abort();
    // The new leader keeps serving: a run after the handovers runs.
    let after = api
        .post(
            "/v1/runs",
            &json!({"language": "python", "code": "print('after')"}),
        )
        .await
        .expect(200);
    assert_eq!(after["status"], "completed", "{after}");
}

/// Whether the run's pod (found by the run's UID label) is running.
async fn ns_pod_running(client: &kube::Client, run: &CodeRun) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let selector = format!("codeinterp.dev/run-uid={}", run.uid().unwrap_or_default());
    pods.list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map(|l| {
            l.items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        })
        .unwrap_or(false)
}
