//! Live output: a program that prints its own clock every 100 ms, run with `"stream": true`;
//! for each line, the time from the program's write to the client's receipt of the delta
//! that carried it (the pod and the bench share this node's clock), beside the time to the
//! first delta and to the final answer.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;

use crate::cluster;
use crate::stats::{self, Summary};
use crate::suite::Env;

const LINES: usize = 30;
const PROGRAM: &str = "import time\nfor i in range(30):\n    print(f't={time.time():.6f}', flush=True)\n    time.sleep(0.1)\n";

#[derive(Debug, Serialize)]
pub struct StreamReport {
    pub streams: usize,
    pub lines_expected: usize,
    pub lines_received: usize,
    /// Program's write to the client's receipt of the delta, per line.
    pub write_to_receipt: Summary,
    /// Request sent to the first delta.
    pub first_delta: Summary,
    /// Request sent to the terminal event.
    pub final_answer: Summary,
    pub errors: Vec<String>,
}

pub async fn run(
    env: &Env,
    api_url: &str,
    token: &str,
    streams: usize,
) -> anyhow::Result<StreamReport> {
    env.api.ready().await?;
    let api = testkit::rest::Api::new(api_url, Some(token));
    let (mut latencies, mut first, mut answer) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors = Vec::new();
    let mut received = 0;
    for i in 0..streams {
        // Each stream starts on a warm pod, as an agent's short runs would.
        let _ = cluster::wait_idle(
            &env.client,
            &env.sandbox_namespace,
            1,
            Duration::from_secs(60),
        )
        .await;
        let (base_wall, base) = (SystemTime::now(), Instant::now());
        let wall_at = |at: Instant| {
            (base_wall + (at - base))
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default()
        };
        let mut events = api
            .stream_run(
                json!({"language": "python", "code": PROGRAM, "limits": {"timeout_ms": 30000}}),
            )
            .await;
        if events.status != 200 {
            errors.push(format!("stream {i}: answered {}", events.status));
            continue;
        }
        let all = events.to_end(Duration::from_secs(60)).await;
        let mut pending = String::new();
        let mut first_delta = None;
        for e in &all {
            if e.event != "run.output.delta" || e.data["stream"] != "stdout" {
                continue;
            }
            first_delta.get_or_insert(e.at);
            pending.push_str(e.data["delta"].as_str().unwrap_or_default());
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(t) = line
                    .trim()
                    .strip_prefix("t=")
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    latencies.push((wall_at(e.at) - t) * 1000.0);
                    received += 1;
                }
            }
        }
        match (first_delta, all.last()) {
            (Some(f), Some(last)) if last.is_terminal() => {
                first.push(stats::ms(f - base));
                answer.push(stats::ms(last.at - base));
                if last.event != "run.completed" {
                    errors.push(format!("stream {i}: ended with {}", last.event));
                }
            }
            _ => errors.push(format!(
                "stream {i}: no delta or no terminal event ({} events)",
                all.len()
            )),
        }
    }
    Ok(StreamReport {
        streams,
        lines_expected: streams * LINES,
        lines_received: received,
        write_to_receipt: Summary::of(&latencies),
        first_delta: Summary::of(&first),
        final_answer: Summary::of(&answer),
        errors,
    })
}
