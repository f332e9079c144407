//! `/mcp` driven through the whole middleware stack with `oneshot`, as an MCP client speaks
//! to it over Streamable HTTP: who may reach it (keys, the 401 challenge, Origin, token
//! buckets), what `tools/list` tells a model, and that a failure is a tool result with
//! `isError` and the REST API's message. Runs answered here come from stored records (the
//! kube client points nowhere); running code through MCP is tested on the real cluster by
//! `clients/mcp`.
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use codeinterp_apiserver::config::Config;
use codeinterp_apiserver::run_cache::{ContainerCache, RunCache};
use codeinterp_crds::{ArtifactRef, Language, Phase, Usage};
use codeinterp_store::{
    FileMeta, HEAD_BYTES, OutputStream, RECORD_VERSION, RunBinding, RunRecord, Store, head,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const ACME: &str = "acme-token";
const SLOW: &str = "slow-token";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n not really a picture";

struct Harness {
    app: Router,
    store: Store,
    _dir: tempfile::TempDir,
}

fn harness_with(args: &[&str]) -> Harness {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let keys = format!("{ACME}:acme:100:100,{SLOW}:slow:0.01:2");
    let mut all = vec![
        "apiserver",
        "--api-keys",
        &keys,
        "--public-base-url",
        "https://ci.example",
        "--sandbox-namespace",
        "codeinterp-test",
        "--signing-key",
        "test-signing-key-0123456789",
    ];
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
        app: codeinterp_apiserver::app::router(state),
        store,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(&[])
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

    /// The JSON-RPC result of a 200 answer.
    fn result(&self) -> Value {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert!(body.get("error").is_none(), "a protocol error: {body}");
        body["result"].clone()
    }
}

/// A JSON-RPC request as an MCP client posts it.
fn rpc(method: &str, params: Value) -> Request<Body> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Request::post("/mcp")
        .header(header::HOST, "ci.example")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn with_key(mut req: Request<Body>, token: &str) -> Request<Body> {
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    req
}

fn initialize() -> Value {
    json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}
    })
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

    async fn call(&self, tool: &str, arguments: Value) -> Value {
        let req = rpc("tools/call", json!({"name": tool, "arguments": arguments}));
        self.send(with_key(req, ACME)).await.result()
    }

    /// A finished run of `acme`, stored as the operator stores it and bound to its id, with
    /// a PNG and a CSV among its output files.
    async fn stored_run(&self, id: &str, created_at: i64, exit_code: i32) {
        let uid = format!("uid-{id}");
        let artifacts = [
            ("file-png1", "plot.png", PNG),
            ("file-csv1", "data.csv", b"a,b\n"),
        ];
        let mut refs = vec![];
        for (file_id, name, bytes) in artifacts {
            let meta = FileMeta {
                id: file_id.into(),
                tenant: "acme".into(),
                bytes: bytes.len() as u64,
                created_at,
                filename: name.into(),
                purpose: "assistants_output".into(),
                sha256: "x".into(),
                run_id: Some(id.into()),
                content_type: codeinterp_store::image_type(bytes).map(str::to_string),
            };
            self.store
                .put_file(&meta, Bytes::from_static(bytes))
                .await
                .unwrap();
            refs.push(ArtifactRef {
                id: file_id.into(),
                name: name.into(),
                bytes: bytes.len() as u64,
                sha256: "x".into(),
            });
        }
        let (stdout, stderr) = (b"hello from the run\n", b"a warning\n");
        let rec = RunRecord {
            v: RECORD_VERSION,
            id: id.into(),
            uid: uid.clone(),
            tenant: "acme".into(),
            namespace: "codeinterp-test".into(),
            phase: Phase::Completed,
            language: Language::Python,
            created_at,
            started_at: Some(created_at + 1),
            completed_at: Some(created_at + 2),
            exit_code: Some(exit_code),
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
            artifacts: refs,
            error: None,
            start_mode: None,
            preloaded: false,
        };
        for (stream, bytes) in [
            (OutputStream::Stdout, &stdout[..]),
            (OutputStream::Stderr, &stderr[..]),
        ] {
            let bytes = Bytes::copy_from_slice(bytes);
            let store = &self.store;
            store
                .put_output("acme", "codeinterp-test", &uid, stream, bytes)
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
        self.store.bind_run("acme", id, &binding).await.unwrap();
    }
}

/// The text of a tool result's first block.
fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn without_a_key_the_answer_is_401_with_the_challenge_pointing_at_the_metadata() {
    let h = harness();
    let a = h.send(rpc("initialize", initialize())).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="codeinterp", resource_metadata="https://ci.example/.well-known/oauth-protected-resource/mcp""#
    );
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
    let meta = h
        .send(
            Request::get("/.well-known/oauth-protected-resource/mcp")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(meta.status, StatusCode::OK);
    assert_eq!(meta.json()["resource"], "https://ci.example/mcp");
    assert_eq!(meta.json()["bearer_methods_supported"], json!(["header"]));
}

