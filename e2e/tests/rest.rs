//! The REST API end to end: the API server `make up` started (http://localhost:8080, token
//! `dev_123`) and, where a test needs fresh tenants or other settings, API servers of its
//! own on loopback ports; the real operator, real runner pods and real object storage
//! behind them. Each test asserts what a client of the API sees, of what only the cluster
//! can show: runs that really run. What the API answers without a cluster (validation,
//! auth, errors, rate limits, files, signed URLs, stored runs) is tested in
//! `apiserver/tests/routes.rs`, and pure validation beside its code.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, TENANT_LABEL};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use testkit::client;
use testkit::rest::*;

const RUN_WITHIN: Duration = Duration::from_secs(90);

/// The README's quickstart request, character for character.
const QUICKSTART: &str = r#"curl -s -X POST http://localhost:8080/v1/runs -H "Authorization: Bearer dev_123" -H "Content-Type: application/json" -d '{"language": "python", "code": "print(1+1)", "limits": {"timeout_ms": 3000}}'"#;

fn python(code: &str) -> Value {
    json!({"language": "python", "code": code, "limits": {"timeout_ms": 20000}})
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

async fn coderuns() -> kube::Api<CodeRun> {
    kube::Api::namespaced(client().await, SANDBOX_NAMESPACE)
}

async fn coderuns_of(tenant: &str) -> Vec<CodeRun> {
    coderuns()
        .await
        .list(&ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}")))
        .await
        .unwrap()
        .items
}

/// A run that writes `/work/outputs/x.csv`, finished.
async fn run_with_artifact(api: &Api) -> Value {
    let run = api
        .create_run(python(
            "import os\nos.makedirs('/work/outputs', exist_ok=True)\n\
             open('/work/outputs/x.csv', 'w').write('a,b\\n1,2\\n')\nprint('wrote')",
        ))
        .await;
    assert_eq!(run["status"], "completed", "{run}");
    run
}

// ---- the quickstart and the run endpoints ----

#[tokio::test]
async fn the_readme_quickstart_prints_the_finished_run_with_stdout_2() {
    let out = tokio::process::Command::new("bash")
        .args(["-c", QUICKSTART])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "curl failed: {out:?}");
    let run: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(run["object"], "run", "{run}");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["stdout"], "2\n", "{run}");
    assert_eq!(run["exit_code"], 0, "{run}");
}

#[tokio::test]
async fn creating_a_run_waits_for_it_and_returns_the_whole_run_object() {
    let run = Api::main()
        .create_run(python(
            "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)",
        ))
        .await;
    assert!(run["id"].as_str().unwrap().starts_with("run-"), "{run}");
    assert_eq!(run["object"], "run");
    assert_eq!(
        run["status"], "completed",
        "a non-zero exit still completes: {run}"
    );
    assert_eq!(run["language"], "python");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["signal"], Value::Null);
    assert_eq!(run["stdout"], "out\n");
    assert_eq!(run["stderr"], "err\n");
    assert_eq!(run["stdout_truncated"], false);
    assert_eq!(run["stderr_truncated"], false);
    assert_eq!(run["artifacts"], json!([]));
    assert_eq!(run["error"], Value::Null);
    for field in ["created_at", "started_at", "completed_at"] {
        assert!(run[field].as_i64().is_some_and(|t| t > 0), "{field}: {run}");
    }
    for field in ["wall_ms", "cpu_ms", "memory_peak_bytes"] {
        assert!(run["usage"][field].is_u64(), "usage.{field}: {run}");
    }
    assert!(
        run["usage"]["memory_peak_bytes"].as_u64().unwrap() > 0,
        "{run}"
    );
}

#[tokio::test]
async fn a_run_created_without_waiting_answers_queued_and_is_read_back_by_id_when_done() {
    let api = Api::main();
    let asked = Instant::now();
    let run = api
        .create_run(json!({"language": "python", "code": "print('later')", "wait": false}))
        .await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["stdout"], "", "{run}");
    let id = run["id"].as_str().unwrap();
    let done = api.wait_run(id, RUN_WITHIN).await;
    assert_eq!(done["id"], id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout"], "later\n", "{done}");
}

#[tokio::test]
async fn cancelling_a_running_program_stops_it_and_keeps_what_it_printed() {
    let api = Api::main();
    let run = api
        .create_run(json!({
            "language": "python",
            "code": "import time\nprint('tick', flush=True)\nwhile True: time.sleep(0.1)",
            "limits": {"timeout_ms": 120000},
            "wait": false,
        }))
        .await;
    let id = run["id"].as_str().unwrap();
    api.wait_run_until(id, RUN_WITHIN, |r| r["status"] != "queued")
        .await;
    // Time for the program to print before it is stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let answer = api
        .post_empty(&format!("/v1/runs/{id}/cancel"))
        .await
        .expect(200);
    assert_eq!(answer["id"], id);
    let done = api.wait_run(id, Duration::from_secs(60)).await;
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "the cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["stdout"], "tick\n", "what it printed is kept: {done}");
}

