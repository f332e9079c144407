//! The containers API end to end: API servers of the test's own (fresh tenants, so their
//! containers and caps are theirs alone) in front of the real operator, real container pods
//! (localhost/codeinterp/runner-container:dev) and real object storage. Each test asserts
//! what a client sees of what only a cluster can show: state kept between runs, files that
//! really reach `/mnt/data` and come back, one tenant kept from another's container. What
//! the API answers without a cluster is tested in `apiserver/tests/containers.rs`.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeContainer, TENANT_LABEL};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use testkit::rest::*;
use testkit::{DeleteContainersOnDrop, client};

const WITHIN: Duration = Duration::from_secs(120);

/// A server of the test's own with one tenant (and a second, to be refused), whose
/// containers are deleted when the test ends.
struct Session {
    server: ApiServer,
    mine: Key,
    theirs: Key,
    _clean: [DeleteContainersOnDrop; 2],
}

impl Session {
    async fn start(prefix: &str, env: &[(&str, String)]) -> Self {
        let (mine, theirs) = (
            Key::fresh(&format!("{prefix}-a")),
            Key::fresh(&format!("{prefix}-b")),
        );
        let server = ApiServer::start(&Key::api_keys(&[&mine, &theirs]), env).await;
        let clean = [&mine, &theirs]
            .map(|k| DeleteContainersOnDrop(format!("{TENANT_LABEL}={}", k.tenant)));
        Session {
            server,
            mine,
            theirs,
            _clean: clean,
        }
    }

    fn api(&self) -> Api {
        self.server.api(&self.mine.token)
    }

    fn other(&self) -> Api {
        self.server.api(&self.theirs.token)
    }
}

/// A new container of the tenant; its id.
async fn new_container(api: &Api, name: &str) -> String {
    let c = api
        .post("/v1/containers", &json!({"name": name}))
        .await
        .expect(200);
    assert_eq!(c["object"], "container", "{c}");
    assert_eq!(c["status"], "running", "{c}");
    c["id"].as_str().unwrap().to_string()
}

fn run_body(container: &str, language: &str, code: &str) -> Value {
    json!({"language": language, "code": code, "container": container,
        "limits": {"timeout_ms": 20000}})
}

/// A run in the container, waited for.
async fn run_in(api: &Api, container: &str, language: &str, code: &str) -> Value {
    let run = api.create_run(run_body(container, language, code)).await;
    assert_eq!(run["status"], "completed", "{language}: {run}");
    assert_eq!(run["container"], container, "{run}");
    run
}

/// The container's files, by path.
async fn files_of(api: &Api, container: &str) -> Vec<Value> {
    let list = api
        .get(&format!("/v1/containers/{container}/files?limit=100"))
        .await
        .expect(200);
    list["data"].as_array().unwrap().clone()
}

async fn upload_into(api: &Api, container: &str, filename: &str, bytes: &[u8]) -> Reply {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(filename.to_string()),
    );
    let path = format!("/v1/containers/{container}/files");
    api.send(api.request(reqwest::Method::POST, &path).multipart(form))
        .await
}

#[tokio::test]
async fn two_runs_share_state_in_each_language() {
    let s = Session::start("cntr-state", &[]).await;
    let api = s.api();
    let id = new_container(&api, "state").await;
    let cases = [
        ("python", "x = 41", "x += 1; print(x)"),
        ("node", "var x = 41", "x += 1; console.log(x)"),
        ("ruby", "x = 41", "x += 1; puts x"),
        ("php", "<?php $x = 41;", "<?php $x += 1; echo $x, \"\\n\";"),
    ];
    for (language, first, second) in cases {
        run_in(&api, &id, language, first).await;
        let started = Instant::now();
        let run = run_in(&api, &id, language, second).await;
        eprintln!(
            "{language}: a run in a warm container took {} ms (POST to answer)",
            started.elapsed().as_millis()
        );
        assert_eq!(run["stdout"], "42\n", "{language}: {run}");
    }
    // The container counts as active since.
    let c = api.get(&format!("/v1/containers/{id}")).await.expect(200);
    assert!(
        c["last_active_at"].as_i64() >= c["created_at"].as_i64(),
        "{c}"
    );
}

