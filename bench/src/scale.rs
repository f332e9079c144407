//! Operator scale: many CodeRuns created at once in a namespace of their own; how long until
//! all are over, how long they waited in line, the rate at saturation beside raw pods run by
//! a plain semaphore at the same concurrency, the operator's memory and API writes meanwhile,
//! and proof that none was lost or run twice.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codeinterp_crds::{CodeRun, Language, Limits, Phase};
use codeinterp_store::{OutputStream, Store};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::cluster::{self, Writes};
use crate::config::Args;
use crate::raw_pod;
use crate::stats::{self, Summary};
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
    /// Pods (distinct uids) that ever carried each run's label.
    pub pods_per_run: Counts,
    /// `PodCreated` events recorded for each run.
    pub pod_created_events: Counts,
    /// Created but never seen final.
    pub lost: usize,
    /// More than one pod or more than one PodCreated event.
    pub duplicated: usize,
    /// From the CodeRun's creation to its pod's (the wait in line, and the admission).
    pub queue_wait: Summary,
    /// Most runs seen holding a pod at once.
    pub peak_concurrent: usize,
    /// Completed runs per second between the 10th and the 90th percentile of completions.
    pub saturated_runs_per_s: Option<f64>,
    /// The baseline: raw pods of the same image and requests, run by a semaphore of
    /// `peak_concurrent`.
    pub raw: Option<RawBaseline>,
    pub ratio_to_raw: Option<f64>,
    pub operator_rss_before_mib: Option<f64>,
    pub operator_rss_peak_mib: Option<f64>,
    pub operator_rss_after_mib: Option<f64>,
    pub rss_samples: u64,
    /// The operator's writes to the Kubernetes API during the benchmark, per run.
    pub writes_per_run: Option<f64>,
    pub writes_breakdown: String,
    /// Reconcile errors of the whole operator (other users' runs included) during the test.
    pub reconcile_errors_during: Option<f64>,
    pub namespace_deleted: bool,
}

#[derive(Debug, Serialize)]
pub struct RawBaseline {
    pub pods: usize,
    pub concurrency: usize,
    pub completed: usize,
    pub saturated_pods_per_s: Option<f64>,
    pub first_error: Option<String>,
}

pub async fn run(
    args: &Args,
    client: &Client,
    raw_namespace: &str,
    runs: usize,
) -> anyhow::Result<ScaleReport> {
    let ns = suite::new_namespace(client, "bench-scale").await?;
    let namespace = ns.name.clone();
    let result = measure(args, client, &ns, runs).await;
    progress(&format!("scale: deleting namespace {namespace}"));
    let deleted = suite::delete_namespace(client, &namespace, Duration::from_secs(300)).await;
    let mut report = result?;
    report.namespace_deleted = deleted;
    if args.scale_raw_pods > 0 && report.peak_concurrent > 0 {
        let raw = raw_baseline(client, raw_namespace, args, report.peak_concurrent).await;
        report.ratio_to_raw = report
            .saturated_runs_per_s
            .zip(raw.saturated_pods_per_s)
            .map(|(o, r)| o / r);
        report.raw = Some(raw);
    }
    Ok(report)
}

/// How long a round of `runs` may take to end: the set timeout, or a second per run when
/// that is longer (a 2-core node ends about two runs a second).
pub fn wait_limit(args: &Args, runs: usize) -> u64 {
    args.scale_timeout_seconds.max(runs as u64)
}

