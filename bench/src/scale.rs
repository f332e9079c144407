//! Operator scale: many CodeRuns created at once in a namespace of their own; how long until
//! all are over, the operator's memory meanwhile, and proof that none was lost or run twice.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codeinterp_crds::{CodeRun, Language, Limits, Phase};
use codeinterp_store::{OutputStream, Store};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::config::Args;
use crate::suite::{self, progress};
use crate::transitions::Transitions;

const PROGRAM: &str = "print(\"ok\")";
const EXPECTED: &str = "ok\n";

/// How many runs had none, exactly one, or more than one of something.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub zero: usize,
    pub one: usize,
    pub more: usize,
}

impl Counts {
    fn add(&mut self, n: usize) {
        match n {
            0 => self.zero += 1,
            1 => self.one += 1,
            _ => self.more += 1,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ScaleReport {
    pub runs: usize,
    pub namespace: String,
    pub memory_mb: u64,
    pub created: usize,
    pub create_errors: Vec<String>,
    pub create_s: f64,
    /// Runs seen in a final phase by the time the wait ended.
    pub terminal: usize,
    pub all_terminal: bool,
    /// From the first creation to the last run seen final.
    pub time_to_all_terminal_s: Option<f64>,
    /// Final phase of each run as listed at the end (with the reason of any not Completed).
    pub phases: BTreeMap<String, usize>,
    /// The status message of one run of each final phase other than Completed.
    pub failure_examples: BTreeMap<String, String>,
    /// Completed, exit code 0 and `ok\n` on stdout in the status.
    pub completed_ok: usize,
    /// The run's record in object storage says completed with `ok\n`.
    pub records_ok: usize,
    /// Pods (distinct uids) the watch saw with each run's name.
    pub pods_per_run: Counts,
    /// `PodCreated` events recorded for each run.
    pub pod_created_events: Counts,
    /// Created but never seen final.
    pub lost: usize,
    /// More than one pod or more than one PodCreated event.
    pub duplicated: usize,
    pub operator_pid: Option<u32>,
    pub operator_found_by: Option<&'static str>,
    pub operator_rss_before_mib: Option<f64>,
    pub operator_rss_peak_mib: Option<f64>,
    pub operator_rss_after_mib: Option<f64>,
    /// VmHWM: the peak since the operator started, whatever caused it.
    pub operator_hwm_mib: Option<f64>,
    pub rss_samples: u64,
    /// Reconcile errors of the whole operator (other users' runs included) during the test.
    pub reconcile_errors_during: Option<f64>,
    pub namespace_deleted: bool,
}

pub async fn run(args: &Args, client: &Client) -> anyhow::Result<ScaleReport> {
    let ns = suite::new_namespace(client, "bench-scale").await?;
    let namespace = ns.name.clone();
    let result = measure(args, client, &ns).await;
    progress(&format!("scale: deleting namespace {namespace}"));
    let deleted = suite::delete_namespace(client, &namespace, Duration::from_secs(180)).await;
    let mut report = result?;
    report.namespace_deleted = deleted;
    Ok(report)
}

async fn measure(
    args: &Args,
    client: &Client,
    ns: &testkit::TestNamespace,
) -> anyhow::Result<ScaleReport> {
    let n = args.scale_runs;
    let runs = ns.runs();
    let seen = Transitions::watch(client, &ns.name).await?;
    let operator = operator_pid(&args.run_dir);
    let operator_pid = operator.map(|(pid, _)| pid);
    let rss_before = operator_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let errors_before = reconcile_errors().await;
    let sampler = operator_pid.map(RssSampler::start);

    progress(&format!("scale: creating {n} CodeRuns in {}", ns.name));
    let started = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("{}-{i}", ns.name)).collect();
    let results: Vec<(String, anyhow::Result<()>)> = futures::stream::iter(names.clone())
        .map(|name| {
            let runs = runs.clone();
            let limits = Limits {
                timeout_ms: Some(20_000),
                memory_mb: Some(args.scale_memory_mb),
                ..Default::default()
            };
            async move {
                let mut spec = testkit::spec(Language::Python, PROGRAM);
                spec.limits = limits;
                let made = runs
                    .create(&PostParams::default(), &CodeRun::new(&name, spec))
                    .await;
                (name, made.map(|_| ()).map_err(anyhow::Error::from))
            }
        })
        .buffer_unordered(args.scale_create_concurrency.max(1))
        .collect()
        .await;
    let create_s = started.elapsed().as_secs_f64();
    let mut created = Vec::new();
    let mut create_errors = Vec::new();
    for (name, result) in results {
        match result {
            Ok(()) => created.push(name),
            Err(e) => create_errors.push(format!("{name}: {e:#}")),
        }
    }
    progress(&format!(
        "scale: {} created in {create_s:.1} s; waiting for all to end",
        created.len()
    ));

    let deadline = started + Duration::from_secs(args.scale_timeout_seconds);
    let mut last_note = Instant::now();
    let (terminal, last_end) = loop {
        let (done, last) = seen.finished_among(&created);
        if done == created.len() || Instant::now() >= deadline {
            break (done, last);
        }
        if last_note.elapsed() >= Duration::from_secs(15) {
            progress(&format!(
                "scale: {done}/{} ended after {:.0} s",
                created.len(),
                started.elapsed().as_secs_f64()
            ));
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let all_terminal = terminal == created.len() && create_errors.is_empty();
    let (peak, samples) = match sampler {
        Some(s) => s.stop(),
        None => (None, 0),
    };
    let rss_after = operator_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let hwm = operator_pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    let errors_after = reconcile_errors().await;
    progress(&format!(
        "scale: {terminal}/{} ended; checking statuses, records, pods and events",
        created.len()
    ));

    // The proof: each run's status, its stored record, its pods and its PodCreated events.
    let listed = runs.list(&ListParams::default()).await?;
    let by_name: HashMap<String, &CodeRun> =
        listed.items.iter().map(|r| (r.name_any(), r)).collect();
    let mut phases = BTreeMap::new();
    let mut failure_examples = BTreeMap::new();
    let mut completed_ok = 0;
    for name in &created {
        let run = by_name.get(name);
        let status = run.and_then(|r| r.status.as_ref());
        let label = match status {
            None => "no status".to_string(),
            Some(s) => match (s.phase, &s.reason) {
                (Some(p), Some(r)) if !matches!(p, Phase::Completed) => {
                    format!("{} ({r})", p.as_str())
                }
                (Some(p), _) => p.as_str().to_string(),
                (None, _) => "no phase".to_string(),
            },
        };
        if let Some(message) = status.and_then(|s| s.message.clone())
            && label != Phase::Completed.as_str()
        {
            failure_examples.entry(label.clone()).or_insert(message);
        }
        *phases.entry(label).or_insert(0) += 1;
        if status.is_some_and(|s| {
            s.phase == Some(Phase::Completed)
                && s.exit_code == Some(0)
                && s.stdout_preview.as_deref() == Some(EXPECTED)
        }) {
            completed_ok += 1;
        }
    }
    let records_ok = records_ok(client, &args.storage_dir(), &ns.name, &created).await?;
    let events = pod_created_events(client, &ns.name).await?;
    let (mut pods_per_run, mut pod_created_events) = (Counts::default(), Counts::default());
    let mut duplicated = 0;
    for name in &created {
        let pods = seen.pod(name).uids.len();
        let events = events.get(name).copied().unwrap_or(0);
        pods_per_run.add(pods);
        pod_created_events.add(events);
        if pods > 1 || events > 1 {
            duplicated += 1;
        }
    }

    Ok(ScaleReport {
        runs: n,
        namespace: ns.name.clone(),
        memory_mb: args.scale_memory_mb,
        created: created.len(),
        create_errors: create_errors.into_iter().take(5).collect(),
        create_s,
        terminal,
        all_terminal,
        time_to_all_terminal_s: last_end
            .filter(|_| all_terminal)
            .map(|t| (t - started).as_secs_f64()),
        phases,
        failure_examples,
        completed_ok,
        records_ok,
        pods_per_run,
        pod_created_events,
        lost: created.len() - terminal,
        duplicated,
        operator_pid,
        operator_found_by: operator.map(|(_, how)| how),
        operator_rss_before_mib: rss_before.map(mib),
        operator_rss_peak_mib: peak.map(mib),
        operator_rss_after_mib: rss_after.map(mib),
        operator_hwm_mib: hwm.map(mib),
        rss_samples: samples,
        reconcile_errors_during: errors_before.zip(errors_after).map(|(b, a)| a - b),
        namespace_deleted: false,
    })
}

/// Records in object storage that say the run completed with the expected output.
async fn records_ok(
    client: &Client,
    storage: &Path,
    namespace: &str,
    names: &[String],
) -> anyhow::Result<usize> {
    let store = Store::open(&storage.to_string_lossy()).context("opening object storage")?;
    let store = &store;
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), namespace);
    let uids: HashMap<String, String> = runs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|r| Some((r.metadata.name?, r.metadata.uid?)))
        .collect();
    let uids = &uids;
    let tenant = format!("{}{namespace}", codeinterp_crds::NAMESPACE_TENANT_PREFIX);
    let tenant = &tenant;
    let oks: Vec<bool> = futures::stream::iter(names)
        .map(|name| async move {
            let Some(uid) = uids.get(name) else {
                return false;
            };
            let Ok(Some(rec)) = store.get_run(tenant, namespace, uid).await else {
                return false;
            };
            let out = store.get_output(&rec, OutputStream::Stdout).await.ok();
            rec.phase == codeinterp_crds::Phase::Completed
                && out.as_deref() == Some(EXPECTED.as_bytes())
                && rec.namespace == namespace
        })
        .buffer_unordered(32)
        .collect()
        .await;
    Ok(oks.into_iter().filter(|ok| *ok).count())
}

/// PodCreated events per object name (a repeated event counts as often as it happened).
async fn pod_created_events(
    client: &Client,
    namespace: &str,
) -> anyhow::Result<HashMap<String, usize>> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut counts = HashMap::new();
    for e in api.list(&ListParams::default()).await?.items {
        if e.reason.as_deref() != Some("PodCreated") {
            continue;
        }
        let Some(name) = e.regarding.and_then(|r| r.name) else {
            continue;
        };
        let times = e.series.map_or(1, |s| s.count.max(1) as usize);
        *counts.entry(name).or_insert(0) += times;
    }
    Ok(counts)
}

