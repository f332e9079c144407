//! Helpers for the tests of the REST API: a small client that returns what a user of the
//! API sees (status, headers, body), and the processes a test starts for itself (its own
//! API servers, a second operator, an S3 server, chromedriver), each ended when dropped.
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{random_suffix, run_dir};

/// The API `make up` leaves running, and its development token.
pub const MAIN_API: &str = "http://localhost:8080";
pub const DEV_TOKEN: &str = "dev_123";
/// Where `make up` runs CodeRuns, and where the main API and operator keep results.
pub const SANDBOX_NAMESPACE: &str = "codeinterp";

/// The metrics of the API `make up` leaves running: on their own port, not the API's.
pub const MAIN_METRICS: &str = "http://127.0.0.1:9091/metrics";

/// The main API's metrics, in Prometheus text.
pub async fn main_metrics() -> String {
    reqwest::get(MAIN_METRICS)
        .await
        .expect("the metrics port answers")
        .text()
        .await
        .unwrap()
}

pub fn main_storage() -> PathBuf {
    run_dir().join("storage")
}

/// Where `make up` installs the chart, and the chart's Secret with the signing key.
pub const STACK_NAMESPACE: &str = "codeinterp-system";
pub const SIGNING_SECRET: &str = "codeinterp-signing";

/// The main API's signing key: from the chart's Secret, or from the file the stack kept
/// before it was installed by the chart.
pub async fn signing_key() -> String {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(crate::client().await, STACK_NAMESPACE);
    if let Some(key) = secrets
        .get_opt(SIGNING_SECRET)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.data?.remove("SIGNING_KEY"))
    {
        return String::from_utf8(key.0).expect("a text signing key");
    }
    let path = run_dir().join("signing-key");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "no signing key in the chart's Secret nor {}: {e} (run `make up`)",
                path.display()
            )
        })
        .trim()
        .to_string()
}