#[tokio::test]
async fn a_wrong_key_is_401_and_the_challenge_says_the_token_is_invalid() {
    let h = harness();
    let a = h
        .send(with_key(rpc("initialize", initialize()), "guess-token"))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let challenge = a.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    assert_eq!(a.json()["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn a_browser_origin_is_refused_unless_allowed_and_agents_without_one_pass() {
    let h = harness_with(&["--mcp-allowed-origins", "https://app.example"]);
    let from = |origin: &str| {
        let mut req = with_key(rpc("initialize", initialize()), ACME);
        req.headers_mut()
            .insert(header::ORIGIN, origin.parse().unwrap());
        req
    };
    let a = h.send(from("https://evil.example")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["error"]["code"], "origin_not_allowed");
    // Refused before the key is looked at: a page cannot probe keys.
    let mut no_key = rpc("initialize", initialize());
    no_key
        .headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    assert_eq!(h.send(no_key).await.status, StatusCode::FORBIDDEN);
    h.send(from("https://app.example")).await.result();
    h.send(with_key(rpc("initialize", initialize()), ACME))
        .await
        .result();
    let default = harness();
    let a = default.send(from("http://localhost:8080")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn initialize_names_the_server_and_agrees_on_the_2025_06_18_protocol() {
    let h = harness();
    let result = h
        .send(with_key(rpc("initialize", initialize()), ACME))
        .await
        .result();
    assert_eq!(result["protocolVersion"], "2025-06-18");
    assert_eq!(result["serverInfo"]["name"], "codeinterp");
    assert!(result["capabilities"]["tools"].is_object());
    assert!(
        result["instructions"]
            .as_str()
            .unwrap()
            .contains("run_code")
    );
}

#[tokio::test]
async fn tools_list_gives_a_model_each_tool_with_its_schema() {
    let h = harness();
    let result = h
        .send(with_key(rpc("tools/list", json!({})), ACME))
        .await
        .result();
    let tools = result["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in [
        "run_code",
        "list_runs",
        "get_run",
        "create_container",
        "list_containers",
        "list_container_files",
        "upload_container_file",
        "delete_container",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    let run_code = tools.iter().find(|t| t["name"] == "run_code").unwrap();
    assert!(run_code["description"].as_str().unwrap().len() > 200);
    let schema = &run_code["inputSchema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["language", "code"]));
    assert_eq!(
        schema["properties"]["language"]["enum"],
        json!(["python", "node", "ruby", "php"])
    );
    assert_eq!(schema["properties"]["timeout_ms"]["maximum"], 300000);
    for field in ["code", "stdin", "timeout_ms", "files", "container"] {
        let description = schema["properties"][field]["description"].as_str();
        assert!(description.is_some_and(|d| !d.is_empty()), "{field}");
    }
    assert_eq!(run_code["annotations"]["readOnlyHint"], false);
    let get_run = tools.iter().find(|t| t["name"] == "get_run").unwrap();
    assert_eq!(get_run["inputSchema"]["required"], json!(["run_id"]));
    assert_eq!(get_run["annotations"]["readOnlyHint"], true);
    let upload = tools
        .iter()
        .find(|t| t["name"] == "upload_container_file")
        .unwrap();
    assert_eq!(upload["inputSchema"]["required"], json!(["container_id"]));
    let delete = tools
        .iter()
        .find(|t| t["name"] == "delete_container")
        .unwrap();
    assert_eq!(delete["annotations"]["destructiveHint"], true);
}

#[tokio::test]
async fn a_bad_language_is_a_tool_error_with_the_rest_apis_message() {
    let h = harness();
    let rest = h
        .send(
            Request::post("/v1/runs")
                .header(header::AUTHORIZATION, format!("Bearer {ACME}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"language": "cobol", "code": "x"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(rest.status, StatusCode::BAD_REQUEST);
    let result = h
        .call("run_code", json!({"language": "cobol", "code": "x"}))
        .await;
    assert_eq!(result["isError"], true);
    assert_eq!(text(&result), rest.json()["error"]["message"]);
    assert_eq!(result["structuredContent"]["error"]["param"], "language");
}

#[tokio::test]
async fn limits_and_argument_mistakes_are_tool_errors_naming_what_to_change() {
    let h = harness();
    let result = h
        .call(
            "run_code",
            json!({"language": "python", "code": "x", "timeout_ms": 5}),
        )
        .await;
    assert_eq!(result["isError"], true);
    assert_eq!(text(&result), "limits.timeout_ms is 5; the minimum is 100");
    let result = h
        .call(
            "run_code",
            json!({"language": "python", "code": "x", "image": "evil"}),
        )
        .await;
    assert_eq!(result["isError"], true);
    assert!(text(&result).contains("image"), "{result}");
    let result = h
        .call(
            "run_code",
            json!({"language": "python", "code": "x", "timeout_ms": "soon"}),
        )
        .await;
    assert_eq!(result["isError"], true);
    assert!(text(&result).contains("timeout_ms"), "{result}");
    let result = h.call("run_code", json!({"language": "python"})).await;
    assert_eq!(text(&result), "Missing required parameter: 'code'.");
    let result = h.call("list_runs", json!({"limit": 0})).await;
    assert_eq!(text(&result), "limit is 0; it must be from 1 to 100");
}

#[tokio::test]
async fn container_tools_refuse_what_the_rest_api_refuses_as_tool_errors() {
    let h = harness();
    for (tool, args) in [
        ("list_container_files", json!({"container_id": "cntr_nope"})),
        ("delete_container", json!({"container_id": "cntr_nope"})),
        (
            "upload_container_file",
            json!({"container_id": "cntr_nope", "filename": "a", "content": "x"}),
        ),
        (
            "run_code",
            json!({"language": "python", "code": "x", "container": "cntr_nope"}),
        ),
    ] {
        let result = h.call(tool, args).await;
        assert_eq!(result["isError"], true, "{tool}: {result}");
        assert!(text(&result).contains("cntr_nope"), "{tool}: {result}");
    }
    let result = h
        .call(
            "create_container",
            json!({"name": "x", "memory_limit": "64g"}),
        )
        .await;
    assert_eq!(result["isError"], true, "{result}");
    assert!(text(&result).contains("memory_limit"), "{result}");
    let result = h.call("create_container", json!({"name": ""})).await;
    assert_eq!(result["isError"], true, "{result}");
}

#[tokio::test]
async fn get_run_gives_the_output_images_inline_and_other_files_as_links() {
    let h = harness();
    h.stored_run("run-mcp1", 1_700_000_000, 0).await;
    let result = h.call("get_run", json!({"run_id": "run-mcp1"})).await;
    assert_eq!(result["isError"], false, "{result}");
    let summary = text(&result);
    assert!(summary.starts_with("Run run-mcp1 (python) completed, exit code 0."));
    assert!(
        summary.contains("--- stdout ---\nhello from the run\n"),
        "{summary}"
    );
    assert!(summary.contains("--- stderr ---\na warning\n"), "{summary}");
    let content = result["content"].as_array().unwrap();
    assert_eq!(content.len(), 3, "{result}");
    assert_eq!(content[1]["type"], "image");
    assert_eq!(content[1]["mimeType"], "image/png");
    use base64::Engine;
    let data = content[1]["data"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(decoded, PNG);
    assert_eq!(content[2]["type"], "resource_link");
    assert_eq!(content[2]["name"], "data.csv");
    let url = content[2]["uri"].as_str().unwrap();
    assert!(url.starts_with("https://ci.example/v1/files/file-csv1/content?expires="));
    assert_eq!(result["structuredContent"]["id"], "run-mcp1");
    assert_eq!(result["structuredContent"]["artifacts"][1]["url"], url);
}

#[tokio::test]
async fn a_program_that_exits_non_zero_is_an_error_result_and_an_unknown_run_is_not_found() {
    let h = harness();
    h.stored_run("run-mcp2", 1_700_000_000, 3).await;
    let result = h.call("get_run", json!({"run_id": "run-mcp2"})).await;
    assert_eq!(result["isError"], true);
    assert!(text(&result).contains("completed, exit code 3"));
    let result = h.call("get_run", json!({"run_id": "run-nope"})).await;
    assert_eq!(result["isError"], true);
    assert_eq!(text(&result), "No such run: run-nope");
}

#[tokio::test]
async fn list_runs_pages_through_the_callers_runs_newest_first() {
    let h = harness();
    h.stored_run("run-old", 1_700_000_000, 0).await;
    h.stored_run("run-new", 1_700_000_100, 0).await;
    let result = h.call("list_runs", json!({"limit": 1})).await;
    assert_eq!(result["isError"], false, "{result}");
    let page = &result["structuredContent"];
    assert_eq!(page["runs"][0]["id"], "run-new");
    assert_eq!(page["has_more"], true);
    let listed: Value = serde_json::from_str(text(&result)).unwrap();
    assert_eq!(&listed, page);
    let result = h
        .call("list_runs", json!({"limit": 1, "after": "run-new"}))
        .await;
    assert_eq!(result["structuredContent"]["runs"][0]["id"], "run-old");
    let result = h.call("list_runs", json!({"after": "run-nope"})).await;
    assert_eq!(result["isError"], true);
}

#[tokio::test]
async fn the_keys_token_bucket_counts_mcp_requests_too() {
    let h = harness();
    let post = || with_key(rpc("tools/list", json!({})), SLOW);
    h.send(post()).await.result();
    h.send(post()).await.result();
    let a = h.send(post()).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
}
