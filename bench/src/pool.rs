//! The warm pool under load: the Python pool grown to `size` through Helm (as a user would),
//! then bursts of `size` runs at once through the REST API while the pool is full, the time
//! the pool takes to refill after each, and a sustained stream of runs at the same
//! concurrency (where the refill rate, not the claim, sets the pace). The release is rolled
//! back afterwards.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, StartMode};
use futures::StreamExt;
use kube::Api;
use serde::Serialize;

use crate::cluster::{self, Helm};
use crate::latency::{self, PathReport, Sample};
use crate::stats::{self, Summary};
use crate::suite::{Env, progress};
use crate::transitions::Transitions;

#[derive(Debug, Serialize)]
pub struct Burst {
    pub runs: usize,
    pub completed: usize,
    pub warm: usize,
    pub wall_s: f64,
    pub runs_per_s: f64,
    /// From the burst's last answer until the pool was full again.
    pub refill_s: Option<f64>,
    pub refill_pods_per_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Sustained {
    pub runs: usize,
    pub concurrency: usize,
    pub completed: usize,
    pub warm: usize,
    pub wall_s: f64,
    pub runs_per_s: f64,
    pub latency: Summary,
}

#[derive(Debug, Serialize)]
pub struct PoolReport {
    pub size: usize,
    /// Time for the pool to grow from its configured size to `size` after the upgrade.
    pub grow_s: f64,
    pub bursts: Vec<Burst>,
    /// Of every burst's runs, with the median of each phase.
    pub burst_latency: Summary,
    pub burst_phases: PathReport,
    pub burst_runs_per_s_median: Option<f64>,
    pub refill_pods_per_s_median: Option<f64>,
    pub sustained: Sustained,
    pub first_error: Option<String>,
    pub rolled_back: bool,
}

pub async fn run(
    env: &Env,
    helm: &Helm,
    chart: &str,
    size: usize,
    bursts: usize,
) -> anyhow::Result<PoolReport> {
    env.api.ready().await?;
    helm.set_python_pool(chart, size)?;
    let result = measure(env, size, bursts).await;
    let rolled_back = helm.roll_back().is_ok();
    // The stack answers again before the next benchmark starts.
    env.api.ready().await?;
    let mut report = result?;
    report.rolled_back = rolled_back;
    Ok(report)
}

async fn measure(env: &Env, size: usize, rounds: usize) -> anyhow::Result<PoolReport> {
    let seen = Transitions::watch(&env.client, &env.sandbox_namespace).await?;
    let mut burst_samples = Vec::new();
    let grow = Instant::now();
    cluster::wait_idle(
        &env.client,
        &env.sandbox_namespace,
        size,
        Duration::from_secs(300),
    )
    .await?;
    let grow_s = grow.elapsed().as_secs_f64();
    progress(&format!("pool: {size} idle pods after {grow_s:.1} s"));
    let mut bursts = Vec::new();
    let mut latencies = Vec::new();
    let mut first_error = None;
    for round in 0..rounds {
        // From a settled node: the pods the pool replaced or that earlier runs left are torn
        // down by now (the kubelet and the runtime take seconds of CPU for a few dozen).
        tokio::time::sleep(Duration::from_secs(if round == 0 { 15 } else { 8 })).await;
        let started = Instant::now();
        let results = many(env, size, size).await;
        let wall = started.elapsed();
        let refill = cluster::wait_idle(
            &env.client,
            &env.sandbox_namespace,
            size,
            Duration::from_secs(180),
        )
        .await
        .ok();
        let (completed, warm) = tally(env, &results, &mut first_error).await;
        latencies.extend(
            results
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|(_, ms)| *ms)),
        );
        burst_samples.extend(results.into_iter().filter_map(|r| r.ok()).map(|(s, _)| s));
        let burst = Burst {
            runs: size,
            completed,
            warm,
            wall_s: wall.as_secs_f64(),
            runs_per_s: completed as f64 / wall.as_secs_f64(),
            refill_s: refill.map(|d| d.as_secs_f64()),
            refill_pods_per_s: refill.map(|d| size as f64 / d.as_secs_f64()),
        };
        progress(&format!(
            "pool: burst {}: {completed}/{size} ({warm} warm) in {:.2} s; refilled in {:?}",
            round + 1,
            burst.wall_s,
            burst.refill_s
        ));
        bursts.push(burst);
    }

    // Sustained: four times the pool through the same concurrency.
    let n = size * 4;
    let started = Instant::now();
    let results = many(env, n, size).await;
    let wall = started.elapsed();
    let (completed, warm) = tally(env, &results, &mut first_error).await;
    let ms: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(_, ms)| *ms))
        .collect();
    let sustained = Sustained {
        runs: n,
        concurrency: size,
        completed,
        warm,
        wall_s: wall.as_secs_f64(),
        runs_per_s: completed as f64 / wall.as_secs_f64(),
        latency: Summary::of(&ms),
    };
    let per_s: Vec<f64> = bursts.iter().map(|b| b.runs_per_s).collect();
    // The watches may show the last steps a moment after the answers arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst_phases = latency::our_path(&burst_samples, &seen);
    let refill: Vec<f64> = bursts.iter().filter_map(|b| b.refill_pods_per_s).collect();
    Ok(PoolReport {
        size,
        grow_s,
        burst_latency: Summary::of(&latencies),
        burst_phases,
        burst_runs_per_s_median: stats::median(&per_s),
        refill_pods_per_s_median: stats::median(&refill),
        bursts,
        sustained,
        first_error,
        rolled_back: false,
    })
}

/// `n` runs of `print(1+1)` with at most `concurrency` in flight: each run and its latency.
async fn many(env: &Env, n: usize, concurrency: usize) -> Vec<anyhow::Result<(Sample, f64)>> {
    futures::stream::iter(0..n)
        .map(|_| async {
            let sent = Instant::now();
            let run = env.api.run_python("print(1+1)").await?;
            let done = Instant::now();
            run.check("2\n")?;
            let sample = Sample {
                name: run.id.clone(),
                sent,
                done,
                program_ms: run.usage.as_ref().map(|u| u.wall_ms as f64),
                writes: None,
            };
            Ok((sample, stats::ms(done - sent)))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// How many completed, and how many of those started warm.
async fn tally(
    env: &Env,
    results: &[anyhow::Result<(Sample, f64)>],
    first_error: &mut Option<String>,
) -> (usize, usize) {
    let runs: Api<CodeRun> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    let (mut completed, mut warm) = (0, 0);
    for r in results {
        match r {
            Ok((sample, _)) => {
                completed += 1;
                let mode = runs
                    .get(&sample.name)
                    .await
                    .ok()
                    .and_then(|r| r.status?.start_mode);
                if mode == Some(StartMode::Warm) {
                    warm += 1;
                }
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (completed, warm)
}
