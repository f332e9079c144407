//! The simulated round's own processes: kwok (through `hack/kwok/kwok.sh`) and a shard of its
//! own (the release binaries of the operator and the API server, started as
//! `e2e/tests/rest_s3.rs` starts them) whose runner pods tolerate the simulated nodes' taint
//! and select them, with its storage in a directory of its own; and what the round reads of
//! processes: CPU time and memory.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use testkit::rest::{ApiServer, Key, Process, free_port};

use crate::suite::progress;

/// The simulated nodes' taint and label (see `hack/kwok/kwok.sh`).
pub const TOLERATIONS: &str =
    r#"[{"key":"kwok.x-k8s.io/node","operator":"Exists","effect":"NoSchedule"}]"#;
pub const NODE_SELECTOR: &str = "type=kwok";

/// kwok and its nodes, stopped (nodes and their pods deleted) when dropped.
pub struct Kwok {
    script: PathBuf,
    nodes: usize,
    large: usize,
    running: bool,
}

impl Kwok {
    /// Registers `nodes` simulated nodes (`large` of them large) and starts kwok, which marks
    /// a pod bound to one Running `hold_s` seconds later.
    pub fn start(script: &Path, nodes: usize, large: usize, hold_s: u64) -> anyhow::Result<Self> {
        let kwok = Kwok {
            script: script.to_path_buf(),
            nodes,
            large,
            running: true,
        };
        kwok.hold(hold_s)?;
        Ok(kwok)
    }

    /// From now on pods are marked Running `hold_s` seconds after they are bound (kwok is
    /// restarted if that changes; the nodes stay).
    pub fn hold(&self, hold_s: u64) -> anyhow::Result<()> {
        let out = Command::new(&self.script)
            .args(["start", &self.nodes.to_string(), &self.large.to_string()])
            .env("KWOK_POD_START_SECONDS", hold_s.to_string())
            .output()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "{} start failed: {}",
                self.script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Deletes the nodes and whatever is bound to them, and stops kwok.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        let out = Command::new(&self.script).arg("stop").output()?;
        if !out.status.success() {
            bail!("kwok stop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            progress(&format!("scale-sim: {e:#}"));
        }
    }
}

/// A shard of the round's own: its operator and API server, tenants and storage.
pub struct Shard {
    pub name: String,
    pub api: ApiServer,
    pub operator: Process,
    pub operator_metrics: String,
    pub keys: Vec<Key>,
    storage: PathBuf,
}

/// What the shard's operator and API server are given beyond the defaults: room in every
/// tenant's line for the whole round, the largest runs allowed, runner pods sent to the
/// simulated nodes.
fn shard_env(shard: &str, storage: &Path, hold_s: u64) -> Vec<(&'static str, String)> {
    vec![
        ("SHARD", shard.to_string()),
        ("STORAGE_URL", storage.display().to_string()),
        ("MAX_QUEUED_PER_TENANT", "1000000".into()),
        ("MAX_MEMORY_MB", "8192".into()),
        ("QUEUE_TIMEOUT_SECONDS", "7200".into()),
        ("START_TIMEOUT_SECONDS", (hold_s + 600).to_string()),
        ("RUNNER_NODE_SELECTOR", NODE_SELECTOR.into()),
        ("RUNNER_TOLERATIONS", TOLERATIONS.into()),
    ]
}

impl Shard {
    pub async fn start(tenants: usize, namespace: &str, hold_s: u64) -> anyhow::Result<Shard> {
        let name = format!("sim-{}", testkit::random_suffix());
        let storage = std::env::temp_dir().join(format!("bench-{name}"));
        std::fs::create_dir_all(&storage)?;
        let env = shard_env(&name, &storage, hold_s);
        let (operator, operator_metrics) = start_operator(&name, namespace, &env).await?;
        let keys: Vec<Key> = (0..tenants)
            .map(|i| Key::fresh(&format!("{name}-t{i:02}")))
            .collect();
        // A bucket no round drains: the round measures how fast the API creates runs.
        let api_keys = keys
            .iter()
            .map(|k| format!("{}:{}:100000:100000", k.token, k.tenant))
            .collect::<Vec<_>>()
            .join(",");
        let api = ApiServer::start_on(free_port(), &api_keys, &env).await;
        Ok(Shard {
            name,
            api,
            operator,
            operator_metrics,
            keys,
            storage,
        })
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}

/// An operator of the shard (the release binary) watching only `namespace`, leading on a
/// lease of its own; its metrics URL.
async fn start_operator(
    shard: &str,
    namespace: &str,
    env: &[(&'static str, String)],
) -> anyhow::Result<(Process, String)> {
    let mut all: Vec<(&str, String)> = env.to_vec();
    all.push(("WATCH_NAMESPACE", namespace.to_string()));
    Ok(testkit::rest::start_operator_with_metrics(shard, &all).await)
}

/// Seconds of CPU a process has used (user and system), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports these in USER_HZ, 100 a second on Linux.
    Some(ticks as f64 / 100.0)
}

/// The cluster's own processes (by their pid files), for their CPU time.
pub fn cluster_pids(run_dir: &Path) -> BTreeMap<String, u32> {
    [
        "kube-apiserver",
        "etcd",
        "kube-scheduler",
        "kube-controller-manager",
        "kwok",
    ]
    .iter()
    .filter_map(|name| {
        let pid = std::fs::read_to_string(run_dir.join("pids").join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some((name.to_string(), pid))
    })
    .collect()
}

/// Samples the resident memory of some processes every 250 ms and keeps each one's peak.
pub struct Peaks {
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peaks {
    pub fn start(pids: BTreeMap<String, u32>) -> Self {
        let peaks: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let p = peaks.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                for (name, pid) in &pids {
                    if let Some(kib) = testkit::proc_status_kib(*pid, "VmRSS:") {
                        let mut peaks = p.lock().unwrap();
                        let peak = peaks.entry(name.clone()).or_insert(0);
                        *peak = (*peak).max(kib);
                    }
                }
            }
        });
        Peaks { peaks, task }
    }

    /// Each process's peak, in MiB.
    pub fn stop(self) -> BTreeMap<String, f64> {
        self.task.abort();
        let peaks = self.peaks.lock().unwrap();
        peaks
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / 1024.0))
            .collect()
    }
}
