//! Interpreters waiting with their modules imported, pools that follow demand, and large
//! output files (issue 19), measured next to their baselines in the same round:
//! - a data-science run (pandas reads a 1,000-row CSV, groups it, matplotlib plots a PNG) on
//!   the preloaded Python pool, on a pool of the same image whose interpreter imports
//!   nothing, and on a cold pod, interleaved;
//! - 60 runs started at 3 per second through the default pool (minimum 2): how many went
//!   cold, and the latency; then streams at 1, 2 and 3 per second through a pool of plain
//!   interpreters (minimum 2, maximum 16), with the machine's CPU seconds per run: what one
//!   node sustains when every run takes a pod of its own;
//! - the memory of an idle pool pod's interpreter, with and without the preload;
//! - one run returning a 100 MiB output file: its seconds, the download's, and the
//!   operator's peak memory.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, RunnerPool, StartMode};
use futures::StreamExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::rest::COLD_MEMORY_MB;
use crate::stats::{self, Summary};
use crate::suite::{Env, progress};

/// A pool like the default Python one, whose interpreters import nothing ahead.
const PLAIN_POOL: &str = "bench-plain";
/// Its shape (runs of this memory limit go to it).
const PLAIN_MEMORY_MB: u64 = 576;
/// The plain pool's maximum in the rate sweep.
const SWEEP_MAX: usize = 16;

const DATA_CODE: &str = "import os\nimport pandas as pd\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n\
pd.DataFrame({'g': [i % 7 for i in range(1000)], 'v': range(1000)}).to_csv('/tmp/data.csv', index=False)\n\
df = pd.read_csv('/tmp/data.csv')\nmeans = df.groupby('g')['v'].mean()\n\
os.makedirs('/work/outputs', exist_ok=True)\nmeans.plot(kind='bar')\nplt.savefig('/work/outputs/means.png')\n\
print(len(df), means.iloc[0])\n";
const DATA_STDOUT: &str = "1000 497.0\n";

