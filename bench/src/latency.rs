//! Run latency: `print(1+1)` through `POST /v1/runs` (waiting) on the warm path (a pool pod
//! is free) and on the cold path (a shape no pool has), beside a raw pod of the same image
//! doing the same, interleaved so that noise from the shared node hits all three alike.
//! Between samples the stack settles (the pool refilled, the last pod gone), so each sample
//! starts from the same state and the operator's API writes can be counted per run.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, StartMode};
use kube::Api;
use serde::Serialize;

use crate::cluster::{self, Writes};
use crate::raw_pod;
use crate::rest::Run;
use crate::stats::{self, Summary};
use crate::suite::Env;
use crate::transitions::Transitions;

pub const TIMING_NOTE: &str = "Kubernetes writes creationTimestamp, condition lastTransitionTime, \
status.startedAt/completedAt and container startedAt/finishedAt in whole seconds; phases are timed \
by the bench's own clock when a watch first shows each step (a few ms after the fact), except \
`program`, which is the wall time the wrapper measured.";

#[derive(Debug, Serialize)]
pub struct PhaseMedian {
    pub phase: &'static str,
    pub median_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub n: usize,
}

/// One path's figures.
#[derive(Debug, Serialize)]
pub struct PathReport {
    pub summary: Summary,
    pub phases: Vec<PhaseMedian>,
    /// The operator's writes to the Kubernetes API per run, from the request until the stack
    /// had settled (the run's pod deleted, the pool refilled): those on the way to the answer
    /// (purpose `run`), and the run's in all (with clean-up and events; not pool refills).
    pub writes_before_answer: Option<f64>,
    pub writes_in_all: Option<f64>,
    pub writes_breakdown: String,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub runs: usize,
    pub warm: PathReport,
    pub cold: PathReport,
    pub raw_pod: PathReport,
    /// Runs meant to be warm that the operator started cold (no pool pod was free).
    pub warm_misses: usize,
    pub warm_p50_ratio_to_raw: Option<f64>,
    pub cold_p50_ratio_to_raw: Option<f64>,
    pub errors: Vec<String>,
    pub timing_note: &'static str,
}

/// The phases of a run through the platform (the same names on both paths: on the cold path
/// "claim" is the pod's creation and "attach" includes the container's start).
const OUR_PHASES: [&str; 6] = [
    "request: sent -> CodeRun created",
    "claim: CodeRun created -> pod bound to it",
    "attach: pod bound -> job delivered (Running)",
    "program: wall time in the runner",
    "results: program end -> Finished",
    "answer: Finished -> response received",
];

const RAW_PHASES: [&str; 4] = [
    "create sent -> pod created",
    "pod created -> container started",
    "container started -> program finished",
    "program finished -> log read",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Warm,
    Cold,
    Raw,
}

/// One request and its answer, by name (the run id, or the raw pod).
pub struct Sample {
    pub name: String,
    pub sent: Instant,
    pub done: Instant,
    pub program_ms: Option<f64>,
    /// The operator's writes from just before the request until the stack settled after it
    /// (before that, the count when the request was sent).
    pub writes: Option<Writes>,
}

impl Sample {
    fn ms(&self) -> f64 {
        stats::ms(self.done - self.sent)
    }
}