/// The operator's process: the one `make up` recorded, else the only process named
/// `operator` on this host (e.g. the stack installed by the Helm chart); and which it was.
fn operator_pid(run_dir: &Path) -> Option<(u32, &'static str)> {
    let recorded = std::fs::read_to_string(run_dir.join("pids/operator.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    if let Some(pid) = recorded {
        return Some((pid, "pids/operator.pid"));
    }
    let named: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "operator")
        })
        .collect();
    match named.as_slice() {
        [pid] => Some((*pid, "the only process named operator")),
        _ => None,
    }
}

/// A `kB` field of /proc/<pid>/status, e.g. `VmRSS:`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Reconcile errors so far, summed over kinds, from the operator's metrics.
async fn reconcile_errors() -> Option<f64> {
    let text = reqwest::get("http://127.0.0.1:9090/metrics")
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("codeinterp_operator_reconcile_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Samples the operator's VmRSS every 200 ms and keeps the highest.
struct RssSampler {
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (peak, samples) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (p, s) = (peak.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if let Some(kib) = proc_status_kib(pid, "VmRSS:") {
                    p.fetch_max(kib, Ordering::Relaxed);
                    s.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        RssSampler {
            peak,
            samples,
            task,
        }
    }

    /// The peak in KiB (if any sample was taken) and the number of samples.
    fn stop(self) -> (Option<u64>, u64) {
        self.task.abort();
        let samples = self.samples.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        ((samples > 0).then_some(peak), samples)
    }
}