/// The signature of a download URL, made the way the API makes it:
/// hex HMAC-SHA256(key, "{file_id}\n{expires}").
pub fn sign(key: &str, file_id: &str, expires: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{file_id}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The path and query of a signed download URL.
pub fn signed_path(key: &str, file_id: &str, expires: i64) -> String {
    format!(
        "/v1/files/{file_id}/content?expires={expires}&signature={}",
        sign(key, file_id, expires)
    )
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The checkout the tests run from. Read when they run, not when they were built: a build
/// directory shared between checkouts (CI's clone and a working copy) keeps test binaries
/// whose compile-time paths name the other checkout.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().expect("current directory"));
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// A binary `make build` produced.
pub fn release_binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| "/var/cache/codeinterp/cargo-target".into());
    let path = PathBuf::from(target).join("release").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` (make up does)",
        path.display()
    );
    path
}

/// Runs one of the repository's setup scripts (they are idempotent) and returns what it
/// printed.
pub fn setup_script(relative: &str) -> String {
    let path = repo_root().join(relative);
    let out = Command::new(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(out.status.success(), "{} failed", path.display());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A token and the tenant it stands for, new for each test so its runs and files are its
/// own.
#[derive(Clone, Debug)]
pub struct Key {
    pub token: String,
    pub tenant: String,
}

impl Key {
    pub fn fresh(prefix: &str) -> Self {
        let tenant = format!("{prefix}-{}", random_suffix());
        Key {
            token: format!("tok_{tenant}_{}", random_suffix()),
            tenant,
        }
    }

    /// `API_KEYS` for these keys with a generous rate.
    pub fn api_keys(keys: &[&Key]) -> String {
        keys.iter()
            .map(|k| format!("{}:{}:50:100", k.token, k.tenant))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the API answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON after checking the status.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        self.json()
    }

    /// Checks that this is an error of the given status in OpenAI's shape,
    /// `{"error": {"message", "type", "param", "code"}}`, and returns the inner object.
    pub fn openai_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        let error = body
            .get("error")
            .unwrap_or_else(|| panic!("no error object: {body}"));
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(error["type"].is_string(), "{body}");
        let fields = error.as_object().unwrap();
        assert!(
            fields.contains_key("param") && fields.contains_key("code"),
            "{body}"
        );
        error.clone()
    }
}

/// A client of one API server, with or without a bearer token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(150))
                .build()
                .unwrap(),
        }
    }

    /// The API `make up` started, as the development tenant.
    pub fn main() -> Self {
        Api::new(MAIN_API, Some(DEV_TOKEN))
    }

    /// The same server, without a token.
    pub fn anonymous(&self) -> Self {
        Api {
            token: None,
            ..self.clone()
        }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// A request to a path of this server (or to a full URL), with the token if any.
    pub fn request(&self, method: reqwest::Method, path_or_url: &str) -> reqwest::RequestBuilder {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("the API answers");
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.bytes().await.expect("the body arrives").to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// A POST with no body (cancel).
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::POST, path)).await
    }

    /// `POST /v1/files` as OpenAI's SDKs send it: multipart `file` and `purpose`.
    pub async fn upload(&self, filename: &str, bytes: Vec<u8>) -> Reply {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "assistants")
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()),
            );
        self.send(
            self.request(reqwest::Method::POST, "/v1/files")
                .multipart(form),
        )
        .await
    }

    /// Uploads a file and returns its id.
    pub async fn upload_ok(&self, filename: &str, bytes: &[u8]) -> String {
        let file = self.upload(filename, bytes.to_vec()).await.expect(200);
        file["id"].as_str().unwrap().to_string()
    }

    /// `POST /v1/runs`; the run object.
    pub async fn create_run(&self, body: Value) -> Value {
        self.post("/v1/runs", &body).await.expect(200)
    }

    /// A polite tenant's `print(1+1)` (during an attack): it completes, with its answer.
    pub async fn polite_run_completes(&self) -> Value {
        let body = json!({"language": "python", "code": "print(1+1)"});
        let run = self.post("/v1/runs", &body).await.expect(200);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["stdout"], "2\n");
        run
    }

    /// Polls `GET /v1/runs/{id}` until the run has a final status.
    pub async fn wait_run(&self, id: &str, within: Duration) -> Value {
        self.wait_run_until(id, within, |run| {
            !matches!(run["status"].as_str(), Some("queued" | "running"))
        })
        .await
    }

    /// Polls `GET /v1/runs/{id}` until `done` holds.
    pub async fn wait_run_until(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let run = self.get(&format!("/v1/runs/{id}")).await.expect(200);
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} is still {} after {within:?}: {run}",
                run["status"]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A process a test started, in its own process group, with its output in a log file.
/// Dropping it ends the group (the process and anything it started, e.g. chromedriver's
/// browsers): SIGTERM, then SIGKILL for what is left.
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{name}-"))
            .tempdir()
            .unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("--- {} log ---\n{}", self.name, lines[start..].join("\n"))
    }

    /// Waits until `ready` holds, failing at once if the process exits.
    pub async fn wait_ready<F, Fut>(&mut self, within: Duration, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before it was ready\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {within:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (the leader may be gone while children linger).
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// A command with a clean environment: what the services get from `make up` (PATH, HOME,
/// the admin kubeconfig) and nothing of the test's.
pub fn service_command(program: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(program);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let kubeconfig = env
        .iter()
        .find(|(k, _)| *k == "KUBECONFIG")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("KUBECONFIG").ok())
        .unwrap_or_else(|| format!("{home}/.kube/config"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A kubeconfig that acts as the REST API's ServiceAccount (a short-lived token), written
/// once per test process.
pub async fn rest_api_kubeconfig() -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    static PATH: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    PATH.get_or_init(|| async {
        let client = crate::client().await;
        let sas: kube::Api<ServiceAccount> =
            kube::Api::namespaced(client, crate::OPERATOR_NAMESPACE);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = sas
            .create_token_request("codeinterp-apiserver", &Default::default(), &request)
            .await
            .expect("a token of the REST API's ServiceAccount")
            .status
            .expect("a token")
            .token;
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let admin: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(format!("{home}/.kube/config")).expect("the admin kubeconfig"),
        )
        .unwrap();
        let cluster = admin["clusters"][0]["cluster"].clone();
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": serde_json::to_value(&cluster).unwrap()}],
            "users": [{"name": "rest-api", "user": {"token": token}}],
            "contexts": [{"name": "rest-api", "context": {"cluster": "local", "user": "rest-api",
                "namespace": SANDBOX_NAMESPACE}}],
            "current-context": "rest-api",
        });
        let path = std::env::temp_dir().join(format!(
            "codeinterp-e2e-rest-api-{}.kubeconfig",
            std::process::id()
        ));
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    })
    .await
    .clone()
}

async fn answers_ok(url: &str) -> bool {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
}

/// An API server of this test's own (the release binary), on a loopback port, ready.
pub struct ApiServer {
    pub base: String,
    /// Its Prometheus endpoint (on a port of its own).
    pub metrics: String,
    pub process: Process,
}

impl ApiServer {
    /// A server like the main one (same storage, namespace and signing key) with these
    /// keys; `env` adds or overrides settings.
    pub async fn start(api_keys: &str, env: &[(&str, String)]) -> Self {
        Self::start_on(free_port(), api_keys, env).await
    }

    pub async fn start_on(port: u16, api_keys: &str, env: &[(&str, String)]) -> Self {
        let base = format!("http://127.0.0.1:{port}");
        let metrics_port = free_port();
        // As the chart's API server: its ServiceAccount (the tenant label and fileId inputs
        // are its alone to give), not the cluster admin.
        let kubeconfig = rest_api_kubeconfig().await;
        let mut all: Vec<(&str, String)> = vec![
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("PORT", port.to_string()),
            ("METRICS_PORT", metrics_port.to_string()),
            ("API_KEYS", api_keys.to_string()),
            ("STORAGE_URL", main_storage().display().to_string()),
            ("SANDBOX_NAMESPACE", SANDBOX_NAMESPACE.to_string()),
            ("SIGNING_KEY", signing_key().await),
            ("PUBLIC_BASE_URL", base.clone()),
        ];
        all.extend(env.iter().cloned());
        let mut process = Process::spawn(
            "apiserver",
            service_command(&release_binary("apiserver"), &all),
        );
        let readyz = format!("{base}/readyz");
        process
            .wait_ready(Duration::from_secs(30), || answers_ok(&readyz))
            .await;
        ApiServer {
            base,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            process,
        }
    }

    pub fn api(&self, token: &str) -> Api {
        Api::new(&self.base, Some(token))
    }
}

/// An S3-compatible server (s3s-fs, installed by hack/s3/install.sh) keeping its buckets as
/// directories of a temporary directory.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub root: tempfile::TempDir,
    pub process: Process,
}

impl S3Server {
    pub async fn start() -> Self {
        let binary = setup_script("hack/s3/install.sh");
        let root = tempfile::Builder::new()
            .prefix("e2e-s3-")
            .tempdir()
            .unwrap();
        let bucket = format!("codeinterp-{}", random_suffix());
        // s3s-fs serves every directory under its root as a bucket.
        std::fs::create_dir(root.path().join(&bucket)).unwrap();
        let port = free_port();
        let access_key = format!("AK{}", random_suffix().to_uppercase());
        let secret_key = format!("sk-{}-{}", random_suffix(), random_suffix());
        let mut cmd = Command::new(binary);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(root.path())
            .env("RUST_LOG", "info");
        let mut process = Process::spawn("s3s-fs", cmd);
        let addr = format!("127.0.0.1:{port}");
        process
            .wait_ready(Duration::from_secs(20), || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            })
            .await;
        S3Server {
            endpoint: format!("http://{addr}"),
            bucket,
            access_key,
            secret_key,
            root,
            process,
        }
    }

    /// `STORAGE_URL` and the `AWS_*` settings object_store reads, for the operator and
    /// the API server.
    pub fn storage_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STORAGE_URL", format!("s3://{}", self.bucket)),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Where the server keeps an object of the bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }
}

/// A second operator (the release binary) serving one shard only.
pub async fn start_operator(shard: &str, env: &[(&str, String)]) -> Process {
    start_operator_with_metrics(shard, env).await.0
}

/// [`start_operator`], with the URL of its metrics.
pub async fn start_operator_with_metrics(shard: &str, env: &[(&str, String)]) -> (Process, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut all: Vec<(&str, String)> = vec![
        ("SHARD", shard.to_string()),
        ("METRICS_ADDR", metrics.clone()),
        ("SECCOMP_PROFILE", "codeinterp/runner.json".into()),
        // A lease of its own: the chart's operators elect among themselves.
        ("LEASE_NAME", format!("e2e-operator-{shard}")),
        ("LEASE_NAMESPACE", crate::OPERATOR_NAMESPACE.into()),
        ("LEASE_DURATION_SECONDS", "4".into()),
    ];
    all.extend(env.iter().cloned());
    let mut process = Process::spawn(
        "operator",
        service_command(&release_binary("operator"), &all),
    );
    // Healthy first, then leading (a fresh lease is free at once).
    let leading = format!("http://{metrics}/metrics");
    process
        .wait_ready(Duration::from_secs(60), || async {
            match reqwest::get(&leading).await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.contains("codeinterp_operator_leader 1")),
                Err(_) => false,
            }
        })
        .await;
    (process, leading)
}

/// One server-sent event, and when it arrived.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: Value,
    pub at: Instant,
}

impl SseEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.event.as_str(),
            "run.completed" | "run.failed" | "run.timed_out" | "run.cancelled"
        )
    }
}

/// A `text/event-stream` answer, read as it arrives (only as fast as the test reads it).
pub struct Events {
    pub status: u16,
    response: Option<reqwest::Response>,
    buf: Vec<u8>,
    pub error: Option<Value>,
}

impl Events {
    async fn from(res: reqwest::Response) -> Events {
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.bytes().await.unwrap_or_default();
            return Events {
                status,
                response: None,
                buf: Vec::new(),
                error: serde_json::from_slice(&body).ok(),
            };
        }
        Events {
            status,
            response: Some(res),
            buf: Vec::new(),
            error: None,
        }
    }

    /// The next event; `None` when the stream ends. Keep-alive comments are skipped.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                return Some(SseEvent {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                    at: Instant::now(),
                });
            }
            let chunk = self.response.as_mut()?.chunk().await.ok()??;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Every event up to and including the terminal one.
    pub async fn to_end(&mut self, within: Duration) -> Vec<SseEvent> {
        let mut all = Vec::new();
        let read = async {
            while let Some(e) = self.next().await {
                let done = e.is_terminal();
                all.push(e);
                if done {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(within, read).await;
        all
    }
}

/// The output the deltas of `events` carry, per stream.
pub fn streamed_output(events: &[SseEvent], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.event == "run.output.delta" && e.data["stream"] == stream)
        .map(|e| e.data["delta"].as_str().unwrap_or_default())
        .collect()
}

impl Api {
    /// `GET /v1/runs/{id}/events`, resuming after `last_event_id` if given.
    pub async fn events(&self, id: &str, last_event_id: Option<&str>) -> Events {
        let mut req = self
            .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
            .timeout(Duration::from_secs(3600));
        if let Some(last) = last_event_id {
            req = req.header("last-event-id", last);
        }
        Events::from(req.send().await.expect("the API answers")).await
    }

    /// `POST /v1/runs` with `"stream": true`.
    pub async fn stream_run(&self, mut body: Value) -> Events {
        body["stream"] = Value::Bool(true);
        let req = self
            .request(reqwest::Method::POST, "/v1/runs")
            .timeout(Duration::from_secs(3600))
            .json(&body);
        Events::from(req.send().await.expect("the API answers")).await
    }
}