#[derive(Debug, Serialize)]
pub struct DataRuns {
    pub preloaded: Summary,
    pub plain_pool: Summary,
    pub cold: Summary,
    /// Of the runs meant for each pool, how many got one of its pods.
    pub preloaded_warm: usize,
    pub plain_warm: usize,
    pub p50_plain_over_preloaded: Option<f64>,
    pub p50_cold_over_preloaded: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Steady {
    pub runs: usize,
    pub per_second: f64,
    pub completed: usize,
    pub cold: usize,
    pub latency: Summary,
    /// The machine's CPU seconds (every process: the control plane, the stack, the pods)
    /// per run while the stream ran.
    pub cpu_s_per_run: Option<f64>,
    pub node_busy_pct: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct IdleMemory {
    pub preloaded_rss_mib: Option<u64>,
    pub plain_rss_mib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LargeOutput {
    pub bytes: u64,
    pub run_s: f64,
    pub download_s: f64,
    pub download_mib_per_s: f64,
    pub operator_peak_mib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PreloadReport {
    pub data: DataRuns,
    pub steady: Steady,
    /// Streams at 1, 2 and 3 runs a second through a pool of plain interpreters (minimum 2,
    /// maximum 16).
    pub sweep: Vec<Steady>,
    pub idle: IdleMemory,
    pub large_output: Option<LargeOutput>,
    pub first_error: Option<String>,
}

pub async fn run(env: &Env, rounds: usize) -> anyhow::Result<PreloadReport> {
    env.api.ready().await?;
    let pools: Api<RunnerPool> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    make_plain_pool(&pools).await?;
    let result = measure(env, rounds).await;
    let _ = pools.delete(PLAIN_POOL, &DeleteParams::default()).await;
    result
}

async fn make_plain_pool(pools: &Api<RunnerPool>) -> anyhow::Result<()> {
    let pool: RunnerPool = serde_json::from_value(json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "RunnerPool",
        "metadata": {"name": PLAIN_POOL},
        "spec": {"language": "python", "minReplicas": 2, "maxReplicas": 2,
                 "memoryMb": PLAIN_MEMORY_MB, "kernel": true, "preload": []},
    }))?;
    let _ = pools.delete(PLAIN_POOL, &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pools.create(&PostParams::default(), &pool).await?;
    Ok(())
}

async fn measure(env: &Env, rounds: usize) -> anyhow::Result<PreloadReport> {
    let mut first_error = None;
    let runs: Api<CodeRun> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    wait_pools(env).await;
    let idle = IdleMemory {
        preloaded_rss_mib: interpreter_rss(env, "python").await,
        plain_rss_mib: interpreter_rss(env, PLAIN_POOL).await,
    };
    progress(&format!("preload: idle interpreters {idle:?}"));
    let data = data_runs(env, &runs, rounds, &mut first_error).await;
    let steady = steady(env, &runs, &mut first_error).await;
    let pools: Api<RunnerPool> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    let sweep = sweep(env, &pools, &runs, &mut first_error).await;
    let large_output = match large_output(env).await {
        Ok(l) => Some(l),
        Err(e) => {
            first_error.get_or_insert_with(|| format!("large output: {e:#}"));
            None
        }
    };
    Ok(PreloadReport {
        data,
        steady,
        sweep,
        idle,
        large_output,
        first_error,
    })
}

/// Until both pools have their idle pods (or a minute has passed).
async fn wait_pools(env: &Env) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    for pool in ["python", PLAIN_POOL] {
        let selector = format!("{}={pool}", codeinterp_crds::POOL_LABEL);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let list = pods
                .list(&kube::api::ListParams::default().labels(&selector))
                .await;
            let ready = list.map_or(0, |l| {
                l.items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count()
            });
            if ready >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The kernels import their modules after the pod is running.
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// The resident memory of the interpreter waiting in an idle pod of `pool`.
async fn interpreter_rss(env: &Env, pool: &str) -> Option<u64> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    let selector = format!("{}={pool}", codeinterp_crds::POOL_LABEL);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .ok()?;
    for pod in list.items {
        let name = pod.name_any();
        if let Some(pid) =
            testkit::pod_process(&env.client, &env.sandbox_namespace, &name, "python3").await
        {
            return testkit::proc_status_kib(pid, "VmRSS:").map(|k| k / 1024);
        }
    }
    None
}

/// The data-science run, `rounds` times on each path, interleaved.
async fn data_runs(
    env: &Env,
    runs: &Api<CodeRun>,
    rounds: usize,
    first_error: &mut Option<String>,
) -> DataRuns {
    let (mut pre, mut plain, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pre_warm, mut plain_warm) = (0, 0);
    for round in 0..rounds {
        for (memory, into) in [
            (None, &mut pre),
            (Some(PLAIN_MEMORY_MB), &mut plain),
            (Some(COLD_MEMORY_MB), &mut cold),
        ] {
            let mut limits = json!({"timeout_ms": 30_000});
            if let Some(mb) = memory {
                limits["memory_mb"] = json!(mb);
            }
            let sent = Instant::now();
            let body = json!({"language": "python", "code": DATA_CODE, "limits": limits});
            match env.api.run(body).await.and_then(|r| {
                r.check(DATA_STDOUT)?;
                Ok(r)
            }) {
                Ok(run) => {
                    into.push(stats::ms(sent.elapsed()));
                    let warm = mode(runs, &run.id).await == Some(StartMode::Warm);
                    match memory {
                        None => pre_warm += usize::from(warm),
                        Some(PLAIN_MEMORY_MB) => plain_warm += usize::from(warm),
                        _ => {}
                    }
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            // The pools refill before the next round.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        progress(&format!(
            "preload: data-science round {}/{rounds}",
            round + 1
        ));
    }
    let (p, q, c) = (Summary::of(&pre), Summary::of(&plain), Summary::of(&cold));
    let ratio = |x: &Summary| Some(x.p50_ms? / p.p50_ms?);
    DataRuns {
        p50_plain_over_preloaded: ratio(&q),
        p50_cold_over_preloaded: ratio(&c),
        preloaded: p,
        plain_pool: q,
        cold: c,
        preloaded_warm: pre_warm,
        plain_warm,
    }
}

async fn mode(runs: &Api<CodeRun>, id: &str) -> Option<StartMode> {
    runs.get(id).await.ok()?.status?.start_mode
}

/// 60 runs started 1/3 s apart through the default pool, each waiting for its answer.
async fn steady(env: &Env, runs: &Api<CodeRun>, first_error: &mut Option<String>) -> Steady {
    stream(env, runs, first_error, None, 3.0, 60).await
}

/// `n` runs of `print(1+1)` started `per_second` apart (of `memory_mb`, or the default
/// shape), each waiting for its answer; with the node's CPU they took.
async fn stream(
    env: &Env,
    runs: &Api<CodeRun>,
    first_error: &mut Option<String>,
    memory_mb: Option<u64>,
    per_second: f64,
    n: usize,
) -> Steady {
    let every = Duration::from_secs_f64(1.0 / per_second);
    let busy_before = node_busy_seconds();
    let started = Instant::now();
    let results: Vec<anyhow::Result<(String, f64)>> = futures::stream::iter(0..n)
        .map(|i| async move {
            tokio::time::sleep_until((started + every * i as u32).into()).await;
            let sent = Instant::now();
            let run = match memory_mb {
                None => env.api.run_python("print(1+1)").await?,
                Some(mb) => {
                    env.api
                        .run(json!({"language": "python", "code": "print(1+1)",
                                    "limits": {"timeout_ms": 10_000, "memory_mb": mb}}))
                        .await?
                }
            };
            run.check("2\n")?;
            Ok((run.id, stats::ms(sent.elapsed())))
        })
        .buffer_unordered(n)
        .collect()
        .await;
    let wall = started.elapsed().as_secs_f64();
    let busy = node_busy_seconds().zip(busy_before).map(|(a, b)| a - b);
    let mut ms = Vec::new();
    let mut cold = 0;
    for r in results {
        match r {
            Ok((id, t)) => {
                ms.push(t);
                cold += usize::from(mode(runs, &id).await != Some(StartMode::Warm));
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    progress(&format!("preload: {n} runs at {per_second}/s, {cold} cold"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Steady {
        runs: n,
        per_second,
        completed: ms.len(),
        cold,
        latency: Summary::of(&ms),
        cpu_s_per_run: busy.map(|b| (b / n as f64 * 1000.0).round() / 1000.0),
        node_busy_pct: busy.map(|b| (100.0 * b / wall / cores).round()),
    }
}

/// The CPU seconds this machine's cores have been busy (all but idle and iowait).
fn node_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<f64>() - idle) / 100.0)
}

/// The plain pool made as large as a stream may need, then streams at 1, 2 and 3 runs a
/// second through it: where this node's CPU (one pod made and removed per run) stops a
/// pool from keeping up.
async fn sweep(
    env: &Env,
    pools: &Api<RunnerPool>,
    runs: &Api<CodeRun>,
    first_error: &mut Option<String>,
) -> Vec<Steady> {
    let patch = json!({"spec": {"minReplicas": 2, "maxReplicas": SWEEP_MAX}});
    if let Err(e) = pools
        .patch(PLAIN_POOL, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        first_error.get_or_insert_with(|| format!("resizing the plain pool: {e}"));
        return Vec::new();
    }
    let mut out = Vec::new();
    for per_second in [1.0, 2.0, 3.0] {
        // Back to its minimum between streams.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let n = (per_second * 30.0) as usize;
        let memory = Some(PLAIN_MEMORY_MB);
        out.push(stream(env, runs, first_error, memory, per_second, n).await);
    }
    out
}

/// A run that writes 100 MiB of output file, and the file's download.
async fn large_output(env: &Env) -> anyhow::Result<LargeOutput> {
    const BYTES: u64 = 100 * 1024 * 1024;
    let code = format!(
        "import os\nos.makedirs('/work/outputs', exist_ok=True)\n\
         with open('/work/outputs/big.bin', 'wb') as f:\n    \
         for _ in range({}):\n        f.write(os.urandom(1 << 20))\nprint('ok')\n",
        BYTES >> 20
    );
    let sent = Instant::now();
    let run = env
        .api
        .run_full(json!({"language": "python", "code": code,
            "limits": {"timeout_ms": 120_000, "disk_mb": 256,
                       "max_artifact_bytes": BYTES, "max_artifact_total_bytes": BYTES}}))
        .await?;
    let run_s = sent.elapsed().as_secs_f64();
    let id = run["artifacts"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no output file: {run}"))?
        .to_string();
    let fetched = Instant::now();
    let got = env.api.download(&id).await?;
    let download_s = fetched.elapsed().as_secs_f64();
    anyhow::ensure!(got == BYTES, "downloaded {got} bytes of {BYTES}");
    let client = &env.client;
    let operator = testkit::stack_pod(client, "operator").await;
    let peak = testkit::pod_process(client, testkit::OPERATOR_NAMESPACE, &operator, "operator")
        .await
        .and_then(|pid| testkit::proc_status_kib(pid, "VmHWM:"))
        .map(|k| k / 1024);
    progress(&format!(
        "preload: 100 MiB output in {run_s:.1} s, downloaded in {download_s:.1} s"
    ));
    Ok(LargeOutput {
        bytes: BYTES,
        run_s,
        download_s,
        download_mib_per_s: (BYTES >> 20) as f64 / download_s,
        operator_peak_mib: peak,
    })
}