#[tokio::test]
async fn a_run_is_read_back_from_its_record_after_its_coderun_is_deleted() {
    let api = Api::main();
    let run = api.create_run(python("print('still here')")).await;
    assert_eq!(run["status"], "completed", "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let runs = coderuns().await;
    runs.delete(&id, &DeleteParams::foreground()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(runs, &id, |obj: Option<&CodeRun>| obj.is_none()),
    )
    .await
    .expect("the CodeRun is deleted")
    .unwrap();
    let again = api.get(&format!("/v1/runs/{id}")).await.expect(200);
    assert_eq!(again["status"], "completed", "{again}");
    assert_eq!(again["stdout"], "still here\n", "{again}");
    assert_eq!(again["created_at"], run["created_at"]);
    assert!(
        ids(&api.get("/v1/runs?limit=100").await.expect(200)).contains(&id),
        "still listed"
    );
}

// ---- files and artifacts ----

#[tokio::test]
async fn a_run_reads_an_uploaded_file_from_its_working_directory() {
    let api = Api::main();
    let id = api.upload_ok("numbers.csv", b"1,2,3,4\n").await;
    let run = api
        .create_run(json!({
            "language": "python",
            "code": "print(sum(int(x) for x in open('/work/numbers.csv').read().split(',')))",
            "files": [id],
        }))
        .await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["stdout"], "10\n", "{run}");
}

#[tokio::test]
async fn an_output_file_is_an_artifact_whose_signed_url_downloads_without_a_token() {
    let api = Api::main();
    let run = run_with_artifact(&api).await;
    let artifacts = run["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{run}");
    let artifact = &artifacts[0];
    assert_eq!(artifact["filename"], "x.csv");
    assert_eq!(artifact["bytes"], 8);
    assert!(artifact["expires_at"].as_i64().unwrap() > now_unix());
    let url = artifact["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{MAIN_API}/v1/files/")), "{url}");

    let download = api.anonymous().get(url).await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert_eq!(download.body, b"a,b\n1,2\n");
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"x.csv\"")
    );
    assert_eq!(download.header("x-content-type-options"), Some("nosniff"));
}

// ---- readiness on the cluster ----

#[tokio::test]
async fn healthz_and_readyz_report_the_service_ready() {
    let api = Api::main().anonymous();
    assert_eq!(api.get("/healthz").await.expect(200)["status"], "ok");
    let ready = api.get("/readyz").await.expect(200);
    assert_eq!(ready["status"], "ready", "{ready}");
    let checks = ready["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["status"] == "ok"), "{ready}");
    let names: HashSet<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in ["kubernetes", "storage", "run_cache"] {
        assert!(names.contains(name), "no {name} check: {ready}");
    }
}

// ---- tenants and idempotency ----

#[tokio::test]
async fn a_tenant_cannot_see_or_cancel_another_tenants_live_run() {
    // A live run is answered from the cluster's CodeRun (a stored one, and files, are
    // tested without a cluster in apiserver/tests/routes.rs).
    let server =
        ApiServer::start_on(18090, "key_a:tenant-a:50:100,key_b:tenant-b:50:100", &[]).await;
    let (a, b) = (server.api("key_a"), server.api("key_b"));
    let run = a
        .create_run(json!({
            "language": "python",
            "code": "import time\ntime.sleep(3)\nprint('done')",
            "wait": false,
        }))
        .await;
    let run = run["id"].as_str().unwrap();

    b.get(&format!("/v1/runs/{run}")).await.openai_error(404);
    b.post_empty(&format!("/v1/runs/{run}/cancel"))
        .await
        .openai_error(404);
    assert!(!ids(&b.get("/v1/runs?limit=100").await.expect(200)).contains(&run.to_string()));

    // Nothing B tried had an effect.
    let done = a.wait_run(run, RUN_WITHIN).await;
    assert_eq!(
        done["status"], "completed",
        "B's cancel was ignored: {done}"
    );
    assert_eq!(done["stdout"], "done\n");
    b.get(&format!("/v1/runs/{run}")).await.openai_error(404);
}

#[tokio::test]
async fn the_same_idempotency_key_twice_returns_one_run_and_creates_one_coderun() {
    let key = Key::fresh("e2e-idem");
    let server = ApiServer::start(&Key::api_keys(&[&key]), &[]).await;
    let api = server.api(&key.token);
    let idem = format!("retry-{}", testkit::random_suffix());
    let request = || {
        api.request(reqwest::Method::POST, "/v1/runs")
            .header("Idempotency-Key", &idem)
            .json(&python("print('once')"))
    };
    let first = api.send(request()).await.expect(200);
    let second = api.send(request()).await.expect(200);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["stdout"], "once\n");
    assert_eq!(coderuns_of(&key.tenant).await.len(), 1);
}

#[tokio::test]
async fn another_tenant_with_the_same_idempotency_key_gets_a_run_of_its_own() {
    let (ka, kb) = (Key::fresh("e2e-idem-a"), Key::fresh("e2e-idem-b"));
    let server = ApiServer::start(&Key::api_keys(&[&ka, &kb]), &[]).await;
    let idem = format!("shared-{}", testkit::random_suffix());
    let create = |token: &str, code: &str| {
        let api = server.api(token);
        let req = api
            .request(reqwest::Method::POST, "/v1/runs")
            .header("Idempotency-Key", &idem)
            .json(&python(code));
        async move { api.send(req).await.expect(200) }
    };
    let (a, b) = tokio::join!(
        create(&ka.token, "print('a')"),
        create(&kb.token, "print('b')")
    );
    assert_ne!(a["id"], b["id"]);
    assert_eq!(
        (a["stdout"].as_str(), b["stdout"].as_str()),
        (Some("a\n"), Some("b\n"))
    );
    assert_eq!(coderuns_of(&ka.tenant).await.len(), 1);
    assert_eq!(coderuns_of(&kb.tenant).await.len(), 1);
}
