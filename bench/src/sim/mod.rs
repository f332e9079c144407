//! Scale by simulation (`--only scale-sim`): admission and the operator at 100 nodes and
//! 10,000 runs. kwok registers simulated nodes beside the real one and the real
//! kube-scheduler places pods on them; a shard of the round's own (an operator and an API
//! server from the release binaries, their runner pods sent to the simulated nodes) takes
//! runs from 20 tenants through its REST API as fast as it answers them.
//!
//! Nothing runs on a simulated node. A round measures the control plane up to a run's pod
//! bound and started (kwok marks it Running), then deletes the run as if its program had
//! ended at once: no run is reported completed, and the report counts any that was. In the
//! rounds that hold pods (`--sim-hold-seconds`), kwok marks a pod Running only that long
//! after it is bound, so the room a run takes stays taken as if it ran, the room runs out,
//! and the line's order is the fair queue's.
//!
//! A round cannot wait for the operator to end its runs as it ends real ones: a kwok pod
//! takes the attach and closes it at once, so the operator finds a pod that ended before it
//! was handed its job and gives the run a new pod (tried: 1,484 of 10,000 runs started, 13
//! ended in five minutes, the room all held). What the operator does after a pod starts is
//! measured on the real node by `make bench`'s other rounds.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, RUNNER_LABEL, SHARD_LABEL};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::cluster::{self, Writes};
use crate::config::Args;
use crate::stats::{self, Summary};
use crate::suite::{Env, progress};

pub mod figures;
mod observe;
mod shard;

use figures::{Fairness, Seen, Shape};
use observe::{Observer, Track};
use shard::{Kwok, Peaks, Shard};

