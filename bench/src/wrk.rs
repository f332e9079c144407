//! Running `wrk` and reading its report. The parser is pure.
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors together.
    pub socket_errors: u64,
}

pub struct Load<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

pub fn run(load: &Load) -> anyhow::Result<WrkResult> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--latency");
    if let Some(token) = load.token {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let output = command
        .arg(load.url)
        .output()
        .context("running wrk (hack/bench/run.sh installs it: apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text).with_context(|| format!("reading wrk's report:\n{text}"))
}

/// Reads the figures out of wrk's text report (run with `--latency`).
pub fn parse(report: &str) -> anyhow::Result<WrkResult> {
    let mut out = WrkResult::default();
    let mut saw_rate = false;
    for line in report.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => out.p50_ms = Some(duration_ms(value)?),
            ["99%", value] => out.p99_ms = Some(duration_ms(value)?),
            ["Requests/sec:", value] => {
                out.requests_per_s = value.parse()?;
                saw_rate = true;
            }
            [count, "requests", "in", ..] => out.requests = count.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => out.non_2xx = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                out.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if !saw_rate {
        bail!("no Requests/sec line");
    }
    Ok(out)
}

/// "812.00us", "1.25ms", "2.00s", "1.50m".
fn duration_ms(value: &str) -> anyhow::Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .context("a duration without a unit")?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        _ => bail!("unknown unit in {value:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:18095/healthz
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.62ms    1.01ms  23.45ms   85.12%
    Req/Sec    10.31k     1.02k   12.80k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.95ms
     90%    2.80ms
     99%    5.10ms
  205170 requests in 10.00s, 25.44MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  20513.44
Transfer/sec:      2.54MB
";

    #[test]
    fn reads_rate_percentiles_and_errors() {
        let got = parse(REPORT).unwrap();
        assert_eq!(
            got,
            WrkResult {
                requests: 205170,
                requests_per_s: 20513.44,
                p50_ms: Some(0.812),
                p99_ms: Some(5.1),
                non_2xx: 7,
                socket_errors: 3,
            }
        );
    }

    #[test]
    fn a_report_without_a_rate_is_an_error() {
        assert!(parse("Running 10s test @ http://x/\n").is_err());
    }

    #[test]
    fn durations_of_every_unit() {
        assert_eq!(duration_ms("2.00s").unwrap(), 2000.0);
        assert_eq!(duration_ms("1.50m").unwrap(), 90_000.0);
        assert!(duration_ms("3.0").is_err());
    }
}
