//! `/v1/containers` through the whole middleware stack, against a Kubernetes API in memory
//! (`fake_kube`: create, get, list, watch, guarded merge patches, delete) whose CodeContainer
//! watch fills the server's cache as the real one does, and a stand-in for the operator's
//! part in file operations. What only a cluster can show (pods, runs sharing state, files a
//! run wrote) is tested in `e2e/tests/containers_api.rs`; what a pure function decides, beside
//! it.
mod fake_kube;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use codeinterp_apiserver::config::Config;
use codeinterp_apiserver::run_cache::{ContainerCache, RunCache};
use codeinterp_crds::FileOpKind;
use codeinterp_crds::{ArtifactRef, Language, Phase, Usage};
use codeinterp_store::{ContainerRun, FileMeta, RECORD_VERSION, RunBinding, RunRecord, Store};
use fake_kube::FakeKube;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const ACME: &str = "acme-token";
const BETA: &str = "beta-token";

struct Harness {
    app: Router,
    store: Store,
    kube: FakeKube,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn harness_with(args: &[&str]) -> Harness {
    harness_of(args, true).await
}

/// The harness, with or without the stand-in operator (without it, no container ever
/// carries out a file change: one that has not started yet).
async fn harness_of(args: &[&str], operator: bool) -> Harness {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let keys = format!("{ACME}:acme:1000:1000,{BETA}:beta:1000:1000");
    let mut all = vec![
        "apiserver",
        "--api-keys",
        &keys,
        "--sandbox-namespace",
        "codeinterp-test",
        "--signing-key",
        "test-signing-key-0123456789",
        "--max-upload-bytes",
        "4096",
    ];
    all.extend_from_slice(args);
    let cfg = Config::parse_from(all);
    let kube = FakeKube::new();
    let client = kube.client();
    let (containers, watching) =
        ContainerCache::start(client.clone(), "codeinterp-test", None, |_| {});
    let state = codeinterp_apiserver::serve::state(
        &cfg,
        cfg.settings().unwrap(),
        store.clone(),
        client,
        RunCache::detached("codeinterp-test"),
        containers.clone(),
        Default::default(),
    )
    .unwrap();
    let mut tasks = vec![tokio::spawn(watching)];
    if operator {
        tasks.push(kube.operator(store.clone()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !containers.is_synced() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never synced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Harness {
        app: codeinterp_apiserver::app::router(state),
        store,
        kube,
        tasks,
        _dir: dir,
    }
}

async fn harness() -> Harness {
    harness_with(&[]).await
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn ok(&self) -> Value {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// The `error` of an OpenAI-shaped error of this status.
    fn error(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let error = self.json()["error"].clone();
        for field in ["message", "type", "param", "code"] {
            assert!(error.get(field).is_some(), "error.{field} missing: {error}");
        }
        error
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
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

    async fn get(&self, path: &str, token: &str) -> Answer {
        let req = Request::get(path).header(header::AUTHORIZATION, bearer(token));
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn delete(&self, path: &str, token: &str) -> Answer {
        let req = Request::delete(path).header(header::AUTHORIZATION, bearer(token));
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        let req = Request::post(path)
            .header(header::AUTHORIZATION, bearer(token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(req).await
    }

    /// `POST /v1/containers/{id}/files` with a multipart form of one file.
    async fn upload(&self, id: &str, token: &str, filename: &str, content: &[u8]) -> Answer {
        let boundary = "XyZboundary42";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let req = Request::post(format!("/v1/containers/{id}/files"))
            .header(header::AUTHORIZATION, bearer(token))
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    async fn create(&self, token: &str, body: Value) -> Value {
        self.post("/v1/containers", token, body).await.ok()
    }

    /// A file of the tenant, as `POST /v1/files` stores it.
    async fn stored_file(&self, tenant: &str, id: &str, filename: &str, content: &[u8]) {
        let meta = FileMeta {
            id: id.into(),
            tenant: tenant.into(),
            bytes: content.len() as u64,
            created_at: 1,
            filename: filename.into(),
            purpose: "assistants".into(),
            sha256: String::new(),
            run_id: None,
            content_type: None,
        };
        self.store
            .put_file(&meta, Bytes::copy_from_slice(content))
            .await
            .unwrap();
    }

    fn name_of(&self, id: &str) -> String {
        id.replacen('_', "-", 1)
    }

    /// A finished run of the tenant, bound to its id as the API binds it, with an image.
    async fn stored_run(&self, tenant: &str, id: &str, created_at: i64, stdout: &str) {
        let rec = RunRecord {
            v: RECORD_VERSION,
            id: id.into(),
            uid: format!("uid-{id}"),
            tenant: tenant.into(),
            namespace: "codeinterp-test".into(),
            phase: Phase::Completed,
            language: Language::Python,
            created_at,
            started_at: Some(created_at),
            completed_at: Some(created_at),
            exit_code: Some(0),
            signal: None,
            stdout_head: stdout.into(),
            stderr_head: String::new(),
            stdout_bytes: stdout.len() as u64,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage::default(),
            artifacts: vec![ArtifactRef {
                id: format!("file-{id}"),
                name: "plot.png".into(),
                bytes: 3,
                sha256: String::new(),
            }],
            error: None,
            start_mode: None,
            preloaded: false,
        };
        self.store.put_run(&rec).await.unwrap();
        let binding = RunBinding {
            uid: rec.uid.clone(),
            namespace: rec.namespace.clone(),
            created_ms: created_at * 1000,
            legacy: false,
        };
        self.store.bind_run(tenant, id, &binding).await.unwrap();
    }
}

#[tokio::test]
async fn a_new_container_has_openais_shape_and_is_read_back_and_listed() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "sess"})).await;
    let id = c["id"].as_str().unwrap();
    assert!(id.starts_with("cntr_"), "{c}");
    assert_eq!(c["object"], "container");
    assert_eq!(c["status"], "running");
    assert_eq!(c["name"], "sess");
    assert_eq!(c["memory_limit"], "1g");
    assert_eq!(
        c["expires_after"],
        json!({"anchor": "last_active_at", "minutes": 20})
    );
    assert_eq!(c["last_active_at"], c["created_at"]);
    assert_eq!(h.get(&format!("/v1/containers/{id}"), ACME).await.ok(), c);
    let list = h.get("/v1/containers", ACME).await.ok();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"], json!([c]));
    // Its CodeContainer: the tenant's label, the name and settings asked for.
    let cr = h.kube.get(&h.name_of(id)).unwrap();
    assert_eq!(cr.tenant_in("codeinterp-test"), "acme");
    assert_eq!(cr.spec.idle_minutes, 20);
}

#[tokio::test]
async fn the_sdks_settings_reach_the_codecontainer() {
    let h = harness().await;
    let c = h
        .create(
            ACME,
            json!({"name": "big", "memory_limit": "4g",
                "expires_after": {"anchor": "last_active_at", "minutes": 90}}),
        )
        .await;
    assert_eq!(c["memory_limit"], "4g");
    assert_eq!(c["expires_after"]["minutes"], 90);
    let cr = h.kube.get(&h.name_of(c["id"].as_str().unwrap())).unwrap();
    assert_eq!(cr.spec.memory_limit.as_str(), "4g");
    assert_eq!(cr.spec.idle_minutes, 90);
}

#[tokio::test]
async fn a_memory_limit_over_the_services_is_a_400_naming_it_and_creates_nothing() {
    let h = harness_with(&["--container-max-memory", "1g"]).await;
    let e = h
        .post(
            "/v1/containers",
            ACME,
            json!({"name": "x", "memory_limit": "4g"}),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "memory_limit");
    assert!(h.kube.names().is_empty());
}

#[tokio::test]
async fn another_tenants_container_is_not_found_everywhere() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "mine"})).await;
    let id = c["id"].as_str().unwrap();
    h.stored_file("beta", "file-b1", "b.txt", b"beta").await;
    for path in [
        format!("/v1/containers/{id}"),
        format!("/v1/containers/{id}/files"),
        format!("/v1/containers/{id}/files/file-b1"),
        format!("/v1/containers/{id}/files/file-b1/content"),
        format!("/v1/containers/{id}/runs"),
    ] {
        let e = h.get(&path, BETA).await.error(StatusCode::NOT_FOUND);
        assert!(
            e["message"].as_str().unwrap().contains("No such container"),
            "{path}: {e}"
        );
    }
    h.delete(&format!("/v1/containers/{id}"), BETA)
        .await
        .error(StatusCode::NOT_FOUND);
    h.upload(id, BETA, "x.txt", b"x")
        .await
        .error(StatusCode::NOT_FOUND);
    let files = format!("/v1/containers/{id}/files");
    h.post(&files, BETA, json!({"file_id": "file-b1"}))
        .await
        .error(StatusCode::NOT_FOUND);
    let run = json!({"language": "python", "code": "print(1)", "container": id});
    let e = h
        .post("/v1/runs", BETA, run)
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(e["param"], "container");
    assert_eq!(h.get("/v1/containers", BETA).await.ok()["data"], json!([]));
    // Still there for its tenant.
    h.get(&format!("/v1/containers/{id}"), ACME).await.ok();
}

#[tokio::test]
async fn ids_that_are_not_container_ids_are_not_found() {
    let h = harness().await;
    for id in ["cntr_nothex", "cntr-0123", "run-abc", "cntr_0123"] {
        h.get(&format!("/v1/containers/{id}"), ACME)
            .await
            .error(StatusCode::NOT_FOUND);
    }
    let run = json!({"language": "python", "code": "print(1)", "container": "../x"});
    let e = h
        .post("/v1/runs", ACME, run)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "container");
}

#[tokio::test]
async fn past_the_cap_a_tenant_gets_429_with_retry_after_until_one_is_deleted() {
    let h = harness_with(&["--max-containers-per-tenant", "2"]).await;
    let first = h.create(ACME, json!({"name": "1"})).await;
    h.create(ACME, json!({"name": "2"})).await;
    let full = h.post("/v1/containers", ACME, json!({"name": "3"})).await;
    let e = full.error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["code"], "container_limit_reached");
    assert!(e["message"].as_str().unwrap().contains("2"), "{e}");
    assert!(full.headers.contains_key(header::RETRY_AFTER));
    // Another tenant has room of its own.
    h.create(BETA, json!({"name": "b"})).await;
    // An ended container does not count.
    let first_name = h.name_of(first["id"].as_str().unwrap());
    h.kube
        .set_status(&first_name, json!({"phase": "Expired", "reason": "idle"}));
    wait_until(|| async {
        h.post("/v1/containers", ACME, json!({"name": "3"}))
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let deleted = h
        .delete(
            &format!("/v1/containers/{}", first["id"].as_str().unwrap()),
            ACME,
        )
        .await
        .ok();
    assert_eq!(
        deleted,
        json!({"id": first["id"], "object": "container.deleted", "deleted": true})
    );
}

#[tokio::test]
async fn containers_a_lagging_cache_does_not_show_yet_count_against_the_cap() {
    let h = harness_with(&["--max-containers-per-tenant", "2"]).await;
    // The watch delivers nothing for longer than a creation waits for its container.
    h.kube.hold_watches(true);
    for name in ["1", "2"] {
        h.post("/v1/containers", ACME, json!({"name": name}))
            .await
            .ok();
    }
    let e = h
        .post("/v1/containers", ACME, json!({"name": "3"}))
        .await
        .error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["code"], "container_limit_reached");
    assert_eq!(h.kube.names().len(), 2);
    // Once the cache has them, they count from there, once each.
    h.kube.hold_watches(false);
    wait_until(|| async {
        h.get("/v1/containers", ACME).await.ok()["data"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    h.post("/v1/containers", ACME, json!({"name": "3"}))
        .await
        .error(StatusCode::TOO_MANY_REQUESTS);
    h.post("/v1/containers", BETA, json!({"name": "b"}))
        .await
        .ok();
}

#[tokio::test]
async fn creations_at_once_never_pass_the_cap() {
    let h = harness_with(&["--max-containers-per-tenant", "3"]).await;
    let tries = (0..8).map(|i| h.post("/v1/containers", ACME, json!({"name": format!("c{i}")})));
    let answers = futures::future::join_all(tries).await;
    let made = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((made, refused), (3, 5));
    assert_eq!(h.kube.names().len(), 3);
}

async fn wait_until<F, Fut>(mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_deleted_container_is_gone_at_once() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let path = format!("/v1/containers/{}", c["id"].as_str().unwrap());
    h.delete(&path, ACME).await.ok();
    h.get(&path, ACME).await.error(StatusCode::NOT_FOUND);
    h.delete(&path, ACME).await.error(StatusCode::NOT_FOUND);
    assert!(h.kube.names().is_empty());
}

#[tokio::test]
async fn a_container_starts_with_the_files_named_under_their_names() {
    let h = harness().await;
    h.stored_file("acme", "file-a1", "../data set.csv", b"a,b")
        .await;
    h.stored_file("acme", "file-a2", "notes.txt", b"n").await;
    let c = h
        .create(
            ACME,
            json!({"name": "x", "file_ids": ["file-a1", "file-a2"]}),
        )
        .await;
    let cr = h.kube.get(&h.name_of(c["id"].as_str().unwrap())).unwrap();
    let ops: Vec<(u64, FileOpKind, &str, Option<&str>)> = cr
        .spec
        .file_ops
        .iter()
        .map(|o| (o.seq, o.kind, o.path.as_str(), o.file_id.as_deref()))
        .collect();
    assert_eq!(
        ops,
        [
            (1, FileOpKind::Put, "data set.csv", Some("file-a1")),
            (2, FileOpKind::Put, "notes.txt", Some("file-a2")),
        ]
    );
    // Another tenant's file is no file of this one.
    h.stored_file("beta", "file-b1", "b.txt", b"b").await;
    let e = h
        .post(
            "/v1/containers",
            ACME,
            json!({"name": "x", "file_ids": ["file-a1", "file-b1"]}),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("file_ids[1]"), Some("file_not_found"))
    );
}

#[tokio::test]
async fn an_uploaded_file_is_in_the_container_under_mnt_data_and_can_be_read_back() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    let f = h
        .upload(id, ACME, "../../etc/in put.txt", b"hello")
        .await
        .ok();
    assert_eq!(f["object"], "container.file");
    assert_eq!(f["path"], "/mnt/data/in put.txt");
    assert_eq!(
        (f["bytes"].as_u64(), f["source"].as_str()),
        (Some(5), Some("user"))
    );
    assert_eq!(f["container_id"], id);
    let file_id = f["id"].as_str().unwrap();
    let list = h
        .get(&format!("/v1/containers/{id}/files"), ACME)
        .await
        .ok();
    assert_eq!(list["data"], json!([f]));
    let one = h
        .get(&format!("/v1/containers/{id}/files/{file_id}"), ACME)
        .await
        .ok();
    assert_eq!(one, f);
    let content = h
        .get(
            &format!("/v1/containers/{id}/files/{file_id}/content"),
            ACME,
        )
        .await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(&content.body[..], b"hello");
    assert_eq!(
        content.headers[header::CONTENT_TYPE],
        "application/octet-stream"
    );
}

#[tokio::test]
async fn a_change_to_a_container_that_has_not_started_is_accepted_and_done_when_it_starts() {
    // A request waits a second for its change (a 6 s deadline less the 5 s margin); no
    // operator carries anything out until the container "starts" below.
    let mut h = harness_of(&["--request-timeout-seconds", "6"], false).await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    let up = h.upload(id, ACME, "late.txt", b"later").await;
    assert_eq!(up.status, StatusCode::ACCEPTED, "{:?}", up.body);
    let f = up.json();
    assert_eq!(
        (
            f["object"].as_str(),
            f["path"].as_str(),
            f["bytes"].as_u64()
        ),
        (Some("container.file"), Some("/mnt/data/late.txt"), Some(5))
    );
    let files = format!("/v1/containers/{id}/files");
    assert_eq!(h.get(&files, ACME).await.ok()["data"], json!([]));

    // The container starts and carries out what waited: the file is there, and a delete
    // now answers once it is done.
    h.tasks.push(h.kube.operator(h.store.clone()));
    let name = h.kube.names().pop().unwrap();
    h.kube.set_status(&name, json!({"fileOpsDone": 0}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = h.get(&files, ACME).await.ok();
        if list["data"].as_array().is_some_and(|d| d.len() == 1) {
            assert_eq!(list["data"][0]["path"], "/mnt/data/late.txt");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never carried out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file_id = f["id"].as_str().unwrap();
    let gone = h.delete(&format!("{files}/{file_id}"), ACME).await.ok();
    assert_eq!(gone["deleted"], true);
}

#[tokio::test]
async fn an_uploaded_file_of_the_tenant_is_copied_in_by_id() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    h.stored_file("acme", "file-a1", "report.csv", b"1,2").await;
    let files = format!("/v1/containers/{id}/files");
    let f = h
        .post(&files, ACME, json!({"file_id": "file-a1"}))
        .await
        .ok();
    assert_eq!(
        (f["id"].as_str(), f["path"].as_str()),
        (Some("file-a1"), Some("/mnt/data/report.csv"))
    );
    let e = h
        .post(&files, ACME, json!({"file_id": "file-nope"}))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("file_id"), Some("file_not_found"))
    );
}

#[tokio::test]
async fn uploads_at_once_are_all_carried_out_none_lost() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("f{i}.txt")).collect();
    let uploads = names.iter().map(|n| h.upload(id, ACME, n, n.as_bytes()));
    for answer in futures::future::join_all(uploads).await {
        answer.ok();
    }
    let list = h
        .get(&format!("/v1/containers/{id}/files?limit=100"), ACME)
        .await
        .ok();
    let mut paths: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    let want: Vec<String> = names.iter().map(|n| format!("/mnt/data/{n}")).collect();
    assert_eq!(paths, want);
    // Done operations were dropped as others were appended: the list stays short.
    let cr = h.kube.get(&h.name_of(id)).unwrap();
    assert!(
        cr.spec.file_ops.len() < names.len(),
        "{:?}",
        cr.spec.file_ops
    );
    assert_eq!(cr.status.unwrap().file_ops_done, 8);
}