#[derive(Debug, Serialize)]
pub struct SimReport {
    pub nodes: usize,
    pub large_nodes: usize,
    pub what_is_measured: String,
    pub rounds: Vec<SimRound>,
    /// Nodes, pods, CodeRuns and processes of the rounds were all removed.
    pub cleaned_up: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct SimRound {
    pub runs: usize,
    pub tenants: usize,
    /// Seconds kwok held each pod bound before marking it Running (0: at once).
    pub hold_s: u64,
    pub shard: String,
    pub shapes: BTreeMap<String, usize>,
    pub created: usize,
    pub create_errors: Vec<String>,
    pub create_s: f64,
    pub created_per_s: f64,
    /// `POST /v1/runs` (`"wait": false`) to its answer.
    pub post: Summary,
    pub admitted: usize,
    pub bound: usize,
    pub started: usize,
    /// From the CodeRun first seen to its first pod seen (the operator admitted it and
    /// made its pod), to the pod bound to a node (the scheduler), to the pod Running (kwok).
    pub to_admitted: Summary,
    pub to_bound: Summary,
    pub to_started: Summary,
    pub admitted_to_bound: Summary,
    /// Pods first seen, and seen Running, per second between the 10th and 90th percentile.
    pub admitted_per_s: Option<f64>,
    pub started_per_s: Option<f64>,
    /// Runs that waited for room (a place in line was written to their status).
    pub waited_for_room: usize,
    pub fairness: Fairness,
    /// Runs one of whose pods the scheduler found no node for: admitted to room no single
    /// node had.
    pub misplaced: usize,
    /// Large runs bound to a standard node (which cannot hold them).
    pub large_on_standard: usize,
    pub pods_per_run: BTreeMap<String, usize>,
    /// Runs that reached each phase (Completed must be none: nothing ran).
    pub phases: BTreeMap<String, usize>,
    pub deleted: usize,
    pub delete_errors: Vec<String>,
    pub duration_s: f64,
    /// CPU seconds of each process during the round (the shard's operator and API server,
    /// the cluster's components, kwok) and their peak resident memory.
    pub cpu_s: BTreeMap<String, f64>,
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub operator_cpu_ms_per_run: Option<f64>,
    pub apiserver_cpu_ms_per_run: Option<f64>,
    pub operator_writes_per_run: Option<f64>,
    pub operator_writes: String,
    /// kube-apiserver's requests during the round per run, all clients (the cluster is
    /// shared), by verb and by verb and resource.
    pub kube_requests_per_run: Option<f64>,
    pub kube_requests_by_verb: BTreeMap<String, f64>,
    pub kube_requests_largest: String,
    pub cleaned_up: bool,
}

pub const WHAT_IS_MEASURED: &str = "the control plane up to a run's pod bound to a simulated \
    node and marked Running by kwok; no program runs there, each run is deleted once its pod \
    is seen Running, and no run is counted as completed";

pub async fn run(env: &Env, args: &Args) -> anyhow::Result<SimReport> {
    let mut plan: Vec<(usize, u64)> = args.sim_runs.iter().map(|n| (*n, 0)).collect();
    if args.sim_fair_runs > 0 {
        plan.push((args.sim_fair_runs, args.sim_hold_seconds));
    }
    let (nodes, large) = (args.sim_nodes, args.sim_large_nodes);
    progress(&format!(
        "scale-sim: {nodes} simulated nodes ({large} large) through kwok"
    ));
    let mut kwok = Kwok::start(&args.kwok_script, nodes, large, 0)?;
    let mut rounds = Vec::new();
    let mut failed = None;
    for (n, hold_s) in plan {
        kwok.hold(hold_s)?;
        match round(env, args, n, hold_s).await {
            Ok(r) => rounds.push(r),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let stopped = kwok.stop();
    if let Some(e) = failed {
        return Err(e);
    }
    let cleaned_up = stopped.is_ok() && rounds.iter().all(|r| r.cleaned_up);
    Ok(SimReport {
        nodes,
        large_nodes: large,
        what_is_measured: WHAT_IS_MEASURED.into(),
        rounds,
        cleaned_up,
    })
}

/// What was read before the round, to subtract after it.
struct Before {
    cpu: BTreeMap<String, f64>,
    kube: BTreeMap<String, f64>,
    writes: Option<Writes>,
}

async fn read_counters(
    client: &Client,
    pids: &BTreeMap<String, u32>,
    operator_metrics: &str,
) -> Before {
    let cpu = pids
        .iter()
        .filter_map(|(name, pid)| Some((name.clone(), shard::cpu_seconds(*pid)?)))
        .collect();
    let kube = match http::Request::get("/metrics").body(Vec::new()) {
        Ok(request) => client.request_text(request).await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let writes = match reqwest::get(operator_metrics).await {
        Ok(r) => r.text().await.ok().map(|t| Writes::parse(&t)),
        Err(_) => None,
    };
    Before {
        cpu,
        kube: figures::kube_requests(&kube),
        writes,
    }
}

async fn round(env: &Env, args: &Args, n: usize, hold_s: u64) -> anyhow::Result<SimRound> {
    let tenants = args.sim_tenants.max(1);
    let namespace = env.sandbox_namespace.clone();
    let shard = Shard::start(tenants, &namespace, hold_s).await?;
    progress(&format!(
        "scale-sim: {n} runs from {tenants} tenants on shard {} (pods held {hold_s} s)",
        shard.name
    ));
    let observer = Observer::start(&env.client, &namespace, &shard.name).await?;
    let mut pids = shard::cluster_pids(&args.run_dir);
    pids.insert("operator (shard)".into(), shard.operator.pid());
    pids.insert("apiserver (shard)".into(), shard.api.process.pid());
    if let Some(pid) = cluster::leader_pid(&env.client).await {
        pids.insert("operator (main stack)".into(), pid);
    }
    let before = read_counters(&env.client, &pids, &shard.operator_metrics).await;
    let peaks = Peaks::start(pids.clone());
    let started = Instant::now();
    let created = create_runs(&shard, n, args.sim_create_concurrency).await;
    let create_s = started.elapsed().as_secs_f64();
    progress(&format!(
        "scale-sim: {} created in {create_s:.0} s; waiting until every pod is started",
        created.names.len()
    ));
    wait_started(&observer, &created.names, args.sim_timeout_seconds, started).await;
    let duration_s = started.elapsed().as_secs_f64();
    // What the operator still does for the last runs started (events go out a second late)
    // is part of their cost: the counters are read once its writes have stopped.
    let after = settled_counters(&env.client, &pids, &shard.operator_metrics).await;
    let peak_rss_mib = peaks.stop();
    // The last deletions land; whatever is left is collected by the cleanup.
    wait_deleted(&observer, &created.names, Duration::from_secs(60)).await;
    let tracks = observer.snapshot();
    let cleaned_up = clean_up(&env.client, &namespace, &shard.name, &created.names).await;
    let delete_errors = observer.deletes_failed.lock().unwrap().clone();
    drop(observer);
    let mut r = figures_of(&created, &tracks, tenants);
    r.runs = n;
    r.tenants = tenants;
    r.hold_s = hold_s;
    r.shard = shard.name.clone();
    r.create_s = create_s;
    r.created_per_s = created.names.len() as f64 / create_s.max(0.001);
    r.duration_s = duration_s;
    r.delete_errors = delete_errors.into_iter().take(5).collect();
    r.peak_rss_mib = peak_rss_mib;
    r.cleaned_up = cleaned_up;
    costs(&mut r, &before, &after, created.names.len());
    drop(shard);
    Ok(r)
}

/// The runs created, their tenants and shapes, and how the API answered.
struct Created {
    names: Vec<String>,
    tenant: HashMap<String, usize>,
    shape: HashMap<String, Shape>,
    post_ms: Vec<f64>,
    errors: Vec<String>,
}

/// A run's tenant and shape, and its id and answer time (or why it was not created).
type Attempt = (usize, Shape, Result<(String, f64), String>);

/// Creates `n` runs through the shard's REST API, `concurrency` requests in flight, in the
/// order of [`figures::tenant_of`]; each tenant's runs take the shapes of [`Shape::of`].
async fn create_runs(shard: &Shard, n: usize, concurrency: usize) -> Created {
    let tenants = shard.keys.len();
    let mut per_tenant = vec![0usize; tenants];
    let plan: Vec<(usize, Shape)> = (0..n)
        .map(|i| {
            let t = figures::tenant_of(i, tenants);
            per_tenant[t] += 1;
            (t, Shape::of(per_tenant[t] - 1))
        })
        .collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("an HTTP client");
    let url = format!("{}/v1/runs", shard.api.base);
    let results: Vec<Attempt> = futures::stream::iter(plan)
        .map(|(t, shape)| {
            let (http, url, token) = (http.clone(), url.clone(), shard.keys[t].token.clone());
            async move { (t, shape, create_one(&http, &url, &token, shape).await) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut created = Created {
        names: Vec::new(),
        tenant: HashMap::new(),
        shape: HashMap::new(),
        post_ms: Vec::new(),
        errors: Vec::new(),
    };
    for (t, shape, result) in results {
        match result {
            Ok((name, ms)) => {
                created.tenant.insert(name.clone(), t);
                created.shape.insert(name.clone(), shape);
                created.names.push(name);
                created.post_ms.push(ms);
            }
            Err(e) => created.errors.push(e),
        }
    }
    created
}

/// One `POST /v1/runs` that does not wait for the run, retried after a 429 as a client
/// would; the run's id (its CodeRun's name) and how long the answer took.
async fn create_one(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    shape: Shape,
) -> Result<(String, f64), String> {
    let (memory_mb, disk_mb) = shape.limits();
    let body = serde_json::json!({
        "language": "python", "code": "print(1)", "wait": false,
        "limits": {"memory_mb": memory_mb, "disk_mb": disk_mb, "timeout_ms": 10_000},
    });
    for _ in 0..20 {
        let sent = Instant::now();
        let res = http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST /v1/runs: {e}"))?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        if status == 429 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if status != 200 {
            return Err(format!("POST /v1/runs: {status} {text}"));
        }
        let run: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let id = run["id"].as_str().ok_or("no id in the answer")?;
        return Ok((id.to_string(), stats::ms(sent.elapsed())));
    }
    Err("POST /v1/runs: still 429 after 20 tries".into())
}

/// Waits until every run's pod was seen started (or the run ended without one), or the
/// round's time is up.
async fn wait_started(observer: &Observer, names: &[String], timeout_s: u64, since: Instant) {
    let deadline = since + Duration::from_secs(timeout_s);
    let mut last_note = Instant::now();
    loop {
        let p = observer.progress(names);
        if p.started + p.ended_unstarted >= names.len() || Instant::now() >= deadline {
            return;
        }
        if last_note.elapsed() >= Duration::from_secs(15) {
            progress(&format!(
                "scale-sim: {}/{} pods started, {} runs deleted, {} ended unstarted, after {:.0} s",
                p.started,
                names.len(),
                p.deleted,
                p.ended_unstarted,
                since.elapsed().as_secs_f64()
            ));
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The counters once the operator's write count has not moved for three seconds (at most a
/// minute on).
async fn settled_counters(
    client: &Client,
    pids: &BTreeMap<String, u32>,
    operator_metrics: &str,
) -> Before {
    let total = |b: &Before| b.writes.as_ref().map(|w| w.0.values().sum::<f64>());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = read_counters(client, pids, operator_metrics).await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = read_counters(client, pids, operator_metrics).await;
        if total(&now) == total(&last) || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

async fn wait_deleted(observer: &Observer, names: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let p = observer.progress(names);
        if p.deleted >= p.started {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes whatever of the shard is left (CodeRuns, and so their pods) and waits until
/// none of its runs' pods remain; whether all went.
async fn clean_up(client: &Client, namespace: &str, shard: &str, names: &[String]) -> bool {
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{SHARD_LABEL}={shard}");
    let _ = runs
        .delete_collection(
            &DeleteParams::background(),
            &ListParams::default().labels(&selector),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let ours: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let left_runs = runs
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_or(usize::MAX, |l| l.items.len());
        let left_pods = pods
            .list_metadata(&ListParams::default().labels(&format!("{RUNNER_LABEL}=true")))
            .await
            .map_or(usize::MAX, |l| {
                l.items
                    .iter()
                    .filter(|p| {
                        p.owner_references()
                            .iter()
                            .any(|o| o.kind == "CodeRun" && ours.contains(o.name.as_str()))
                    })
                    .count()
            });
        if left_runs == 0 && left_pods == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// The round's figures from what the watches saw of the runs created.
fn figures_of(created: &Created, tracks: &HashMap<String, Track>, tenants: usize) -> SimRound {
    let mine: Vec<(&String, &Track)> = created
        .names
        .iter()
        .filter_map(|n| Some((n, tracks.get(n)?)))
        .collect();
    let seen = seen_runs(created, &mine);
    let times = |pick: fn(&Seen) -> Option<Instant>| -> Vec<Instant> {
        seen.iter().filter_map(pick).collect()
    };
    let mut shapes = BTreeMap::new();
    for shape in created.shape.values() {
        *shapes.entry(shape.name().to_string()).or_insert(0) += 1;
    }
    let mut phases = BTreeMap::new();
    for (_, t) in &mine {
        for p in &t.phases {
            *phases.entry(p.clone()).or_insert(0) += 1;
        }
    }
    let large_on_standard = mine
        .iter()
        .filter(|(n, t)| {
            created.shape.get(*n) == Some(&Shape::Large)
                && t.node
                    .as_deref()
                    .is_some_and(|node| !node.starts_with("kwok-large-"))
        })
        .count();
    SimRound {
        shapes,
        created: created.names.len(),
        create_errors: created.errors.iter().take(5).cloned().collect(),
        post: Summary::of(&created.post_ms),
        admitted: times(|s| s.admitted).len(),
        bound: times(|s| s.bound).len(),
        started: times(|s| s.started).len(),
        to_admitted: figures::between(&seen, |s| Some(s.created), |s| s.admitted),
        to_bound: figures::between(&seen, |s| Some(s.created), |s| s.bound),
        to_started: figures::between(&seen, |s| Some(s.created), |s| s.started),
        admitted_to_bound: figures::between(&seen, |s| s.admitted, |s| s.bound),
        admitted_per_s: figures::saturated_rate(&times(|s| s.admitted)),
        started_per_s: figures::saturated_rate(&times(|s| s.started)),
        waited_for_room: seen.iter().filter(|s| s.waited).count(),
        fairness: figures::fairness(&seen, tenants),
        misplaced: mine.iter().filter(|(_, t)| t.unschedulable).count(),
        large_on_standard,
        pods_per_run: observe::pods_per_run(mine.iter().map(|(_, t)| *t)),
        phases,
        deleted: mine.iter().filter(|(_, t)| t.deleted).count(),
        ..Default::default()
    }
}

/// The runs the watches saw created, each with its place in its tenant's order.
fn seen_runs(created: &Created, mine: &[(&String, &Track)]) -> Vec<Seen> {
    let mut seen: Vec<(u64, Seen)> = mine
        .iter()
        .filter_map(|(name, t)| {
            let tenant = *created.tenant.get(*name)?;
            let seen = Seen {
                tenant,
                order: 0,
                created: t.created?,
                waited: t.waited,
                admitted: t.admitted,
                bound: t.bound,
                started: t.started,
            };
            Some((t.revision, seen))
        })
        .collect();
    seen.sort_by_key(|(revision, _)| *revision);
    let mut next = HashMap::new();
    seen.into_iter()
        .map(|(_, mut s)| {
            let order = next.entry(s.tenant).or_insert(0u64);
            s.order = *order;
            *order += 1;
            s
        })
        .collect()
}

/// CPU, writes and kube-apiserver requests of the round, per run.
fn costs(r: &mut SimRound, before: &Before, after: &Before, runs: usize) {
    r.cpu_s = after
        .cpu
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v - before.cpu.get(k)?)))
        .collect();
    let per_run_ms = |name: &str| r.cpu_s.get(name).map(|s| s * 1000.0 / runs.max(1) as f64);
    r.operator_cpu_ms_per_run = per_run_ms("operator (shard)");
    r.apiserver_cpu_ms_per_run = per_run_ms("apiserver (shard)");
    if let (Some(b), Some(a)) = (&before.writes, &after.writes) {
        let per = a.since(b).per(runs);
        r.operator_writes_per_run = Some(per.in_all());
        r.operator_writes = per.describe();
    }
    let requests = figures::growth(&before.kube, &after.kube, runs);
    r.kube_requests_per_run = Some(requests.values().sum());
    r.kube_requests_by_verb = figures::by_verb(&requests);
    r.kube_requests_largest = figures::largest(&requests, 10);
}

/// The nodes and what a round measures, in a sentence.
pub fn describe(report: &SimReport) -> String {
    format!(
        "{} simulated nodes ({} large: 16 CPU, 64 GiB; the others 4 CPU, 8 GiB; 110 pods \
         each); {}",
        report.nodes, report.large_nodes, report.what_is_measured
    )
}
