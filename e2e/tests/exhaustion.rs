//! One tenant against a shared component (issue 18, round three): each attack is tried on
//! the real stack, the component's memory is measured during it and held to a stated
//! bound, and a polite tenant's run completes meanwhile. (Specs a tenant makes large are
//! in `large_specs.rs`: that test kills the leader.)
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, SHARD_LABEL};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::json;
use testkit::rest::*;
use testkit::*;

// ---- 4. pods no scheduler will place take no room from runs ----

#[tokio::test]
async fn a_hundred_and_twenty_gated_pods_elsewhere_do_not_hold_a_cold_run_back() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gated").await;
    let pods = ns.pods();
    // 60 CPUs and 120 GiB asked for: far more than the node has.
    for i in 0..120 {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("gated-{i}")},
            "spec": {
                "schedulingGates": [{"name": "example.com/hold"}],
                "containers": [{"name": "c", "image": runner_image("python"),
                    "command": ["true"],
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]
            }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    // The control: they are there, unscheduled, all 120.
    let listed = pods.list(&Default::default()).await.unwrap();
    let pending = listed
        .items
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.is_none())
        .count();
    assert_eq!(pending, 120);
    // A run of a shape no pool has goes cold: it needs room, and gets it.
    let started = Instant::now();
    let mut cold = spec(codeinterp_crds::Language::Python, "print(1+1)");
    cold.limits.memory_mb = Some(320);
    let run = run_to_end(&ns.runs(), cold, Duration::from_secs(120))
        .await
        .unwrap();
    let st = run.status.unwrap();
    assert_eq!(
        (st.phase, st.start_mode),
        (
            Some(codeinterp_crds::Phase::Completed),
            Some(codeinterp_crds::StartMode::Cold)
        )
    );
    eprintln!("cold run beside 120 gated pods: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(60));
}

// ---- 5. a run accepted is a run that runs ----

#[tokio::test]
async fn a_burst_past_the_tenants_queue_cap_is_refused_at_the_door_and_every_accepted_run_runs() {
    let key = Key::fresh("burst");
    // A door with a line of one: the burst must meet it.
    let server = ApiServer::start(
        &Key::api_keys(&[&key]),
        &[("MAX_QUEUED_PER_TENANT", "1".to_string())],
    )
    .await;
    let api = server.api(&key.token);
    let body = json!({"language": "python", "code": "import time; time.sleep(0.5); print('ran')",
                      "wait": false, "limits": {"timeout_ms": 20000}});
    let answers: Vec<Reply> = futures::stream::iter(0..24)
        .map(|_| {
            let api = api.clone();
            let body = body.clone();
            async move { api.post("/v1/runs", &body).await }
        })
        .buffer_unordered(24)
        .collect()
        .await;
    let refused: Vec<&Reply> = answers.iter().filter(|r| r.status == 429).collect();
    let accepted: Vec<String> = answers
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    eprintln!("{} accepted, {} refused", accepted.len(), refused.len());
    // The control: the cap was met, and said so the way a client can act on.
    assert!(!refused.is_empty(), "the burst never met the cap");
    for r in &refused {
        assert_eq!(r.openai_error(429)["code"], "queue_full");
        assert!(r.header("retry-after").is_some());
    }
    for r in &answers {
        assert!(matches!(r.status, 200 | 429), "{} {}", r.status, r.text());
    }
    for id in &accepted {
        let run = api.wait_run(id, Duration::from_secs(120)).await;
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["stdout"], "ran\n");
    }
}

// ---- 1 and 6 at the door: what one tenant's unfinished runs hold, and the whole line ----

#[tokio::test]
async fn a_tenants_unfinished_runs_hold_at_most_their_byte_cap_and_others_still_run() {
    let (greedy, polite) = (Key::fresh("bytes"), Key::fresh("polite"));
    let server = ApiServer::start(
        &Key::api_keys(&[&greedy, &polite]),
        &[("MAX_LIVE_SPEC_MB_PER_TENANT", "1".to_string())],
    )
    .await;
    let api = server.api(&greedy.token);
    // 200 KiB of comment in a program that waits to be cancelled.
    let code = format!(
        "import time\n#{}\ntime.sleep(120)\n",
        "x".repeat(200 * 1024)
    );
    let body = json!({"language": "python", "code": code, "wait": false,
                      "limits": {"timeout_ms": 120000}});
    let mut held = Vec::new();
    let refused = loop {
        let r = api.post("/v1/runs", &body).await;
        if r.status == 429 {
            break r;
        }
        held.push(r.expect(200)["id"].as_str().unwrap().to_string());
        assert!(held.len() < 10, "ten runs of 200 KiB went past a 1 MiB cap");
    };
    // Each is let in while less than 1 MiB is held: five hold 1,000 KiB, the sixth goes
    // past, the seventh is refused.
    assert_eq!(held.len(), 6, "{held:?}");
    let e = refused.openai_error(429);
    assert_eq!(e["code"], "queue_full");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("of code, stdin and arguments"),
        "{e}"
    );
    assert!(refused.header("retry-after").is_some());
    // Another tenant is not held back by it.
    server.api(&polite.token).polite_run_completes().await;
    // The control: the cap is on what is unfinished. One run ended, the next is let in.
    api.post(&format!("/v1/runs/{}/cancel", held[0]), &json!({}))
        .await
        .expect(200);
    api.wait_run(&held[0], Duration::from_secs(60)).await;
    let again = api.post("/v1/runs", &body).await.expect(200);
    held.push(again["id"].as_str().unwrap().to_string());
    for id in &held[1..] {
        api.post(&format!("/v1/runs/{id}/cancel"), &json!({}))
            .await
            .expect(200);
    }
    for id in &held {
        let run = api.wait_run(id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "cancelled", "{run}");
    }
}

#[tokio::test]
async fn the_line_of_all_tenants_has_a_cap_that_every_tenant_meets() {
    let keys: Vec<Key> = (0..3).map(|i| Key::fresh(&format!("line{i}"))).collect();
    let refs: Vec<&Key> = keys.iter().collect();
    // A shard no operator serves: every run it takes waits in its line for as long as the
    // test likes, and the line of all tenants reaches its cap of two with one run each.
    let shard = format!("line-{}", &keys[0].tenant);
    let _gone = DeleteRunsOnDrop(format!("{SHARD_LABEL}={shard}"));
    let server = ApiServer::start(
        &Key::api_keys(&refs),
        &[
            ("MAX_QUEUED_TOTAL", "2".to_string()),
            ("SHARD", shard.clone()),
        ],
    )
    .await;
    let body = json!({"language": "python", "code": "print(1)", "wait": false});
    let mut ids = Vec::new();
    for key in &keys[..2] {
        let r = server
            .api(&key.token)
            .post("/v1/runs", &body)
            .await
            .expect(200);
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let third = server.api(&keys[2].token).post("/v1/runs", &body).await;
    let e = third.openai_error(429);
    assert_eq!(e["code"], "queue_full");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("The service has 2 runs waiting"), "{e}");
    assert!(third.header("retry-after").is_some());
    // The control: with one of them gone from the line, the same request is let in.
    // (A run's id is its CodeRun's name.)
    let runs: kube::Api<CodeRun> = kube::Api::namespaced(client().await, SANDBOX_NAMESPACE);
    runs.delete(&ids[0], &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.api(&keys[2].token).post("/v1/runs", &body).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "the line never let the third tenant in"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