#[tokio::test]
async fn a_change_the_container_refuses_is_a_400_with_its_message() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    let e = h
        .upload(id, ACME, "refuse.txt", b"x")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no room for refuse.txt"),
        "{e}"
    );
    assert_eq!(e["code"], "container_file_failed");
}

#[tokio::test]
async fn a_deleted_file_leaves_the_folder() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    let f = h.upload(id, ACME, "gone.txt", b"bye").await.ok();
    let path = format!("/v1/containers/{id}/files/{}", f["id"].as_str().unwrap());
    let deleted = h.delete(&path, ACME).await.ok();
    assert_eq!(
        deleted,
        json!({"id": f["id"], "object": "container.file.deleted", "deleted": true})
    );
    h.get(&path, ACME).await.error(StatusCode::NOT_FOUND);
    let list = h
        .get(&format!("/v1/containers/{id}/files"), ACME)
        .await
        .ok();
    assert_eq!(list["data"], json!([]));
    let cr = h.kube.get(&h.name_of(id)).unwrap();
    let last = cr.spec.file_ops.last().unwrap();
    assert_eq!(
        (last.kind, last.path.as_str()),
        (FileOpKind::Delete, "gone.txt")
    );
}

#[tokio::test]
async fn an_ended_container_takes_no_files_and_no_runs() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "x"})).await;
    let id = c["id"].as_str().unwrap();
    h.kube.set_status(
        &h.name_of(id),
        json!({"phase": "Expired", "reason": "idle"}),
    );
    wait_until(|| async {
        h.get(&format!("/v1/containers/{id}"), ACME).await.json()["status"] == "expired"
    })
    .await;
    let e = h
        .upload(id, ACME, "late.txt", b"x")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["message"], "Container is expired.");
    let run = json!({"language": "python", "code": "print(1)", "container": id});
    let e = h
        .post("/v1/runs", ACME, run)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(
        (
            e["message"].as_str(),
            e["param"].as_str(),
            e["code"].as_str()
        ),
        (
            Some("Container is expired."),
            Some("container"),
            Some("container_expired")
        )
    );
}

