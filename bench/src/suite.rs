//! Runs the chosen benchmarks in turn, each against the live stack, and writes the report.
//! A benchmark that cannot finish says why in its section; the others still run.
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::DeleteParams;
use kube::{Api, Client};

use crate::config::{Args, Suite};
use crate::report::{self, Host, Report, Section};
use crate::{
    apiserver_load, cluster, containers, latency, lists, mcp, pool, preload, rest, scale, sim,
    stream, throughput, wrapper,
};

/// What the benchmarks that compare against raw pods share.
pub struct Env {
    pub client: Client,
    pub api: rest::Api,
    pub sandbox_namespace: String,
    /// Where the raw pods and the wrapper pods run.
    pub pods_namespace: String,
    /// Kept alive for as long as the namespace is used: dropping it deletes the namespace.
    _pods_ns: testkit::TestNamespace,
}

impl Env {
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.pods_namespace)
    }
}

pub fn progress(message: &str) {
    eprintln!(
        "[bench {}] {message}",
        chrono::Local::now().format("%H:%M:%S")
    );
}

pub async fn run(args: &Args) -> Report {
    let started_at = chrono::Local::now().to_rfc3339();
    let started = Instant::now();
    let load_before = load_average();
    if let Err(e) = std::fs::create_dir_all(&args.out_dir) {
        progress(&format!("cannot create {}: {e}", args.out_dir.display()));
    }

    let mut latency = Section::Skipped;
    let mut pool = Section::Skipped;
    let mut stream = Section::Skipped;
    let mut mcp = Section::Skipped;
    let mut preload = Section::Skipped;
    let mut throughput = Section::Skipped;
    let mut apiserver = Section::Skipped;
    let mut scale = Section::Skipped;
    let mut wrapper = Section::Skipped;
    let mut scale_sim = Section::Skipped;
    let mut containers = Section::Skipped;
    let mut lists = Section::Skipped;

    // Needs no cluster: first, on a quiet machine.
    if args.wants(Suite::Lists) {
        progress("lists at scale: pages of runs and files from seeded local stores");
        lists = guarded(lists::run(args)).await;
    }

    let connected = match args.wants_cluster() {
        true => Some(connect(args).await),
        false => None,
    };
    match connected {
        None => {}
        Some(Err(e)) => {
            let error = format!("{e:#}");
            latency = unavailable(args, Suite::Latency, &error);
            pool = unavailable(args, Suite::Pool, &error);
            stream = unavailable(args, Suite::Stream, &error);
            mcp = unavailable(args, Suite::Mcp, &error);
            preload = unavailable(args, Suite::Preload, &error);
            throughput = unavailable(args, Suite::Throughput, &error);
            apiserver = unavailable(args, Suite::Apiserver, &error);
            scale = unavailable(args, Suite::Scale, &error);
            wrapper = unavailable(args, Suite::Wrapper, &error);
            scale_sim = unavailable(args, Suite::ScaleSim, &error);
            containers = unavailable(args, Suite::Containers, &error);
        }
        Some(Ok(env)) => {
            if args.wants(Suite::Latency) {
                progress(&format!(
                    "1/8 run latency: {} runs each warm, cold and as a raw pod",
                    args.latency_runs
                ));
                latency = guarded(latency::run(&env, args.latency_runs)).await;
            }
            if args.wants(Suite::Stream) {
                progress(&format!(
                    "2/8 live output: {} streamed runs",
                    args.stream_runs
                ));
                stream = guarded(stream::run(
                    &env,
                    &args.api_url,
                    &args.api_token,
                    args.stream_runs,
                ))
                .await;
            }
            if args.wants(Suite::Mcp) {
                progress(&format!(
                    "3/8 MCP vs REST: {} warm runs each way, interleaved",
                    args.mcp_pairs
                ));
                mcp = guarded(mcp::run(
                    &env,
                    &args.api_url,
                    &args.api_token,
                    args.mcp_pairs,
                ))
                .await;
            }
            if args.wants(Suite::Preload) {
                progress(&format!(
                    "preloaded interpreters: {} data-science rounds, 60 runs at 3/s, a 100 MiB output",
                    args.preload_rounds
                ));
                preload = guarded(preload::run(&env, args.preload_rounds)).await;
            }
            if args.wants(Suite::Containers) {
                progress(&format!(
                    "containers: {} rounds of a container run, a warm one-shot and kubectl exec; {} creations",
                    args.container_runs, args.container_creations
                ));
                containers = guarded(containers::run(&env, args)).await;
            }
            if args.wants(Suite::Pool) {
                progress(&format!(
                    "4/8 warm pool: {} pods, {} bursts, then a sustained load",
                    args.pool_size, args.pool_bursts
                ));
                let helm = cluster::Helm {
                    helm: args.helm.clone(),
                    kubeconfig: args.helm_kubeconfig.clone(),
                };
                pool = guarded(pool::run(
                    &env,
                    &helm,
                    &args.chart,
                    args.pool_size,
                    args.pool_bursts,
                ))
                .await;
            }
            if args.wants(Suite::Throughput) {
                progress(&format!(
                    "5/8 throughput: concurrency {:?}, items {:?}",
                    args.throughput_levels, args.throughput_items
                ));
                throughput = guarded(throughput::run(
                    &env,
                    &args.throughput_levels,
                    &args.throughput_items,
                ))
                .await;
            }
            if args.wants(Suite::Apiserver) {
                progress(&format!(
                    "6/8 apiserver: own instance on :{}, {} connections, {} s per route",
                    args.apiserver_port, args.http_connections, args.http_seconds
                ));
                apiserver = guarded(apiserver_load::run(args)).await;
            }
            if args.wants(Suite::Wrapper) {
                progress(&format!(
                    "7/8 wrapper overhead: {} runs per language",
                    args.wrapper_runs
                ));
                wrapper = guarded(wrapper::run(&env, args.wrapper_runs)).await;
            }
            // Last: it fills the node, and its namespaces take a while to go.
            if args.wants(Suite::Scale) {
                progress(&format!(
                    "8/8 operator scale: {:?} CodeRuns at once",
                    args.scale_runs
                ));
                let helm = cluster::Helm {
                    helm: args.helm.clone(),
                    kubeconfig: args.helm_kubeconfig.clone(),
                };
                scale = guarded(async {
                    let most = args.scale_runs.iter().copied().max().unwrap_or(0);
                    helm.set_queue(&args.chart, most.max(1000), scale::wait_limit(args, most))?;
                    env.api.ready().await?;
                    let mut all = Vec::new();
                    let mut failed = None;
                    for &n in &args.scale_runs {
                        match scale::run(args, &env.client, &env.pods_namespace, n).await {
                            Ok(round) => all.push(round),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let rolled_back = helm.roll_back();
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    rolled_back?;
                    anyhow::Ok(report::ScaleRounds { rounds: all })
                })
                .await;
            }
            // Its own shard, on nodes of its own: after the rounds of the real node.
            if args.wants(Suite::ScaleSim) {
                progress(&format!(
                    "9/9 scale by simulation: {} nodes; rounds of {:?} runs, then {} holding room",
                    args.sim_nodes, args.sim_runs, args.sim_fair_runs
                ));
                scale_sim = guarded(sim::run(&env, args)).await;
            }
            progress(&format!("deleting namespace {}", env.pods_namespace));
            delete_namespace(&env.client, &env.pods_namespace, Duration::from_secs(60)).await;
        }
    }

    let mut report = Report {
        started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_before,
            load_after: load_average(),
        },
        table: Vec::new(),
        notes: Vec::new(),
        latency,
        pool,
        stream,
        mcp,
        preload,
        throughput,
        apiserver,
        scale,
        wrapper,
        scale_sim,
        containers,
        lists,
    };
    report.table = report::table(&report);
    report.notes = report::notes(&report);
    report
}

async fn connect(args: &Args) -> anyhow::Result<Env> {
    let client = Client::try_default()
        .await
        .context("no kubeconfig for the local cluster (run `make up`)")?;
    let api = rest::Api::new(&args.api_url, &args.api_token)?;
    let pods_ns = new_namespace(&client, "bench-pods").await?;
    Ok(Env {
        client,
        api,
        sandbox_namespace: args.sandbox_namespace.clone(),
        pods_namespace: pods_ns.name.clone(),
        _pods_ns: pods_ns,
    })
}

/// A fresh namespace with its default service account ready.
pub async fn new_namespace(
    client: &Client,
    prefix: &'static str,
) -> anyhow::Result<testkit::TestNamespace> {
    let client = client.clone();
    // The e2e helper panics when the cluster refuses; a benchmark reports it instead.
    tokio::spawn(async move { testkit::TestNamespace::new(&client, prefix).await })
        .await
        .map_err(|e| {
            let why = e
                .try_into_panic()
                .map_or_else(|_| "cancelled".into(), panic_message);
            anyhow::anyhow!("could not create a namespace {prefix}-*: {why}")
        })
}

/// Deletes a namespace and waits until it is gone; whether it went within `within`.
pub async fn delete_namespace(client: &Client, name: &str, within: Duration) -> bool {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.delete(name, &DeleteParams::background()).await.is_err() {
        return false;
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if matches!(api.get_opt(name).await, Ok(None)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// A wanted benchmark that could not start fails with the reason; the others are skipped.
fn unavailable<T>(args: &Args, suite: Suite, error: &str) -> Section<T> {
    if args.wants(suite) {
        Section::failed(error)
    } else {
        Section::Skipped
    }
}

/// Runs one benchmark; an error or a panic becomes its section's failure.
async fn guarded<T>(benchmark: impl Future<Output = anyhow::Result<T>>) -> Section<T> {
    match AssertUnwindSafe(benchmark).catch_unwind().await {
        Ok(result) => Section::from_result(result),
        Err(panic) => Section::failed(&format!("panicked: {}", panic_message(panic))),
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Writes `results.json` and a dated copy into `dir`; returns both paths.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(report)?;
    let latest = dir.join("results.json");
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let copy = dir.join(format!("results-{stamp}.json"));
    std::fs::write(&latest, &json).with_context(|| format!("writing {}", latest.display()))?;
    std::fs::write(&copy, &json).with_context(|| format!("writing {}", copy.display()))?;
    Ok((latest, copy))
}