pub async fn run(env: &Env, runs: usize) -> anyhow::Result<LatencyReport> {
    env.api.ready().await?;
    let ours_seen = Transitions::watch(&env.client, &env.sandbox_namespace).await?;
    let raw_seen = Transitions::watch(&env.client, &env.pods_namespace).await?;
    let pool = settle(env, None).await;
    let mut errors = Vec::new();
    let (mut warm, mut cold, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let mut warm_misses = 0;

    // One of each first, uncounted: the first pod of an image pays for cold caches.
    let _ = one(env, Path::Warm, "raw-warmup").await;
    let _ = one(env, Path::Cold, "raw-warmup").await;
    let _ = one(env, Path::Raw, "raw-warmup").await;
    settle(env, pool).await;

    let order = [Path::Warm, Path::Cold, Path::Raw];
    for i in 0..runs {
        // Rotate which goes first, so none always follows another's clean-up.
        for k in 0..3 {
            let path = order[(i + k) % 3];
            let result = one(env, path, &format!("raw-{i}")).await;
            settle(env, pool).await;
            let mut sample = match result {
                Ok(s) => s,
                Err(e) => {
                    errors.push(format!("{path:?} {i}: {e:#}"));
                    continue;
                }
            };
            if path == Path::Raw {
                raw.push(sample);
                continue;
            }
            sample.writes = match (&sample.writes, Writes::scrape(&env.client).await) {
                (Some(before), Ok(now)) => Some(now.since(before)),
                _ => None,
            };
            if path == Path::Warm {
                match start_mode(env, &sample.name).await {
                    Some(StartMode::Warm) => warm.push(sample),
                    _ => {
                        warm_misses += 1;
                        cold.push(sample);
                    }
                }
            } else {
                cold.push(sample);
            }
        }
    }
    // The watches may show the last steps a moment after the answers arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let warm = our_path(&warm, &ours_seen);
    let cold = our_path(&cold, &ours_seen);
    let raw_pod = raw_path(&raw, &raw_seen);
    let ratio = |a: &PathReport| match (a.summary.p50_ms, raw_pod.summary.p50_ms) {
        (Some(o), Some(r)) => Some(o / r),
        _ => None,
    };
    Ok(LatencyReport {
        runs,
        warm_p50_ratio_to_raw: ratio(&warm),
        cold_p50_ratio_to_raw: ratio(&cold),
        warm,
        cold,
        raw_pod,
        warm_misses,
        errors,
        timing_note: TIMING_NOTE,
    })
}

/// Waits until the warm pool is back to `pool` idle pods (or, the first time, until it stops
/// growing) and the node has had a moment; returns the pool's size.
async fn settle(env: &Env, pool: Option<usize>) -> Option<usize> {
    let within = Duration::from_secs(60);
    let pool = match pool {
        Some(n) => {
            let _ = cluster::wait_idle(&env.client, &env.sandbox_namespace, n, within).await;
            n
        }
        None => {
            let mut last = usize::MAX;
            let started = Instant::now();
            loop {
                let n = cluster::idle_pool_pods(&env.client, &env.sandbox_namespace)
                    .await
                    .unwrap_or(0);
                if (n == last && n > 0) || started.elapsed() > within {
                    break n;
                }
                last = n;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    Some(pool)
}

async fn one(env: &Env, path: Path, raw_name: &str) -> anyhow::Result<Sample> {
    if path == Path::Raw {
        return one_raw_pod(env, raw_name).await;
    }
    let before = Writes::scrape(&env.client).await.ok();
    let sent = Instant::now();
    let run = match path {
        Path::Warm => env.api.run_python("print(1+1)").await?,
        _ => env.api.run_python_cold("print(1+1)").await?,
    };
    let done = Instant::now();
    check(&run)?;
    Ok(Sample {
        name: run.id.clone(),
        sent,
        done,
        program_ms: run.usage.as_ref().map(|u| u.wall_ms as f64),
        // Made a difference in `run` once the stack has settled.
        writes: before,
    })
}

fn check(run: &Run) -> anyhow::Result<()> {
    run.check("2\n")
}

async fn start_mode(env: &Env, name: &str) -> Option<StartMode> {
    let runs: Api<CodeRun> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    runs.get(name).await.ok()?.status?.start_mode
}

async fn one_raw_pod(env: &Env, name: &str) -> anyhow::Result<Sample> {
    let pods = env.pods();
    let sent = Instant::now();
    let result = raw_pod::run_python_print(&pods, name).await;
    raw_pod::delete_in_background(&pods, name);
    let took = result?;
    Ok(Sample {
        name: name.to_string(),
        sent,
        done: sent + took,
        program_ms: None,
        writes: None,
    })
}

pub fn our_path(samples: &[Sample], seen: &Transitions) -> PathReport {
    let ms: Vec<f64> = samples.iter().map(Sample::ms).collect();
    // Each step between consecutive checkpoints; the program's own time splits the span
    // from Running to Finished into "program" and "results".
    let steps: Vec<Vec<Option<f64>>> = samples
        .iter()
        .map(|s| {
            let run = seen.run(&s.name);
            let pod = seen.pod_of_run(&s.name);
            let between = |a: Option<Instant>, b: Option<Instant>| Some(signed_ms(a?, b?));
            let running_to_finished = between(run.running, run.finished);
            vec![
                between(Some(s.sent), run.created),
                between(run.created, pod.created),
                between(pod.created, run.running),
                s.program_ms,
                running_to_finished
                    .zip(s.program_ms)
                    .map(|(all, p)| all - p),
                between(run.finished, Some(s.done)),
            ]
        })
        .collect();
    let mut writes = Writes::default();
    let mut n = 0;
    for w in samples.iter().filter_map(|s| s.writes.as_ref()) {
        writes.add(w);
        n += 1;
    }
    let writes = writes.per(n);
    PathReport {
        summary: Summary::of(&ms),
        phases: medians(&OUR_PHASES, &steps),
        writes_before_answer: (n > 0).then(|| writes.before_answer()),
        writes_in_all: (n > 0).then(|| writes.in_all()),
        writes_breakdown: writes.describe(),
    }
}

fn raw_path(samples: &[Sample], seen: &Transitions) -> PathReport {
    let ms: Vec<f64> = samples.iter().map(Sample::ms).collect();
    let steps: Vec<Vec<Option<f64>>> = samples
        .iter()
        .map(|s| {
            let pod = seen.pod(&s.name);
            let between = |a: Option<Instant>, b: Option<Instant>| Some(signed_ms(a?, b?));
            vec![
                between(Some(s.sent), pod.created),
                between(pod.created, pod.started),
                between(pod.started, pod.terminated),
                between(pod.terminated, Some(s.done)),
            ]
        })
        .collect();
    PathReport {
        summary: Summary::of(&ms),
        phases: medians(&RAW_PHASES, &steps),
        writes_before_answer: None,
        writes_in_all: None,
        writes_breakdown: String::new(),
    }
}

/// The median (and p99) of each step, over the samples that measured it.
pub fn medians(names: &[&'static str], steps: &[Vec<Option<f64>>]) -> Vec<PhaseMedian> {
    names
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let durations: Vec<f64> = steps.iter().filter_map(|s| *s.get(i)?).collect();
            PhaseMedian {
                phase,
                median_ms: stats::median(&durations),
                p99_ms: stats::percentile(&durations, 99.0),
                n: durations.len(),
            }
        })
        .collect()
}

/// Signed: two watches may deliver near-simultaneous steps out of order.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        stats::ms(to - from)
    } else {
        -stats::ms(from - to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_summarised_over_the_samples_that_measured_it() {
        let steps = vec![
            vec![Some(10.0), Some(30.0)],
            vec![Some(20.0), None],
            vec![None, Some(50.0)],
        ];
        let got = medians(&["a", "b"], &steps);
        assert_eq!((got[0].n, got[1].n), (2, 2));
        assert_eq!(got[0].median_ms, Some(10.0));
        assert_eq!(got[1].median_ms, Some(30.0));
        assert_eq!(got[1].p99_ms, Some(50.0));
    }

    #[test]
    fn a_step_seen_out_of_order_is_negative() {
        let t = Instant::now();
        assert_eq!(signed_ms(t + Duration::from_millis(5), t), -5.0);
    }
}
