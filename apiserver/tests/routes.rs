//! The routes that need no cluster, driven through the whole middleware stack with
//! `oneshot`: auth, errors, rate limits, files, signed URLs, and runs (and their event
//! streams) answered from their stored records. The kube client points nowhere and the run
//! cache is never filled; runs against a real cluster are tested in the `e2e` crate. What a
//! pure function decides (a request's validation, a signature) is tested beside it; here,
//! that its answer reaches the client with the right status and shape.
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use codeinterp_apiserver::config::Config;
use codeinterp_apiserver::metrics::Metrics;
use codeinterp_apiserver::run_cache::{ContainerCache, RunCache};
use codeinterp_apiserver::signing::Signer;
use codeinterp_apiserver::state::now_unix;
use codeinterp_crds::{ArtifactRef, Language, Phase, Usage};
use codeinterp_store::{
    FileMeta, HEAD_BYTES, OutputStream, RECORD_VERSION, RunBinding, RunRecord, Store, head,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const ACME: &str = "acme-token";
const BETA: &str = "beta-token";
const SLOW: &str = "slow-token";
const KEY: &[u8] = b"test-signing-key-0123456789";

struct Harness {
    app: Router,
    store: Store,
    signer: Signer,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

fn harness_with(args: &[&str]) -> Harness {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let keys = format!("{ACME}:acme:100:100,{BETA}:beta:100:100,{SLOW}:slow:0.01:2");
    let key = String::from_utf8(KEY.to_vec()).unwrap();
    let mut all = vec![
        "apiserver",
        "--api-keys",
        &keys,
        "--public-base-url",
        "http://api.test",
        "--sandbox-namespace",
        "codeinterp-test",
    ];
    if !args.contains(&"--signing-key") {
        all.extend(["--signing-key", &key]);
    }
    all.extend_from_slice(args);
    let cfg = Config::parse_from(all);
    let kube =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let state = codeinterp_apiserver::serve::state(
        &cfg,
        cfg.settings().unwrap(),
        store.clone(),
        kube,
        RunCache::detached("codeinterp-test"),
        ContainerCache::detached("codeinterp-test"),
        Default::default(),
    )
    .unwrap();
    Harness {
        metrics: state.metrics.clone(),
        app: codeinterp_apiserver::app::router(state),
        store,
        signer: Signer::new(KEY, None).unwrap(),
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(&["--max-upload-bytes", "1024"])
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an OpenAI-shaped error and returns its `error` object.
    fn error(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        let error = body["error"].clone();
        for field in ["message", "type", "param", "code"] {
            assert!(
                error.get(field).is_some(),
                "error.{field} missing in {body}"
            );
        }
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        error
    }
}

impl Harness {
    async fn send(&self, req: Request<Body>) -> Answer {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post_json(&self, path: &str, token: &str, body: &str) -> Answer {
        self.send(
            Request::post(path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn upload(
        &self,
        token: &str,
        filename: &str,
        content: &[u8],
        purpose: Option<&str>,
    ) -> Answer {
        let boundary = "XyZboundary42";
        let mut body = Vec::new();
        if let Some(p) = purpose {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{p}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.send(
            Request::post("/v1/files")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::from(body))
                .unwrap(),
        )
        .await
    }

    /// A finished run as the operator stores it, bound to its id as the API binds it.
    async fn stored_run(&self, id: &str, tenant: &str, created_at: i64) -> RunRecord {
        let stdout = "2\n".repeat(3000);
        self.stored_run_printing(id, tenant, created_at, stdout.as_bytes(), b"")
            .await
    }

    /// The same, with this output.
    async fn stored_run_printing(
        &self,
        id: &str,
        tenant: &str,
        created_at: i64,
        stdout: &[u8],
        stderr: &[u8],
    ) -> RunRecord {
        let uid = format!("uid-{id}");
        let rec = RunRecord {
            v: RECORD_VERSION,
            id: id.into(),
            uid: uid.clone(),
            tenant: tenant.into(),
            namespace: "codeinterp-test".into(),
            phase: Phase::Completed,
            language: Language::Python,
            created_at,
            started_at: Some(created_at + 1),
            completed_at: Some(created_at + 2),
            exit_code: Some(0),
            signal: None,
            stdout_head: head(stdout, HEAD_BYTES),
            stderr_head: head(stderr, HEAD_BYTES),
            stdout_bytes: stdout.len() as u64,
            stderr_bytes: stderr.len() as u64,
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage {
                wall_ms: 20,
                cpu_ms: 15,
                memory_peak_bytes: 9_000_000,
            },
            artifacts: vec![],
            error: None,
            start_mode: None,
            preloaded: false,
        };
        for (stream, bytes) in [
            (OutputStream::Stdout, stdout),
            (OutputStream::Stderr, stderr),
        ] {
            self.store
                .put_output(
                    tenant,
                    "codeinterp-test",
                    &uid,
                    stream,
                    Bytes::copy_from_slice(bytes),
                )
                .await
                .unwrap();
        }
        self.store.put_run(&rec).await.unwrap();
        let binding = RunBinding {
            uid,
            namespace: "codeinterp-test".into(),
            created_ms: created_at * 1000,
            legacy: false,
        };
        self.store.bind_run(tenant, id, &binding).await.unwrap();
        rec
    }

    fn metrics_text(&self) -> String {
        self.metrics.encode()
    }
}

#[tokio::test]
async fn a_request_without_a_key_is_refused_in_openai_shape() {
    let h = harness();
    let a = h.get("/v1/runs", None).await;
    let e = a.error(StatusCode::UNAUTHORIZED);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("API key"));
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_never_echoed() {
    let h = harness();
    let a = h.get("/v1/files", Some("guess-token")).await;
    let e = a.error(StatusCode::UNAUTHORIZED);
    assert_eq!(e["code"], "invalid_api_key");
    assert!(!String::from_utf8_lossy(&a.body).contains("guess-token"));
    let a = h
        .send(
            Request::get("/v1/files")
                .header(header::AUTHORIZATION, "Basic YWNtZQ==")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_refused_run_request_is_a_400_in_openai_shape_naming_the_field() {
    // Which requests are refused, and why, is `runs::request`'s to test; here, that its
    // refusal reaches the client as it should.
    let h = harness();
    let a = h
        .post_json(
            "/v1/runs",
            ACME,
            r#"{"language":"python","code":"print(1)","limits":{"timeout_ms":999999999}}"#,
        )
        .await;
    let e = a.error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "limits.timeout_ms");
    assert_eq!(e["code"], "limit_out_of_range");
    assert_eq!(e["type"], "invalid_request_error");
}

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_client_errors() {
    let h = harness();
    for body in ["{", "", "null", r#"{"language":"python","code":5}"#, "[1]"] {
        let a = h.post_json("/v1/runs", ACME, body).await;
        a.error(StatusCode::BAD_REQUEST);
    }
    let a = h
        .send(
            Request::post("/v1/runs")
                .header(header::AUTHORIZATION, format!("Bearer {ACME}"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("print(1)"))
                .unwrap(),
        )
        .await;
    a.error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn an_oversized_body_is_413_in_openai_shape() {
    let h = harness();
    let code = "x".repeat(5 * 1024 * 1024);
    let a = h
        .post_json(
            "/v1/runs",
            ACME,
            &format!(r#"{{"language":"python","code":"{code}"}}"#),
        )
        .await;
    a.error(StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_run_naming_a_missing_or_foreign_file_is_refused() {
    // Refused before any CodeRun is created: this harness's cluster cannot be reached, so a
    // request that got as far as creating one would be answered 503.
    let h = harness();
    let up = h.upload(BETA, "b.txt", b"beta's", Some("assistants")).await;
    let beta_file = up.json()["id"].as_str().unwrap().to_string();
    for id in ["file-doesnotexist", beta_file.as_str()] {
        let a = h
            .post_json(
                "/v1/runs",
                ACME,
                &format!(r#"{{"language":"python","code":"print(1)","files":["{id}"]}}"#),
            )
            .await;
        let e = a.error(StatusCode::BAD_REQUEST);
        assert_eq!(e["param"], "files[0]");
        assert_eq!(e["code"], "file_not_found");
    }
}

#[tokio::test]
async fn a_finished_run_is_answered_from_its_record_alone() {
    let h = harness();
    h.stored_run("run-old1", "acme", 1000).await;
    let a = h.get("/v1/runs/run-old1", Some(ACME)).await;
    assert_eq!(a.status, StatusCode::OK);
    let run = a.json();
    assert_eq!(run["object"], "run");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["stdout"].as_str().unwrap().len(), 6000);
    assert_eq!(run["usage"]["memory_peak_bytes"], 9_000_000);
    assert!(run["error"].is_null());
}

#[tokio::test]
async fn another_tenants_run_is_not_found_everywhere() {
    let h = harness();
    h.stored_run("run-acme1", "acme", 1000).await;
    let a = h.get("/v1/runs/run-acme1", Some(BETA)).await;
    assert_eq!(a.error(StatusCode::NOT_FOUND)["param"], "id");
    let a = h.post_json("/v1/runs/run-acme1/cancel", BETA, "").await;
    a.error(StatusCode::NOT_FOUND);
    let a = h.get("/v1/runs/run-acme1/events", Some(BETA)).await;
    let e = a.error(StatusCode::NOT_FOUND);
    assert!(e["message"].as_str().unwrap().contains("run-acme1"), "{e}");
    let a = h.get("/v1/runs", Some(BETA)).await;
    assert_eq!(a.json()["data"], json!([]));
    let a = h.get("/v1/runs/..%2F..%2Fetc", Some(ACME)).await;
    a.error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_a_finished_run_returns_it_unchanged() {
    let h = harness();
    h.stored_run("run-done", "acme", 1000).await;
    let a = h.post_json("/v1/runs/run-done/cancel", ACME, "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["status"], "completed");
}

#[tokio::test]
async fn runs_are_listed_newest_first_in_pages() {
    let h = harness();
    for (i, id) in ["run-a", "run-b", "run-c", "run-d", "run-e"]
        .iter()
        .enumerate()
    {
        h.stored_run(id, "acme", 1000 + i as i64).await;
    }
    let a = h.get("/v1/runs?limit=2", Some(ACME)).await;
    let page = a.json();
    assert_eq!(page["object"], "list");
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["run-e", "run-d"]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["first_id"], "run-e");
    assert_eq!(page["last_id"], "run-d");
    let page = h
        .get("/v1/runs?limit=2&after=run-b", Some(ACME))
        .await
        .json();
    assert_eq!(page["data"][0]["id"], "run-a");
    assert_eq!(page["has_more"], false);
    let a = h.get("/v1/runs?limit=0", Some(ACME)).await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST)["param"], "limit");
    let a = h.get("/v1/runs?limit=abc", Some(ACME)).await;
    a.error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_file_round_trips_through_the_openai_files_api() {
    let h = harness();
    let a = h
        .upload(ACME, "data.csv", b"a,b\n1,2\n\x00\xff", Some("assistants"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let file = a.json();
    let id = file["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], 10);
    assert_eq!(file["filename"], "data.csv");
    assert_eq!(file["purpose"], "assistants");
    assert!(file["created_at"].as_i64().unwrap() > 0);

    let list = h.get("/v1/files", Some(ACME)).await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(
        h.get(&format!("/v1/files/{id}"), Some(ACME)).await.json(),
        file
    );

    let content = h.get(&format!("/v1/files/{id}/content"), Some(ACME)).await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(&content.body[..], b"a,b\n1,2\n\x00\xff");
    assert_eq!(
        content.headers[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(
        content.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"data.csv\""
    );
    assert_eq!(content.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

    h.get(&format!("/v1/files/{id}"), Some(BETA))
        .await
        .error(StatusCode::NOT_FOUND);
    h.get(&format!("/v1/files/{id}/content"), Some(BETA))
        .await
        .error(StatusCode::NOT_FOUND);

    let del = h
        .send(
            Request::delete(format!("/v1/files/{id}"))
                .header(header::AUTHORIZATION, format!("Bearer {BETA}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    del.error(StatusCode::NOT_FOUND);
    let del = h
        .send(
            Request::delete(format!("/v1/files/{id}"))
                .header(header::AUTHORIZATION, format!("Bearer {ACME}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        del.json(),
        json!({"id": id, "object": "file", "deleted": true})
    );
    h.get(&format!("/v1/files/{id}"), Some(ACME))
        .await
        .error(StatusCode::NOT_FOUND);
    h.get(&format!("/v1/files/{id}/content"), Some(ACME))
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("/v1/files", Some(ACME)).await.json()["data"],
        json!([])
    );
}

#[tokio::test]
async fn files_are_listed_newest_first_in_pages_of_at_most_100() {
    let h = harness();
    let mut ids = Vec::new();
    for name in ["a.txt", "b.txt", "c.txt"] {
        let up = h.upload(ACME, name, b"x", Some("assistants")).await;
        ids.push(up.json()["id"].as_str().unwrap().to_string());
    }
    let page = h.get("/v1/files?limit=2", Some(ACME)).await.json();
    assert_eq!(page["object"], "list");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    let last = page["last_id"].as_str().unwrap();
    let rest = h
        .get(&format!("/v1/files?limit=2&after={last}"), Some(ACME))
        .await
        .json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["has_more"], false);
    let mut listed: Vec<String> = [&page, &rest]
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().clone())
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    for bad in ["0", "101", "x"] {
        let a = h.get(&format!("/v1/files?limit={bad}"), Some(ACME)).await;
        a.error(StatusCode::BAD_REQUEST);
    }
    let a = h.get("/v1/files?limit=0", Some(ACME)).await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST)["param"], "limit");
}

#[tokio::test]
async fn an_upload_over_the_cap_is_413_and_leaves_nothing() {
    let h = harness_with(&["--max-upload-bytes", "1024"]);
    let a = h
        .upload(ACME, "big.bin", &[7u8; 4096], Some("assistants"))
        .await;
    let e = a.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e["message"].as_str().unwrap().contains("1024"));
    assert_eq!(
        h.get("/v1/files", Some(ACME)).await.json()["data"],
        json!([])
    );
}

#[tokio::test]
async fn an_upload_needs_a_purpose_and_a_file() {
    let h = harness();
    let a = h.upload(ACME, "a.txt", b"x", None).await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST)["param"], "purpose");
    assert_eq!(
        h.get("/v1/files", Some(ACME)).await.json()["data"],
        json!([])
    );
    let a = h
        .post_json("/v1/files", ACME, r#"{"purpose":"assistants"}"#)
        .await;
    a.error(StatusCode::BAD_REQUEST);
    // OpenAI's purposes only (a form's `null` is the text "null", not a missing purpose).
    let a = h.upload(ACME, "a.txt", b"x", Some("null")).await;
    let e = a.error(StatusCode::BAD_REQUEST);
    assert!(e["message"].as_str().unwrap().contains("user_data"), "{e}");
}

#[tokio::test]
async fn an_id_that_is_not_text_is_a_400_in_openai_shape_not_plain_text() {
    let h = harness();
    for path in [
        "/v1/runs/%FF",
        "/v1/runs/%FF/events",
        "/v1/files/%FF",
        "/v1/files/%FF/content",
    ] {
        let a = h.get(path, Some(ACME)).await;
        assert_eq!(a.error(StatusCode::BAD_REQUEST)["param"], "id", "{path}");
    }
}

async fn artifact_run(h: &Harness) -> String {
    let meta = FileMeta {
        id: "file-artifact1".into(),
        tenant: "acme".into(),
        bytes: 5,
        created_at: 1000,
        filename: "out.txt".into(),
        purpose: "assistants_output".into(),
        sha256: String::new(),
        run_id: Some("run-art".into()),
        content_type: None,
    };
    h.store
        .put_file(&meta, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let mut rec = h.stored_run("run-art", "acme", 1000).await;
    rec.artifacts = vec![ArtifactRef {
        id: "file-artifact1".into(),
        name: "out.txt".into(),
        bytes: 5,
        sha256: String::new(),
    }];
    h.store.put_run(&rec).await.unwrap();
    let run = h.get("/v1/runs/run-art", Some(ACME)).await.json();
    let artifact = &run["artifacts"][0];
    assert_eq!(artifact["id"], "file-artifact1");
    assert_eq!(artifact["filename"], "out.txt");
    assert_eq!(artifact["bytes"], 5);
    let expires = artifact["expires_at"].as_i64().unwrap();
    assert!((expires - now_unix() - 3600).abs() <= 2);
    let url = artifact["url"].as_str().unwrap();
    let path = url.strip_prefix("http://api.test").expect(url);
    path.to_string()
}

#[tokio::test]
async fn an_artifact_url_downloads_without_a_token() {
    let h = harness();
    let path = artifact_run(&h).await;
    let a = h.get(&path, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], b"hello");
    assert_eq!(
        a.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"out.txt\""
    );
}

#[tokio::test]
async fn a_changed_or_expired_url_is_forbidden() {
    let h = harness();
    let path = artifact_run(&h).await;
    // Moved to another file, or its signature changed.
    let moved = path.replace("file-artifact1", "file-artifact2");
    let e = h.get(&moved, None).await.error(StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "invalid_signature");
    let (base, _) = path.split_once("expires=").unwrap();
    let later = format!(
        "{base}expires={}&signature={}",
        now_unix() + 99_999,
        "00".repeat(32)
    );
    let e = h.get(&later, None).await.error(StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "invalid_signature");
    let past = now_unix() - 5;
    let expired = format!(
        "/v1/files/file-artifact1/content?expires={past}&signature={}",
        h.signer.sign("file-artifact1", past)
    );
    let e = h.get(&expired, None).await.error(StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "url_expired");
    h.get("/v1/files/file-artifact1/content?signature=ab", None)
        .await
        .error(StatusCode::FORBIDDEN);
    h.get("/v1/files/file-artifact1/content", None)
        .await
        .error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after() {
    let h = harness();
    for remaining in ["1", "0"] {
        let a = h.get("/v1/files", Some(SLOW)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["x-ratelimit-limit-requests"], "2");
        assert_eq!(a.headers["x-ratelimit-remaining-requests"], remaining);
    }
    let a = h.get("/v1/files", Some(SLOW)).await;
    let e = a.error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["code"], "rate_limit_exceeded");
    let retry: u64 = a.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    // Other keys are not affected.
    assert_eq!(h.get("/v1/files", Some(ACME)).await.status, StatusCode::OK);
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("rate_limited_requests_total{tenant=\"slow\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_openai_shape() {
    let h = harness();
    h.get("/v2/nothing", Some(ACME))
        .await
        .error(StatusCode::NOT_FOUND);
    let a = h
        .send(
            Request::put("/v1/runs")
                .header(header::AUTHORIZATION, format!("Bearer {ACME}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn every_answer_has_a_request_id() {
    let h = harness();
    let a = h.get("/healthz", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.headers["x-request-id"].is_empty());
    let a = h
        .send(
            Request::get("/healthz")
                .header("x-request-id", "req-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.headers["x-request-id"], "req-123");
}

#[tokio::test]
async fn readiness_fails_while_the_cluster_is_unreachable() {
    let h = harness();
    let a = h.get("/readyz", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = a.json();
    assert_eq!(body["status"], "not_ready");
    let checks = body["checks"].as_array().unwrap();
    let status_of = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status_of("storage").as_deref(), Some("ok"));
    assert_ne!(status_of("kubernetes").as_deref(), Some("ok"));
    assert_ne!(status_of("run_cache").as_deref(), Some("ok"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let h = harness();
    h.stored_run("run-m1", "acme", 1000).await;
    h.get("/v1/runs/run-m1", Some(ACME)).await;
    let metrics = h.metrics_text();
    assert!(
        metrics.contains(
            "codeinterp_apiserver_http_requests_total{method=\"GET\",route=\"/v1/runs/{id}\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("run-m1"));
}

#[tokio::test]
async fn the_admin_page_is_served_with_a_strict_policy() {
    let h = harness();
    let a = h.get("/admin", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = a.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(String::from_utf8_lossy(&a.body).contains("id=\"run\""));
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let h = harness();
    let a = h.get("/openapi.json", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.json()["paths"]["/v1/runs"].is_object());
}

#[tokio::test]
async fn metrics_are_not_served_on_the_api_port() {
    let h = harness();
    h.get("/metrics", None).await.error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_tokens_are_throttled_per_client_and_then_even_a_right_one_waits() {
    let h = harness_with(&["--auth-failure-rps", "0.01", "--auth-failure-burst", "5"]);
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(h.get("/v1/files", Some(&format!("guess-{i}"))).await.status);
    }
    assert_eq!(&statuses[..5], &[StatusCode::UNAUTHORIZED; 5]);
    assert!(
        statuses[5..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Over the budget the answer does not tell a right token from a wrong one.
    let a = h.get("/v1/files", Some(ACME)).await;
    a.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    // A valid signed link is not held back by the failures.
    let path = {
        let meta = FileMeta {
            id: "file-signed1".into(),
            tenant: "acme".into(),
            bytes: 2,
            created_at: 1,
            filename: "s.txt".into(),
            purpose: "assistants_output".into(),
            sha256: String::new(),
            run_id: None,
            content_type: None,
        };
        h.store
            .put_file(&meta, Bytes::from_static(b"ok"))
            .await
            .unwrap();
        let expires = now_unix() + 60;
        format!(
            "/v1/files/file-signed1/content?expires={expires}&signature={}",
            h.signer.sign("file-signed1", expires)
        )
    };
    assert_eq!(h.get(&path, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_bad_signatures_costs_a_valid_link_nothing() {
    let h = harness_with(&["--anonymous-rps", "0.01", "--anonymous-burst", "3"]);
    let path = artifact_run(&h).await;
    for _ in 0..50 {
        let a = h
            .get(
                "/v1/files/file-artifact1/content?expires=9999999999&signature=00",
                None,
            )
            .await;
        assert!(
            a.status == StatusCode::FORBIDDEN || a.status == StatusCode::TOO_MANY_REQUESTS,
            "{}",
            a.status
        );
    }
    // The anonymous bucket (3) was not touched by the junk: three valid downloads pass.
    for _ in 0..3 {
        assert_eq!(h.get(&path, None).await.status, StatusCode::OK);
    }
    h.get(&path, None)
        .await
        .error(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_run_recorded_in_the_first_layout_is_still_read_by_id() {
    let h = harness();
    let dir = h._dir.path().join("tenants/acme/runs");
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = r#"{"id":"run-v1","tenant":"acme","namespace":"codeinterp","status":"completed","language":"python","created_at":100,"started_at":101,"completed_at":102,"exit_code":0,"signal":null,"stdout":"old output","stderr":"","stdout_truncated":false,"stderr_truncated":false,"usage":{"wall_ms":1,"cpu_ms":1,"memory_peak_bytes":1},"artifacts":[],"error":null}"#;
    std::fs::write(dir.join("run-v1.json"), legacy).unwrap();
    let run = h.get("/v1/runs/run-v1", Some(ACME)).await.json();
    assert_eq!(
        (run["status"].as_str(), run["stdout"].as_str()),
        (Some("completed"), Some("old output"))
    );
    let list = h.get("/v1/runs", Some(ACME)).await.json();
    assert_eq!(list["data"][0]["id"], "run-v1");
    h.get("/v1/runs/run-v1", Some(BETA))
        .await
        .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_record_not_bound_to_its_id_is_not_served() {
    // A record another CodeRun of the same name stored (another namespace, a forged run):
    // without the API's binding of the id to its UID, it answers for nothing.
    let h = harness();
    let rec = h.stored_run("run-real", "acme", 1000).await;
    let mut forged = rec.clone();
    forged.uid = "uid-forged".into();
    forged.id = "run-forged".into();
    h.store.put_run(&forged).await.unwrap();
    h.get("/v1/runs/run-forged", Some(ACME))
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("/v1/runs/run-real", Some(ACME)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_url_signed_with_the_previous_key_works_after_a_rotation_and_only_with_it_configured() {
    const NEW: &str = "the-key-after-rotation-0123456789";
    let previous = std::str::from_utf8(KEY).unwrap();
    let rotated = harness_with(&["--signing-key", NEW, "--signing-key-previous", previous]);
    let forgetful = harness_with(&["--signing-key", NEW]);
    let meta = FileMeta {
        id: "file-rotated1".into(),
        tenant: "acme".into(),
        bytes: 2,
        created_at: 1,
        filename: "r.txt".into(),
        purpose: "assistants_output".into(),
        sha256: String::new(),
        run_id: None,
        content_type: None,
    };
    for h in [&rotated, &forgetful] {
        h.store
            .put_file(&meta, Bytes::from_static(b"ok"))
            .await
            .unwrap();
    }
    let expires = now_unix() + 600;
    let path = |signer: &Signer| {
        format!(
            "/v1/files/file-rotated1/content?expires={expires}&signature={}",
            signer.sign("file-rotated1", expires)
        )
    };
    // Handed out before the rotation, signed with the key of then.
    let before = path(&rotated.signer);
    let a = rotated.get(&before, None).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
    let e = forgetful
        .get(&before, None)
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "invalid_signature");
    let after = path(&Signer::new(NEW.as_bytes(), None).unwrap());
    assert_eq!(rotated.get(&after, None).await.status, StatusCode::OK);
}

// ---- event streams of finished runs, replayed from storage ----

/// One server-sent event.
#[derive(Clone, Debug)]
struct Sse {
    event: String,
    id: String,
    data: Value,
    /// The length of its `data`, as sent.
    bytes: usize,
}

fn parse_sse(body: &[u8]) -> Vec<Sse> {
    let text = std::str::from_utf8(body).expect("an event stream is UTF-8");
    text.split("\n\n")
        .filter_map(|block| {
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            (!event.is_empty()).then(|| Sse {
                event,
                id,
                bytes: data.len(),
                data: serde_json::from_str(&data).unwrap(),
            })
        })
        .collect()
}

fn streamed(events: &[Sse], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.event == "run.output.delta" && e.data["stream"] == stream)
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect()
}

impl Harness {
    async fn events(&self, id: &str, last_event_id: Option<&str>) -> Vec<Sse> {
        let mut req = Request::get(format!("/v1/runs/{id}/events"))
            .header(header::AUTHORIZATION, format!("Bearer {ACME}"));
        if let Some(last) = last_event_id {
            req = req.header("last-event-id", last);
        }
        let a = self.send(req.body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers[header::CONTENT_TYPE], "text/event-stream");
        parse_sse(&a.body)
    }
}

#[tokio::test]
async fn a_finished_runs_events_carry_its_output_once_in_bounded_deltas() {
    // The most a run may print, of the byte that grows most as JSON (six times): before,
    // each event carrying the run carried all of it, about 12 MiB of JSON.
    let h = harness();
    let out = vec![1u8; 1 << 20];
    h.stored_run_printing("run-big", "acme", 1000, &out, &out)
        .await;
    let events = h.events("run-big", None).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[..3], ["run.created", "run.queued", "run.in_progress"]);
    assert_eq!(names.last(), Some(&"run.completed"));
    let whole = "\u{1}".repeat(1 << 20);
    assert!(streamed(&events, "stdout") == whole, "stdout is not whole");
    assert!(streamed(&events, "stderr") == whole, "stderr is not whole");
    for e in &events {
        assert!(
            e.bytes <= 128 * 1024,
            "{} carries {} bytes",
            e.event,
            e.bytes
        );
        if let Some(run) = e.data.get("run") {
            assert!(run["stdout"].as_str().unwrap().len() <= 4096, "{}", e.event);
            assert!(run["stderr"].as_str().unwrap().len() <= 4096, "{}", e.event);
        }
    }
    let seq: Vec<u64> = events
        .iter()
        .map(|e| e.data["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        events.last().unwrap().id,
        format!("{}.{}.{}.0", events.len(), 1 << 20, 1 << 20)
    );
}

#[tokio::test]
async fn a_replay_resumed_after_any_event_goes_on_without_a_gap_or_a_repeat() {
    let h = harness();
    // Characters of two to four bytes across every range boundary, and at the very end a
    // character cut short, which is answered as U+FFFD.
    let mut stdout = "é☃𝄞".repeat(12_000).into_bytes();
    stdout.extend_from_slice(&"☃".as_bytes()[..2]);
    let mut rec = h
        .stored_run_printing("run-resume", "acme", 1000, &stdout, "err ☃\n".as_bytes())
        .await;
    rec.artifacts = ["file-a1", "file-a2"]
        .map(|id| ArtifactRef {
            id: id.into(),
            name: format!("{id}.txt"),
            bytes: 1,
            sha256: String::new(),
        })
        .to_vec();
    h.store.put_run(&rec).await.unwrap();
    let all = h.events("run-resume", None).await;
    let want_stdout = format!("{}\u{FFFD}", "é☃𝄞".repeat(12_000));
    assert_eq!(streamed(&all, "stdout"), want_stdout);
    assert_eq!(streamed(&all, "stderr"), "err ☃\n");
    let artifacts = all.iter().filter(|e| e.event == "run.artifact").count();
    assert_eq!(artifacts, 2);
    for k in [0, 1, 2, 3, all.len() / 2, all.len() - 3, all.len() - 2] {
        let mut resumed = all[..=k].to_vec();
        resumed.extend(h.events("run-resume", Some(&all[k].id)).await);
        let seq: Vec<u64> = resumed
            .iter()
            .map(|e| e.data["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..all.len() as u64).collect::<Vec<_>>(), "after {k}");
        assert_eq!(streamed(&resumed, "stdout"), want_stdout, "after {k}");
        assert_eq!(streamed(&resumed, "stderr"), "err ☃\n", "after {k}");
        let names = |events: &[Sse]| events.iter().map(|e| e.event.clone()).collect::<Vec<_>>();
        assert_eq!(names(&resumed), names(&all), "after {k}");
    }
}
