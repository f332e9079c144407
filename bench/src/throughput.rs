//! Throughput: a fixed number of `print(1+1)` runs through the REST API at a fixed
//! concurrency, beside as many raw pods at the same concurrency.
use std::future::Future;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::raw_pod;
use crate::suite::Env;

#[derive(Debug, Serialize)]
pub struct Batch {
    pub items: usize,
    pub completed: usize,
    pub failed: usize,
    pub wall_s: f64,
    pub per_minute: f64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub ours: Batch,
    pub raw_pod: Batch,
    /// Our runs per minute over raw pods per minute.
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub levels: Vec<Level>,
}

pub async fn run(env: &Env, levels: &[usize], items: &[usize]) -> anyhow::Result<ThroughputReport> {
    if levels.len() != items.len() {
        anyhow::bail!(
            "{} concurrency levels but {} item counts: give one count per level",
            levels.len(),
            items.len()
        );
    }
    env.api.ready().await?;
    let mut out = Vec::new();
    for (round, (&concurrency, &items)) in levels.iter().zip(items).enumerate() {
        let ours = || batch(items, concurrency, |_| ours_item(env));
        let raw = || batch(items, concurrency, |i| raw_item(env, round, i));
        // Alternate which goes first from level to level.
        let (ours, raw_pod) = if round % 2 == 0 {
            let o = ours().await;
            (o, raw().await)
        } else {
            let r = raw().await;
            (ours().await, r)
        };
        let ratio = (raw_pod.per_minute > 0.0).then(|| ours.per_minute / raw_pod.per_minute);
        out.push(Level {
            concurrency,
            ours,
            raw_pod,
            ratio,
        });
    }
    Ok(ThroughputReport { levels: out })
}

async fn ours_item(env: &Env) -> anyhow::Result<()> {
    env.api.run_python("print(1+1)").await?.check("2\n")
}

async fn raw_item(env: &Env, round: usize, i: usize) -> anyhow::Result<()> {
    let pods = env.pods();
    let name = format!("tput-{round}-{i}");
    let result = raw_pod::run_python_print(&pods, &name).await;
    raw_pod::delete_in_background(&pods, &name);
    result.map(|_| ())
}

/// Runs `items` of `item` with at most `concurrency` at once; counts what completed.
async fn batch<F, Fut>(items: usize, concurrency: usize, item: F) -> Batch
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..items)
        .map(item)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall_s = started.elapsed().as_secs_f64();
    let completed = results.iter().filter(|r| r.is_ok()).count();
    Batch {
        items,
        completed,
        failed: items - completed,
        wall_s,
        per_minute: completed as f64 * 60.0 / wall_s,
        first_error: results
            .into_iter()
            .find_map(|r| r.err())
            .map(|e| format!("{e:#}")),
    }
}
