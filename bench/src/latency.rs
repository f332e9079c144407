//! Run latency: `print(1+1)` through `POST /v1/runs` (waiting), beside a raw pod of the same
//! image doing the same, interleaved so that noise from the shared node hits both alike.
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::raw_pod;
use crate::stats::{self, Summary};
use crate::suite::Env;
use crate::transitions::Transitions;

pub const TIMING_NOTE: &str = "Kubernetes writes creationTimestamp, condition lastTransitionTime, \
status.startedAt/completedAt and container startedAt/finishedAt in whole seconds; phases are timed \
by the bench's own clock when a watch first shows each step (a few ms after the fact).";

#[derive(Debug, Serialize)]
pub struct PhaseMedian {
    pub phase: &'static str,
    pub median_ms: Option<f64>,
    pub n: usize,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub runs: usize,
    pub ours: Summary,
    pub raw_pod: Summary,
    pub p50_ratio: Option<f64>,
    pub p50_added_ms: Option<f64>,
    pub phases: Vec<PhaseMedian>,
    pub raw_pod_phases: Vec<PhaseMedian>,
    pub errors: Vec<String>,
    pub timing_note: &'static str,
}

const OUR_PHASES: [&str; 6] = [
    "request sent -> CodeRun created",
    "CodeRun created -> pod created",
    "pod created -> container started",
    "container started -> program finished",
    "program finished -> results stored (Finished)",
    "Finished -> response received",
];

const RAW_PHASES: [&str; 4] = [
    "create sent -> pod created",
    "pod created -> container started",
    "container started -> program finished",
    "program finished -> log read",
];

/// One request and its answer, by name (the run id, or the raw pod).
struct Sample {
    name: String,
    sent: Instant,
    done: Instant,
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
    let mut errors = Vec::new();
    let (mut ours, mut raw) = (Vec::new(), Vec::new());

    // One of each first, uncounted: the first pod of an image pays for cold caches.
    let _ = one_run(env).await;
    let _ = one_raw_pod(env, "raw-warm").await;

    for i in 0..runs {
        // Alternate which goes first, so neither always follows the other's cleanup.
        for ours_now in [i % 2 == 0, i % 2 != 0] {
            if ours_now {
                match one_run(env).await {
                    Ok(sample) => ours.push(sample),
                    Err(e) => errors.push(format!("run {i}: {e:#}")),
                }
            } else {
                match one_raw_pod(env, &format!("raw-{i}")).await {
                    Ok(sample) => raw.push(sample),
                    Err(e) => errors.push(format!("raw pod {i}: {e:#}")),
                }
            }
        }
    }
    // The watches may show the last steps a moment after the answers arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ours_ms: Vec<f64> = ours.iter().map(Sample::ms).collect();
    let raw_ms: Vec<f64> = raw.iter().map(Sample::ms).collect();
    let (ours_sum, raw_sum) = (Summary::of(&ours_ms), Summary::of(&raw_ms));
    let (p50_ratio, p50_added_ms) = match (ours_sum.p50_ms, raw_sum.p50_ms) {
        (Some(o), Some(r)) => (Some(o / r), Some(o - r)),
        _ => (None, None),
    };

    let our_steps: Vec<Vec<Option<Instant>>> = ours
        .iter()
        .map(|s| {
            let run = ours_seen.run(&s.name);
            let pod = ours_seen.pod(&s.name);
            vec![
                Some(s.sent),
                run.created,
                pod.created,
                pod.started,
                pod.terminated,
                run.finished,
                Some(s.done),
            ]
        })
        .collect();
    let raw_steps: Vec<Vec<Option<Instant>>> = raw
        .iter()
        .map(|s| {
            let pod = raw_seen.pod(&s.name);
            vec![
                Some(s.sent),
                pod.created,
                pod.started,
                pod.terminated,
                Some(s.done),
            ]
        })
        .collect();

    Ok(LatencyReport {
        runs,
        ours: ours_sum,
        raw_pod: raw_sum,
        p50_ratio,
        p50_added_ms,
        phases: phase_medians(&OUR_PHASES, &our_steps),
        raw_pod_phases: phase_medians(&RAW_PHASES, &raw_steps),
        errors,
        timing_note: TIMING_NOTE,
    })
}

async fn one_run(env: &Env) -> anyhow::Result<Sample> {
    let sent = Instant::now();
    let run = env.api.run_python("print(1+1)").await?;
    let done = Instant::now();
    run.check("2\n")?;
    Ok(Sample {
        name: run.id,
        sent,
        done,
    })
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
    })
}

/// The median of each step between consecutive checkpoints, over the samples that saw both
/// ends of it. Signed: two watches may deliver near-simultaneous steps out of order.
pub fn phase_medians(names: &[&'static str], steps: &[Vec<Option<Instant>>]) -> Vec<PhaseMedian> {
    names
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let durations: Vec<f64> = steps
                .iter()
                .filter_map(|s| Some(signed_ms((*s.get(i)?)?, (*s.get(i + 1)?)?)))
                .collect();
            PhaseMedian {
                phase,
                median_ms: stats::median(&durations),
                n: durations.len(),
            }
        })
        .collect()
}

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
    fn phases_are_the_steps_between_consecutive_checkpoints() {
        let t = Instant::now();
        let at = |ms: u64| Some(t + Duration::from_millis(ms));
        let steps = vec![
            vec![at(0), at(10), at(30)],
            vec![at(0), at(20), at(60)],
            vec![at(0), None, at(50)],
        ];
        let got = phase_medians(&["a", "b"], &steps);
        assert_eq!((got[0].n, got[1].n), (2, 2));
        assert_eq!(got[0].median_ms, Some(10.0));
        assert_eq!(got[1].median_ms, Some(20.0));
    }

    #[test]
    fn a_step_seen_out_of_order_is_negative() {
        let t = Instant::now();
        assert_eq!(signed_ms(t + Duration::from_millis(5), t), -5.0);
    }
}
