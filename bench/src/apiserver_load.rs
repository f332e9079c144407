//! The REST API under load: `GET /v1/runs/{id}` with auth beside `/healthz` of the same
//! server, at a fixed concurrency, with wrk. It runs against an apiserver of its own, started
//! here with a key whose rate limit is out of reach and stopped afterwards, so the shared one
//! is neither throttled nor disturbed.
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::config::Args;
use crate::rest;
use crate::wrk::{self, Load, WrkResult};

const TOKEN: &str = "bench_key";

#[derive(Debug, Serialize)]
pub struct ApiLoadReport {
    pub connections: u32,
    pub threads: u32,
    pub seconds: u32,
    pub run_id: String,
    pub get_run: WrkResult,
    pub healthz: WrkResult,
    pub note: &'static str,
}

/// The apiserver started for the benchmark; stopped (SIGTERM, then SIGKILL) when dropped.
struct OwnApiserver(Child);

impl OwnApiserver {
    /// `kubeconfig`: the REST API's own service account (only it may set tenant labels).
    fn start(args: &Args, log: &Path, kubeconfig: &Path) -> anyhow::Result<Self> {
        if !args.apiserver_bin.is_file() {
            bail!(
                "no apiserver binary at {} (cargo build --release -p codeinterp-apiserver)",
                args.apiserver_bin.display()
            );
        }
        let signing_key = signing_key(&args.run_dir)?;
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&args.apiserver_bin)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .env("PORT", args.apiserver_port.to_string())
            // Not the stack's metrics port (its apiserver shares the node's network).
            .env("METRICS_PORT", (args.apiserver_port + 1).to_string())
            .env("API_KEYS", format!("{TOKEN}:bench:100000:100000"))
            .env("STORAGE_URL", args.storage_dir())
            .env("SANDBOX_NAMESPACE", &args.sandbox_namespace)
            .env("SIGNING_KEY", signing_key)
            .env(
                "PUBLIC_BASE_URL",
                format!("http://127.0.0.1:{}", args.apiserver_port),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the apiserver")?;
        Ok(OwnApiserver(child))
    }
}

/// The stack's signing key when `make up` left one; else a fresh one (it only signs artifact
/// URLs, which this benchmark does not use).
fn signing_key(run_dir: &Path) -> anyhow::Result<String> {
    if let Ok(key) = std::fs::read_to_string(run_dir.join("signing-key"))
        && !key.trim().is_empty()
    {
        return Ok(key.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a signing key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Drop for OwnApiserver {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(args: &Args) -> anyhow::Result<ApiLoadReport> {
    let base = format!("http://127.0.0.1:{}", args.apiserver_port);
    let log = args.out_dir.join("apiserver-bench.log");
    let kubeconfig = testkit::rest::rest_api_kubeconfig().await;
    let _server = OwnApiserver::start(args, &log, &kubeconfig)?;
    let api = rest::Api::new(&base, TOKEN)?;
    if !api.wait_ok("/readyz", Duration::from_secs(60)).await {
        bail!(
            "the bench's apiserver on {base} was not ready within 60 s; see {}",
            log.display()
        );
    }
    let run = api.run_python("print(1+1)").await?;
    run.check("2\n")?;

    let get_url = format!("{base}/v1/runs/{}", run.id);
    let health_url = format!("{base}/healthz");
    let load = |url, token, seconds| Load {
        url,
        token,
        threads: args.http_threads,
        connections: args.http_connections,
        seconds,
    };
    let (get_run, healthz) = tokio::task::block_in_place(|| {
        // Warm up connections and caches; not counted.
        wrk::run(&load(&get_url, Some(TOKEN), 2))?;
        let healthz = wrk::run(&load(&health_url, None, args.http_seconds))?;
        let get_run = wrk::run(&load(&get_url, Some(TOKEN), args.http_seconds))?;
        anyhow::Ok((get_run, healthz))
    })?;
    Ok(ApiLoadReport {
        connections: args.http_connections,
        threads: args.http_threads,
        seconds: args.http_seconds,
        run_id: run.id,
        get_run,
        healthz,
        note: "wrk, the apiserver and the rest of the cluster share the node's cores",
    })
}