#[tokio::test]
async fn an_uploaded_file_is_read_by_a_run_and_a_deleted_one_is_gone() {
    let s = Session::start("cntr-files", &[]).await;
    let api = s.api();
    let id = new_container(&api, "files").await;
    let started = Instant::now();
    let f = upload_into(&api, &id, "in.txt", b"hello container")
        .await
        .expect(200);
    eprintln!(
        "upload into a new container: {} ms (its pod started meanwhile)",
        started.elapsed().as_millis()
    );
    assert_eq!(f["object"], "container.file", "{f}");
    assert_eq!(
        (f["path"].as_str(), f["source"].as_str()),
        (Some("/mnt/data/in.txt"), Some("user"))
    );
    let read = "print(open('/mnt/data/in.txt').read(), end='')";
    assert_eq!(
        run_in(&api, &id, "python", read).await["stdout"],
        "hello container"
    );
    let started = Instant::now();
    let second = upload_into(&api, &id, "second.txt", b"2").await.expect(200);
    eprintln!(
        "upload into a running container: {} ms",
        started.elapsed().as_millis()
    );
    let listed: Vec<String> = files_of(&api, &id)
        .await
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    for want in [&f, &second] {
        assert!(
            listed.iter().any(|l| l == want["id"].as_str().unwrap()),
            "{want} is not in {listed:?}"
        );
    }
    let gone = api
        .delete(&format!(
            "/v1/containers/{id}/files/{}",
            f["id"].as_str().unwrap()
        ))
        .await
        .expect(200);
    assert_eq!(gone["object"], "container.file.deleted", "{gone}");
    let exists = "import os; print(os.path.exists('/mnt/data/in.txt'), os.path.exists('/mnt/data/second.txt'))";
    assert_eq!(
        run_in(&api, &id, "python", exists).await["stdout"],
        "False True\n"
    );
}

#[tokio::test]
async fn a_file_a_run_writes_is_listed_as_the_assistants_and_downloadable() {
    let s = Session::start("cntr-out", &[]).await;
    let api = s.api();
    let id = new_container(&api, "out").await;
    let write = "open('/mnt/data/out.csv', 'w').write('a,b\\n1,2\\n')";
    run_in(&api, &id, "python", write).await;
    let files = files_of(&api, &id).await;
    let out = files
        .iter()
        .find(|f| f["path"] == "/mnt/data/out.csv")
        .unwrap_or_else(|| panic!("out.csv is not listed: {files:?}"));
    assert_eq!(out["source"], "assistant", "{out}");
    assert_eq!(out["container_id"], id.as_str(), "{out}");
    assert_eq!(out["bytes"], 8, "{out}");
    let file_id = out["id"].as_str().unwrap();
    let one = api
        .get(&format!("/v1/containers/{id}/files/{file_id}"))
        .await
        .expect(200);
    assert_eq!(&one, out);
    let content = api
        .get(&format!("/v1/containers/{id}/files/{file_id}/content"))
        .await;
    assert_eq!(content.status, 200, "{}", content.text());
    assert_eq!(content.body, b"a,b\n1,2\n");
}

#[tokio::test]
async fn another_tenants_key_gets_404_on_the_container_its_files_and_its_runs() {
    let s = Session::start("cntr-tenant", &[]).await;
    let (api, other) = (s.api(), s.other());
    let id = new_container(&api, "private").await;
    let f = upload_into(&api, &id, "secret.txt", b"mine")
        .await
        .expect(200);
    let file_id = f["id"].as_str().unwrap();
    for path in [
        format!("/v1/containers/{id}"),
        format!("/v1/containers/{id}/files"),
        format!("/v1/containers/{id}/files/{file_id}"),
        format!("/v1/containers/{id}/files/{file_id}/content"),
    ] {
        other.get(&path).await.openai_error(404);
    }
    other
        .delete(&format!("/v1/containers/{id}"))
        .await
        .openai_error(404);
    other
        .delete(&format!("/v1/containers/{id}/files/{file_id}"))
        .await
        .openai_error(404);
    upload_into(&other, &id, "x.txt", b"theirs")
        .await
        .openai_error(404);
    let e = other
        .post(
            "/v1/runs",
            &run_body(&id, "python", "print(open('/mnt/data/secret.txt').read())"),
        )
        .await
        .openai_error(404);
    assert_eq!(e["param"], "container", "{e}");
    let listed = other.get("/v1/containers").await.expect(200);
    assert_eq!(listed["data"], json!([]), "{listed}");
    // The owner still has it all.
    let read = "print(open('/mnt/data/secret.txt').read(), end='')";
    assert_eq!(run_in(&api, &id, "python", read).await["stdout"], "mine");
}