#[tokio::test]
async fn lists_are_paged_and_ordered() {
    let h = harness().await;
    for i in 0..3 {
        h.create(ACME, json!({"name": format!("c{i}")})).await;
    }
    let asc = h.get("/v1/containers?order=asc&limit=2", ACME).await.ok();
    let desc = h.get("/v1/containers?limit=2", ACME).await.ok();
    let firsts = |page: &Value| page["data"].as_array().unwrap().len();
    assert_eq!((firsts(&asc), asc["has_more"].as_bool()), (2, Some(true)));
    let after = asc["last_id"].as_str().unwrap();
    let rest = h
        .get(&format!("/v1/containers?order=asc&after={after}"), ACME)
        .await
        .ok();
    assert_eq!(
        (firsts(&rest), rest["has_more"].as_bool()),
        (1, Some(false))
    );
    assert_eq!(desc["data"][0]["id"], rest["data"][0]["id"]);
    let e = h
        .get("/v1/containers?order=sideways", ACME)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "order");
    let e = h
        .get("/v1/containers?after=cntr_ffff", ACME)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "after");
}

#[tokio::test]
async fn a_containers_runs_are_listed_oldest_first_with_their_code_and_output() {
    let h = harness().await;
    let c = h.create(ACME, json!({"name": "notebook"})).await;
    let id = c["id"].as_str().unwrap();
    let name = h.name_of(id);
    // As the API indexes the runs it makes in a container; the second and third in the
    // same second, in the order of their resourceVersion.
    let cells = [
        ("run-b", 100, 7, "x = 41", ""),
        ("run-c", 101, 20, "x += 1; print(x)", "42\n"),
        ("run-a", 101, 300, "print(x * 2)", "84\n"),
    ];
    for (run, created_at, sequence, code, stdout) in cells {
        h.stored_run("acme", run, created_at, stdout).await;
        let entry = ContainerRun::new(run, created_at, sequence, code);
        h.store
            .put_container_run("acme", &name, &entry)
            .await
            .unwrap();
    }
    let runs = format!("/v1/containers/{id}/runs");
    let page = h.get(&runs, ACME).await.ok();
    let data = page["data"].as_array().unwrap();
    let shown: Vec<(&str, &str, &str)> = data
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["code"].as_str().unwrap(),
                r["stdout"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("run-b", "x = 41", ""),
            ("run-c", "x += 1; print(x)", "42\n"),
            ("run-a", "print(x * 2)", "84\n")
        ]
    );
    let first = &data[0];
    assert_eq!(
        (&first["object"], &first["container"], &first["status"]),
        (&json!("run"), &json!(id), &json!("completed"))
    );
    assert_eq!(first["code_truncated"], false);
    let url = first["artifacts"][0]["url"].as_str().unwrap();
    assert!(
        url.contains("/v1/files/file-run-b/content?expires="),
        "{url}"
    );
    assert_eq!(page["has_more"], false);

    let newest = h
        .get(&format!("{runs}?order=desc&limit=2"), ACME)
        .await
        .ok();
    assert_eq!(
        (&newest["first_id"], &newest["last_id"], &newest["has_more"]),
        (&json!("run-a"), &json!("run-c"), &json!(true))
    );
    let rest = h
        .get(&format!("{runs}?after=run-b&limit=1"), ACME)
        .await
        .ok();
    assert_eq!(
        (&rest["first_id"], &rest["has_more"]),
        (&json!("run-c"), &json!(true))
    );
    let e = h
        .get(&format!("{runs}?after=run-zzz"), ACME)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "after");

    // Deleting the container forgets the list; the runs stay the tenant's.
    h.delete(&format!("/v1/containers/{id}"), ACME).await.ok();
    h.get(&runs, ACME).await.error(StatusCode::NOT_FOUND);
    assert!(
        h.store
            .list_container_runs("acme", &name, None, 20, false)
            .await
            .unwrap()
            .unwrap()
            .runs
            .is_empty()
    );
    h.get("/v1/runs/run-c", ACME).await.ok();
}
