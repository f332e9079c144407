//! The REST API end to end: the API server `make up` started (http://localhost:8080, token
//! `dev_123`) and, where a test needs fresh tenants or other settings, API servers of its
//! own on loopback ports; the real operator, real runner pods and real object storage
//! behind them. Each test asserts what a client of the API sees.
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
async fn runs_are_listed_newest_first_in_pages_of_limit_continued_by_after() {
    let key = Key::fresh("e2e-list");
    let server = ApiServer::start(&Key::api_keys(&[&key]), &[]).await;
    let api = server.api(&key.token);
    let mut created = Vec::new();
    for n in 0..3 {
        if n > 0 {
            // created_at has a resolution of one second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let run = api
            .create_run(json!({"language": "python", "code": format!("print({n})"), "wait": false}))
            .await;
        created.push(run["id"].as_str().unwrap().to_string());
    }
    let first = api.get("/v1/runs?limit=2").await.expect(200);
    assert_eq!(first["object"], "list");
    assert_eq!(
        ids(&first),
        [created[2].clone(), created[1].clone()],
        "{first}"
    );
    assert_eq!(first["has_more"], true);
    assert_eq!(first["last_id"], created[1].as_str());
    let second = api
        .get(&format!("/v1/runs?limit=2&after={}", created[1]))
        .await
        .expect(200);
    assert_eq!(ids(&second), [created[0].clone()], "{second}");
    assert_eq!(second["has_more"], false);
    let everything = api.get("/v1/runs").await.expect(200);
    assert_eq!(ids(&everything).len(), 3, "{everything}");
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
    let again = api
        .post_empty(&format!("/v1/runs/{id}/cancel"))
        .await
        .expect(200);
    assert_eq!(
        again["status"], "cancelled",
        "a finished run stays as it is"
    );
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
async fn an_uploaded_file_is_listed_described_and_downloaded_byte_for_byte() {
    let api = Api::main();
    let bytes = b"alpha\nbeta\n\x00\xff binary too".to_vec();
    let file = api.upload("notes.txt", bytes.clone()).await.expect(200);
    let id = file["id"].as_str().unwrap();
    assert!(id.starts_with("file-"), "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], bytes.len());
    assert_eq!(file["filename"], "notes.txt");
    assert_eq!(file["purpose"], "assistants");
    assert!(file["created_at"].as_i64().is_some_and(|t| t > 0));

    let list = api.get("/v1/files").await.expect(200);
    assert_eq!(list["object"], "list");
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id);
    assert_eq!(listed, Some(&file), "{list}");
    assert_eq!(api.get(&format!("/v1/files/{id}")).await.expect(200), file);

    let content = api.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status, 200, "{}", content.text());
    assert_eq!(content.body, bytes);
    assert_eq!(
        content.header("content-disposition"),
        Some("attachment; filename=\"notes.txt\"")
    );
}

#[tokio::test]
async fn a_deleted_file_is_gone_from_get_content_and_the_list() {
    let api = Api::main();
    let id = api.upload_ok("doomed.txt", b"bye").await;
    let deleted = api.delete(&format!("/v1/files/{id}")).await.expect(200);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "file", "deleted": true})
    );
    api.get(&format!("/v1/files/{id}")).await.openai_error(404);
    api.get(&format!("/v1/files/{id}/content"))
        .await
        .openai_error(404);
    api.delete(&format!("/v1/files/{id}"))
        .await
        .openai_error(404);
    assert!(!ids(&api.get("/v1/files").await.expect(200)).contains(&id));
}

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
    // Without its signature, the same path needs a token.
    let bare = url.split('?').next().unwrap();
    api.anonymous().get(bare).await.openai_error(401);
}

// ---- health, metrics, OpenAPI, admin ----

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