#[tokio::test]
async fn past_the_cap_a_tenant_gets_429_until_it_deletes_one() {
    let s = Session::start("cntr-cap", &[("MAX_CONTAINERS_PER_TENANT", "2".into())]).await;
    let api = s.api();
    let first = new_container(&api, "one").await;
    new_container(&api, "two").await;
    let full = api.post("/v1/containers", &json!({"name": "three"})).await;
    let e = full.openai_error(429);
    assert_eq!(e["code"], "container_limit_reached", "{e}");
    assert!(full.header("retry-after").is_some(), "{:?}", full.headers);
    // The other tenant has a cap of its own.
    new_container(&s.other(), "theirs").await;
    let deleted = api
        .delete(&format!("/v1/containers/{first}"))
        .await
        .expect(200);
    assert_eq!(
        deleted,
        json!({"id": first, "object": "container.deleted", "deleted": true})
    );
    api.get(&format!("/v1/containers/{first}"))
        .await
        .openai_error(404);
    new_container(&api, "three").await;
}

#[tokio::test]
async fn runs_in_a_stopped_or_deleted_container_are_refused_and_those_waiting_fail() {
    let s = Session::start("cntr-end", &[]).await;
    let api = s.api();
    let id = new_container(&api, "ending").await;
    run_in(&api, &id, "python", "print('warm')").await;
    // One run busy, one waiting behind it; then the container is stopped.
    let mut busy = run_body(&id, "python", "import time; time.sleep(5)");
    busy["wait"] = json!(false);
    api.post("/v1/runs", &busy).await.expect(200);
    let mut waiting = run_body(&id, "python", "print('never')");
    waiting["wait"] = json!(false);
    let waiting = api.post("/v1/runs", &waiting).await.expect(200);
    let containers: kube::Api<CodeContainer> =
        kube::Api::namespaced(client().await, SANDBOX_NAMESPACE);
    let name = id.replacen('_', "-", 1);
    let stop = json!({"spec": {"stop": true}});
    containers
        .patch(&name, &PatchParams::default(), &Patch::Merge(&stop))
        .await
        .unwrap();
    let ended = api.wait_run(waiting["id"].as_str().unwrap(), WITHIN).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(
        ended["error"]["message"], "Container is expired.",
        "{ended}"
    );
    let deadline = Instant::now() + WITHIN;
    loop {
        let c = api.get(&format!("/v1/containers/{id}")).await.expect(200);
        if c["status"] != "running" {
            assert_eq!(c["status"], "deleted", "a stopped container: {c}");
            break;
        }
        assert!(Instant::now() < deadline, "still running: {c}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let e = api
        .post("/v1/runs", &run_body(&id, "python", "print(1)"))
        .await
        .openai_error(400);
    assert_eq!(
        (e["message"].as_str(), e["code"].as_str()),
        (Some("Container is expired."), Some("container_expired"))
    );
    upload_into(&api, &id, "late.txt", b"x")
        .await
        .openai_error(400);
    // Deleted: it names nothing any more.
    api.delete(&format!("/v1/containers/{id}"))
        .await
        .expect(200);
    api.post("/v1/runs", &run_body(&id, "python", "print(1)"))
        .await
        .openai_error(404);
}

fn ticker(prefix: &str) -> String {
    format!(
        "import time\nfor i in range(6):\n    print('{prefix}', i, flush=True)\n    time.sleep(0.3)"
    )
}

fn ticks(prefix: &str) -> String {
    (0..6).map(|i| format!("{prefix} {i}\n")).collect()
}

#[tokio::test]
async fn a_run_in_a_container_streams_its_own_output_only() {
    let s = Session::start("cntr-sse", &[]).await;
    let api = s.api();
    let id = new_container(&api, "stream").await;
    run_in(&api, &id, "python", "print('before')").await;
    let mut first = run_body(&id, "python", &ticker("first"));
    first["wait"] = json!(false);
    let first = api.post("/v1/runs", &first).await.expect(200);
    // Made while the first runs: it waits for it, then runs, in the same pod and log.
    let mut second = run_body(&id, "python", &ticker("second"));
    second["stream"] = json!(true);
    let mut events = api.stream_run(second).await;
    let got = events.to_end(WITHIN).await;
    let last = got.last().expect("events");
    assert_eq!(last.event, "run.completed", "{last:?}");
    assert_eq!(streamed_output(&got, "stdout"), ticks("second"));
    // Live output comes as the program prints it, well before the run's end, not all at
    // once after it (as a replay from storage would).
    let first_delta = got
        .iter()
        .find(|e| e.event == "run.output.delta")
        .expect("output deltas");
    let ahead = last.at.duration_since(first_delta.at);
    eprintln!(
        "the first delta came {} ms before the end",
        ahead.as_millis()
    );
    assert!(
        ahead >= Duration::from_millis(900),
        "the output came all at once at the end ({ahead:?}): not followed live"
    );
    let mut replay = api.events(first["id"].as_str().unwrap(), None).await;
    let first_events = replay.to_end(WITHIN).await;
    assert_eq!(streamed_output(&first_events, "stdout"), ticks("first"));
}