async fn measure(
    args: &Args,
    client: &Client,
    ns: &testkit::TestNamespace,
    n: usize,
) -> anyhow::Result<ScaleReport> {
    let runs = ns.runs();
    let seen = Transitions::watch(client, &ns.name).await?;
    let rss_before = match cluster::leader_pid(client).await {
        Some(pid) => testkit::proc_status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0),
        None => None,
    };
    let metrics_before = cluster::operator_metrics(client).await.ok();
    let sampler = cluster::RssSampler::start(client.clone());

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

    let deadline = started + Duration::from_secs(wait_limit(args, n));
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
    // The runs' pods are deleted a moment after they finish: count those writes too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (peak, samples) = sampler.stop();
    let rss_after = match cluster::leader_pid(client).await {
        Some(pid) => testkit::proc_status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0),
        None => None,
    };
    let metrics_after = cluster::operator_metrics(client).await.ok();
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
    let mut waits = Vec::new();
    let mut spans = Vec::new();
    let mut ends = Vec::new();
    for name in &created {
        let run = seen.run(name);
        let pod = seen.pod_of_run(name);
        let events = events.get(name).copied().unwrap_or(0);
        pods_per_run.add(pod.uids.len());
        pod_created_events.add(events);
        if pod.uids.len() > 1 || events > 1 {
            duplicated += 1;
        }
        if let (Some(c), Some(p)) = (run.created, pod.created) {
            waits.push(stats::ms(p.saturating_duration_since(c)));
        }
        if let (Some(p), Some(f)) = (pod.created, run.finished) {
            spans.push((p, f));
        }
        ends.extend(run.finished);
    }
    let writes = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => Some(Writes::parse(a).since(&Writes::parse(b))),
        _ => None,
    };

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
        queue_wait: Summary::of(&waits),
        peak_concurrent: peak_overlap(&spans),
        saturated_runs_per_s: saturated_rate(&ends),
        raw: None,
        ratio_to_raw: None,
        operator_rss_before_mib: rss_before,
        operator_rss_peak_mib: peak,
        operator_rss_after_mib: rss_after,
        rss_samples: samples,
        writes_per_run: writes.as_ref().map(|w| w.per(created.len()).in_all()),
        writes_breakdown: writes
            .map(|w| w.per(created.len()).describe())
            .unwrap_or_default(),
        reconcile_errors_during: metrics_before
            .zip(metrics_after)
            .map(|(b, a)| reconcile_errors(&a) - reconcile_errors(&b)),
        namespace_deleted: false,
    })
}

/// Raw pods with the runs' image and requests, `concurrency` at a time.
async fn raw_baseline(
    client: &Client,
    namespace: &str,
    args: &Args,
    concurrency: usize,
) -> RawBaseline {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let n = args.scale_raw_pods;
    progress(&format!(
        "scale: {n} raw pods, {concurrency} at a time (the baseline)"
    ));
    let memory = args.scale_memory_mb;
    let results: Vec<anyhow::Result<Instant>> = futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("scale-raw-{i}");
                let mut manifest = raw_pod::python_print(&name);
                manifest["spec"]["containers"][0]["resources"] = serde_json::json!({
                    "requests": {"cpu": "100m", "memory": format!("{memory}Mi")},
                    "limits": {"cpu": "1", "memory": format!("{memory}Mi")},
                });
                let result = raw_pod::run_manifest(&pods, &name, manifest).await;
                raw_pod::delete_in_background(&pods, &name);
                result.map(|_| Instant::now())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let ends: Vec<Instant> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    RawBaseline {
        pods: n,
        concurrency,
        completed: ends.len(),
        saturated_pods_per_s: saturated_rate(&ends),
        first_error: results
            .into_iter()
            .find_map(|r| r.err())
            .map(|e| format!("{e:#}")),
    }
}

/// The most intervals open at once.
fn peak_overlap(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|(a, b)| [(*a, 1), (*b, -1)])
        .collect();
    // Ends before starts at the same instant.
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        peak = peak.max(open);
    }
    peak as usize
}

/// Completions per second between the 10th and the 90th percentile of completion times (the
/// ramp up and the tail left out).
fn saturated_rate(ends: &[Instant]) -> Option<f64> {
    if ends.len() < 10 {
        return None;
    }
    let mut sorted = ends.to_vec();
    sorted.sort();
    let (lo, hi) = (sorted.len() / 10, sorted.len() * 9 / 10);
    let span = (sorted[hi] - sorted[lo]).as_secs_f64();
    (span > 0.0).then(|| (hi - lo) as f64 / span)
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

/// Reconcile errors so far, summed over kinds, from the operator's metrics text.
fn reconcile_errors(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("codeinterp_operator_reconcile_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_counts_intervals_open_at_once() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let spans = [
            (at(0), at(10)),
            (at(5), at(15)),
            (at(10), at(20)),
            (at(30), at(40)),
        ];
        assert_eq!(peak_overlap(&spans), 2);
    }

    #[test]
    fn the_saturated_rate_leaves_out_the_ramp_and_the_tail() {
        let t = Instant::now();
        // 100 completions, one every 100 ms: 10 per second.
        let ends: Vec<Instant> = (0..100)
            .map(|i| t + Duration::from_millis(i * 100))
            .collect();
        let rate = saturated_rate(&ends).unwrap();
        assert!((rate - 10.0).abs() < 0.01, "{rate}");
        assert_eq!(saturated_rate(&ends[..5]), None);
    }
}