#[tokio::test]
async fn metrics_count_requests_by_route_in_prometheus_text() {
    let api = Api::main();
    api.get("/v1/runs/run-nosuchrun0000000000")
        .await
        .openai_error(404);
    // Metrics are served on their own port, not the API's.
    api.anonymous().get("/metrics").await.openai_error(404);
    let text = main_metrics().await;
    assert!(
        text.contains(
            "codeinterp_apiserver_http_requests_total{method=\"GET\",route=\"/v1/runs/{id}\",status=\"404\"}"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE codeinterp_apiserver_http_request_duration_seconds histogram"));
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let doc = Api::main()
        .anonymous()
        .get("/openapi.json")
        .await
        .expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/cancel",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/content",
        "/v1/runs/{id}/events",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is missing");
    }
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
}

#[tokio::test]
async fn the_admin_page_is_served_under_a_strict_content_security_policy() {
    let page = Api::main().anonymous().get("/admin").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(page.text().contains("<button id=\"run\""));
}

// ---- tenants, rate limits, idempotency ----

#[tokio::test]
async fn a_tenant_cannot_see_read_cancel_or_delete_another_tenants_runs_and_files() {
    let server =
        ApiServer::start_on(18090, "key_a:tenant-a:50:100,key_b:tenant-b:50:100", &[]).await;
    let (a, b) = (server.api("key_a"), server.api("key_b"));
    let file = a.upload_ok("private.txt", b"tenant a only").await;
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
    b.get(&format!("/v1/files/{file}")).await.openai_error(404);
    b.get(&format!("/v1/files/{file}/content"))
        .await
        .openai_error(404);
    b.delete(&format!("/v1/files/{file}"))
        .await
        .openai_error(404);
    assert!(!ids(&b.get("/v1/runs?limit=100").await.expect(200)).contains(&run.to_string()));
    assert!(!ids(&b.get("/v1/files").await.expect(200)).contains(&file));

    // Nothing B tried had an effect.
    let done = a.wait_run(run, RUN_WITHIN).await;
    assert_eq!(
        done["status"], "completed",
        "B's cancel was ignored: {done}"
    );
    assert_eq!(done["stdout"], "done\n");
    let content = a.get(&format!("/v1/files/{file}/content")).await;
    assert_eq!(content.body, b"tenant a only", "B's delete was ignored");
    b.get(&format!("/v1/runs/{run}")).await.openai_error(404);
}

#[tokio::test]
async fn a_key_over_its_burst_gets_429_with_retry_after_in_openai_shape() {
    let key = Key::fresh("e2e-rate");
    let server = ApiServer::start(&format!("{}:{}:1:2", key.token, key.tenant), &[]).await;
    let api = server.api(&key.token);
    assert_eq!(api.get("/v1/files").await.status, 200);
    assert_eq!(api.get("/v1/files").await.status, 200);
    let third = api.get("/v1/files").await;
    let error = third.openai_error(429);
    assert_eq!(error["code"], "rate_limit_exceeded", "{error}");
    let retry_after: u64 = third
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(api.get("/v1/files").await.status, 200, "the bucket refills");
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

// ---- signed URLs ----

#[tokio::test]
async fn a_signed_url_with_a_tampered_signature_is_refused() {
    let api = Api::main();
    let run = run_with_artifact(&api).await;
    let url = run["artifacts"][0]["url"].as_str().unwrap().to_string();
    let last = url.chars().last().unwrap();
    let flipped = if last == '0' { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &url[..url.len() - 1]);
    let error = api.anonymous().get(&tampered).await.openai_error(403);
    assert_eq!(error["code"], "invalid_signature");
    assert_eq!(
        api.anonymous().get(&url).await.status,
        200,
        "the original works"
    );
}

#[tokio::test]
async fn a_signed_url_moved_to_another_file_id_is_refused() {
    let api = Api::main();
    let run = run_with_artifact(&api).await;
    let url = run["artifacts"][0]["url"].as_str().unwrap();
    let artifact = run["artifacts"][0]["id"].as_str().unwrap();
    let other = api.upload_ok("other.txt", b"not for this link").await;
    let moved = url.replace(artifact, &other);
    assert_ne!(moved, url);
    let error = api.anonymous().get(&moved).await.openai_error(403);
    assert_eq!(error["code"], "invalid_signature");
}

/// A signing key of the test's own, so it can sign URLs as the server would.
fn test_signing_key() -> String {
    format!(
        "e2e-key-{}-{}",
        testkit::random_suffix(),
        testkit::random_suffix()
    )
}

#[tokio::test]
async fn an_expired_signed_url_is_refused() {
    let key = Key::fresh("e2e-expiry");
    let signing = test_signing_key();
    let server =
        ApiServer::start(&Key::api_keys(&[&key]), &[("SIGNING_KEY", signing.clone())]).await;
    let id = server
        .api(&key.token)
        .upload_ok("expiring.txt", b"soon gone")
        .await;
    let anonymous = Api::new(&server.base, None);
    let fresh = anonymous
        .get(&signed_path(&signing, &id, now_unix() + 600))
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    assert_eq!(fresh.body, b"soon gone");
    let expired = anonymous
        .get(&signed_path(&signing, &id, now_unix() - 60))
        .await;
    let error = expired.openai_error(403);
    assert_eq!(error["code"], "url_expired");
}

#[tokio::test]
async fn a_url_signed_with_the_previous_key_still_works_after_a_key_rotation() {
    let (old_key, new_key) = (test_signing_key(), test_signing_key());
    let key = Key::fresh("e2e-rotate");
    let keys = Key::api_keys(&[&key]);
    let rotated_env = [
        ("SIGNING_KEY", new_key.clone()),
        ("SIGNING_KEY_PREVIOUS", old_key.clone()),
    ];
    let forgetful_env = [("SIGNING_KEY", new_key.clone())];
    let (rotated, forgetful) = tokio::join!(
        ApiServer::start(&keys, &rotated_env),
        ApiServer::start(&keys, &forgetful_env),
    );
    let id = rotated
        .api(&key.token)
        .upload_ok("rotation.txt", b"signed before")
        .await;
    // Handed out before the rotation, signed with the key of then.
    let path = signed_path(&old_key, &id, now_unix() + 600);
    let download = Api::new(&rotated.base, None).get(&path).await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert_eq!(download.body, b"signed before");
    let error = Api::new(&forgetful.base, None)
        .get(&path)
        .await
        .openai_error(403);
    assert_eq!(
        error["code"], "invalid_signature",
        "the old key is what opens it"
    );
    let current = signed_path(&new_key, &id, now_unix() + 600);
    assert_eq!(
        Api::new(&rotated.base, None).get(&current).await.status,
        200
    );
}

// ---- bad input: a 4xx in OpenAI's shape, never a 5xx ----

#[tokio::test]
async fn malformed_json_is_a_400_in_openai_shape() {
    let api = Api::main();
    let reply = api
        .send(
            api.request(reqwest::Method::POST, "/v1/runs")
                .header("content-type", "application/json")
                .body(r#"{"language": "python", "code": "#),
        )
        .await;
    reply.openai_error(400);
}

#[tokio::test]
async fn an_unknown_field_is_refused_and_named() {
    let reply = Api::main()
        .post(
            "/v1/runs",
            &json!({"language": "python", "code": "print(1)", "colour": "red"}),
        )
        .await;
    let error = reply.openai_error(400);
    assert_eq!(error["param"], "colour", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("colour"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unknown_language_is_refused_and_named() {
    let reply = Api::main()
        .post(
            "/v1/runs",
            &json!({"language": "cobol", "code": "DISPLAY 1"}),
        )
        .await;
    let error = reply.openai_error(400);
    assert_eq!(error["param"], "language", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("cobol"),
        "{error}"
    );
}

#[tokio::test]
async fn limits_out_of_range_are_refused_and_named() {
    let api = Api::main();
    for (limits, param) in [
        (json!({"timeout_ms": 100_000_000u64}), "limits.timeout_ms"),
        (json!({"memory_mb": 1_000_000u64}), "limits.memory_mb"),
        (json!({"timeout_ms": 0}), "limits.timeout_ms"),
    ] {
        let reply = api
            .post(
                "/v1/runs",
                &json!({"language": "python", "code": "print(1)", "limits": limits}),
            )
            .await;
        let error = reply.openai_error(400);
        assert_eq!(error["param"], param, "{limits}: {error}");
        assert_eq!(error["code"], "limit_out_of_range", "{error}");
    }
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused_in_openai_shape() {
    let key = Key::fresh("upload");
    let server = ApiServer::start(
        &Key::api_keys(&[&key]),
        &[("MAX_UPLOAD_BYTES", (512 * 1024).to_string())],
    )
    .await;
    let reply = server
        .api(&key.token)
        .upload("big.bin", vec![b'x'; 600 * 1024])
        .await;
    assert!(
        reply.status == 413 || reply.status == 400,
        "{} {}",
        reply.status,
        reply.text()
    );
    reply.openai_error(reply.status);
}

#[tokio::test]
async fn a_request_without_a_token_is_401() {
    let api = Api::main().anonymous();
    api.get("/v1/runs").await.openai_error(401);
    api.post("/v1/runs", &python("print(1)"))
        .await
        .openai_error(401);
    api.get("/v1/files").await.openai_error(401);
}

#[tokio::test]
async fn a_wrong_token_is_401() {
    let error = Api::main()
        .with_token("dev_1234")
        .get("/v1/runs")
        .await
        .openai_error(401);
    assert_eq!(error["code"], "invalid_api_key");
    assert!(!error["message"].as_str().unwrap().contains("dev_1234"));
}

#[tokio::test]
async fn an_unknown_run_id_is_404() {
    let api = Api::main();
    let error = api
        .get("/v1/runs/run-doesnotexist00000000")
        .await
        .openai_error(404);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("run-doesnotexist00000000")
    );
    api.post_empty("/v1/runs/run-doesnotexist00000000/cancel")
        .await
        .openai_error(404);
    api.get("/v1/runs/..%2F..%2Fetc").await.openai_error(404);
}

#[tokio::test]
async fn a_file_of_another_tenant_given_to_a_run_is_refused() {
    let (ka, kb) = (Key::fresh("e2e-owner"), Key::fresh("e2e-borrower"));
    let server = ApiServer::start(&Key::api_keys(&[&ka, &kb]), &[]).await;
    let file = server.api(&ka.token).upload_ok("mine.txt", b"secret").await;
    let reply = server
        .api(&kb.token)
        .post(
            "/v1/runs",
            &json!({"language": "python", "code": "print(open('/work/mine.txt').read())",
                    "files": [file]}),
        )
        .await;
    assert!(
        reply.status == 404 || reply.status == 400,
        "{} {}",
        reply.status,
        reply.text()
    );
    let error = reply.openai_error(reply.status);
    assert_eq!(error["param"], "files[0]", "{error}");
    assert!(
        coderuns_of(&kb.tenant).await.is_empty(),
        "no run was created"
    );
}
