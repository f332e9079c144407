//! The queue's edges, with an operator and an API server of this test's own (a shard of their
//! own, one run at a time): a full queue answers 429, a cancelled queued run never gets a
//! pod, a run that waits too long fails with its own reason.
use std::time::Duration;

use codeinterp_crds::{CodeRun, RUN_UID_LABEL, SHARD_LABEL};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::json;
use testkit::rest::*;
use testkit::*;

#[tokio::test]
async fn a_full_queue_is_429_a_cancelled_queued_run_gets_no_pod_and_a_long_wait_times_out() {
    let shard = format!("q-{}", random_suffix());
    let storage = main_storage().display().to_string();
    let _operator = start_operator(
        &shard,
        &[
            ("STORAGE_URL", storage),
            ("MAX_CONCURRENT_RUNS", "1".into()),
            ("MAX_QUEUED_PER_TENANT", "3".into()),
            ("QUEUE_TIMEOUT_SECONDS", "25".into()),
        ],
    )
    .await;
    // Whatever happens, the shard's runs go with the test (no other operator serves them).
    let _runs = DeleteRunsOnDrop(format!("{SHARD_LABEL}={shard}"));
    let key = Key::fresh("queue");
    let server = ApiServer::start(
        &Key::api_keys(&[&key]),
        &[
            ("SHARD", shard.clone()),
            ("MAX_QUEUED_PER_TENANT", "3".into()),
        ],
    )
    .await;
    let api = server.api(&key.token);
    let submit = |code: &str| json!({"language": "python", "code": code, "wait": false, "limits": {"timeout_ms": 60000}});
    // One runs (the only slot); the next ones wait in line.
    let first = api
        .post(
            "/v1/runs",
            &submit("import time\ntime.sleep(35)\nprint('first')"),
        )
        .await
        .expect(200);
    let first_id = first["id"].as_str().unwrap().to_string();
    let running = eventually_async(Duration::from_secs(60), || async {
        api.get(&format!("/v1/runs/{first_id}")).await.expect(200)["status"] == "running"
    })
    .await;
    assert!(running, "the first run never started");
    let mut waiting = Vec::new();
    for i in 0..3 {
        let r = api
            .post("/v1/runs", &submit(&format!("print('waited {i}')")))
            .await
            .expect(200);
        waiting.push(r["id"].as_str().unwrap().to_string());
    }
    // Each shows its place in line.
    let seen = std::sync::Mutex::new(Vec::new());
    let placed = eventually_async(Duration::from_secs(30), || async {
        let mut places = Vec::new();
        for id in &waiting {
            let run = api.get(&format!("/v1/runs/{id}")).await.expect(200);
            places.push((run["status"].clone(), run["queue_position"].as_u64()));
        }
        let ok = places.iter().map(|p| p.1).collect::<Vec<_>>() == [Some(1), Some(2), Some(3)];
        *seen.lock().unwrap() = places;
        ok
    })
    .await;
    assert!(
        placed,
        "the waiting runs did not show places 1, 2, 3: {:?}",
        seen.lock().unwrap()
    );
    // The tenant's line is full: 429, OpenAI-shaped, with Retry-After.
    let full = api.post("/v1/runs", &submit("print('too many')")).await;
    let error = full.openai_error(429);
    assert_eq!(error["code"], "queue_full", "{error}");
    assert!(full.header("retry-after").is_some());

    // Cancelling a waiting run ends it without a pod ever being made for it.
    let cancelled = &waiting[2];
    let r = api
        .post_empty(&format!("/v1/runs/{cancelled}/cancel"))
        .await
        .expect(200);
    let done = api.wait_run(cancelled, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled", "{done} {r}");
    let client = client().await;
    let runs: kube::Api<CodeRun> = kube::Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let uid = runs.get(cancelled).await.unwrap().metadata.uid.unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let made = pods
        .list(&ListParams::default().labels(&format!("{RUN_UID_LABEL}={uid}")))
        .await
        .unwrap();
    assert!(
        made.items.is_empty(),
        "a pod was made for a cancelled queued run"
    );
    let events = events_for(&client, SANDBOX_NAMESPACE, cancelled).await;
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("PodCreated") || e.starts_with("PodClaimed")),
        "{events:?}"
    );

    // The first run holds the slot past the others' queue timeout: they fail with its reason.
    for id in &waiting[..2] {
        let run = api.wait_run(id, Duration::from_secs(90)).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["error"]["code"], "queue_timeout", "{run}");
    }
    let first = api.wait_run(&first_id, Duration::from_secs(90)).await;
    assert_eq!(
        (first["status"].as_str(), first["stdout"].as_str()),
        (Some("completed"), Some("first\n"))
    );
    // With the slot free, a new run runs (the control).
    let after = api
        .create_run(json!({"language": "python", "code": "print('after')", "limits": {"timeout_ms": 20000}}))
        .await;
    assert_eq!(after["status"], "completed", "{after}");
}
