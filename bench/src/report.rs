//! The results: one table (printed and kept in the JSON) and every figure behind it.
use serde::Serialize;

use crate::apiserver_load::ApiLoadReport;
use crate::latency::LatencyReport;
use crate::scale::ScaleReport;
use crate::throughput::ThroughputReport;
use crate::wrapper::WrapperReport;
use crate::wrk::WrkResult;

/// A benchmark's outcome: benchmarks never fail the command, they say what happened.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Section<T> {
    Skipped,
    Failed { error: String },
    Ran(T),
}

impl<T> Section<T> {
    pub fn from_result(result: anyhow::Result<T>) -> Self {
        match result {
            Ok(t) => Section::Ran(t),
            Err(e) => Section::failed(&format!("{e:#}")),
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Section::Failed { error } => Some(error),
            _ => None,
        }
    }

    pub fn failed(error: &str) -> Self {
        Section::Failed {
            error: error.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cpus: usize,
    pub load_before: String,
    pub load_after: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub duration_s: f64,
    pub host: Host,
    pub table: Vec<Row>,
    pub notes: Vec<String>,
    pub latency: Section<LatencyReport>,
    pub throughput: Section<ThroughputReport>,
    pub apiserver: Section<ApiLoadReport>,
    pub scale: Section<ScaleReport>,
    pub wrapper: Section<WrapperReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub benchmark: String,
    pub measure: String,
    pub ours: String,
    pub baseline: String,
    pub target: String,
    pub verdict: String,
}

const NONE: &str = "-";

fn row(benchmark: &str, measure: &str, ours: String, baseline: String) -> Row {
    Row {
        benchmark: benchmark.into(),
        measure: measure.into(),
        ours,
        baseline,
        target: NONE.into(),
        verdict: NONE.into(),
    }
}

fn judged(mut r: Row, target: &str, met: Option<bool>) -> Row {
    r.target = target.into();
    r.verdict = match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
    .into();
    r
}

fn f(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| NONE.into(), |v| format!("{v:.decimals$}"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| NONE.into(), |v| format!("{v:.0} ms"))
}

fn failed_row<T>(benchmark: &str, section: &Section<T>) -> Option<Vec<Row>> {
    match section {
        Section::Ran(_) => None,
        Section::Skipped => Some(vec![row(benchmark, "skipped", NONE.into(), NONE.into())]),
        Section::Failed { error } => {
            let short: String = error.chars().take(100).collect();
            Some(vec![row(benchmark, "did not complete", short, NONE.into())])
        }
    }
}

/// The rows of every benchmark that ran, with the target and verdict where there is one.
pub fn table(report: &Report) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.extend(latency_rows(&report.latency));
    rows.extend(throughput_rows(&report.throughput));
    rows.extend(api_rows(&report.apiserver));
    rows.extend(scale_rows(&report.scale));
    rows.extend(wrapper_rows(&report.wrapper));
    rows
}

fn latency_rows(section: &Section<LatencyReport>) -> Vec<Row> {
    const B: &str = "1 run latency";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(l) = section else {
        return Vec::new();
    };
    let n = |what: &str| format!("{what} (n={}/{})", l.ours.n, l.raw_pod.n);
    let mut rows = vec![
        row(B, &n("p50"), ms(l.ours.p50_ms), ms(l.raw_pod.p50_ms)),
        row(B, "p95", ms(l.ours.p95_ms), ms(l.raw_pod.p95_ms)),
        row(B, "p99", ms(l.ours.p99_ms), ms(l.raw_pod.p99_ms)),
        judged(
            row(
                B,
                "p50 ours / raw pod",
                format!("{}x", f(l.p50_ratio, 2)),
                NONE.into(),
            ),
            "<= 1.20x",
            l.p50_ratio.map(|r| r <= 1.2),
        ),
        judged(
            row(B, "p50 added over raw pod", ms(l.p50_added_ms), NONE.into()),
            "<= 150 ms",
            l.p50_added_ms.map(|d| d <= 150.0),
        ),
    ];
    // Each of our steps beside the raw pod's like step, where it has one.
    let raw_like = [Some(0), None, Some(1), Some(2), Some(3), None];
    for (phase, like) in l.phases.iter().zip(raw_like) {
        let baseline = like
            .and_then(|i| l.raw_pod_phases.get(i))
            .map_or_else(|| NONE.into(), |p| ms(p.median_ms));
        rows.push(row(
            B,
            &format!("median: {}", phase.phase),
            ms(phase.median_ms),
            baseline,
        ));
    }
    if !l.errors.is_empty() {
        rows.push(row(
            B,
            "errors",
            format!("{} (see JSON)", l.errors.len()),
            NONE.into(),
        ));
    }
    rows
}

fn throughput_rows(section: &Section<ThroughputReport>) -> Vec<Row> {
    const B: &str = "2 throughput";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(t) = section else {
        return Vec::new();
    };
    t.levels
        .iter()
        .map(|l| {
            let failed = |n: usize| {
                if n > 0 {
                    format!(", {n} failed")
                } else {
                    String::new()
                }
            };
            row(
                B,
                &format!(
                    "runs/min at concurrency {} ({} items)",
                    l.concurrency, l.ours.items
                ),
                format!(
                    "{:.1} ({}x raw{})",
                    l.ours.per_minute,
                    f(l.ratio, 2),
                    failed(l.ours.failed)
                ),
                format!("{:.1}{}", l.raw_pod.per_minute, failed(l.raw_pod.failed)),
            )
        })
        .collect()
}

fn wrk_errors(w: &WrkResult) -> String {
    if w.non_2xx == 0 && w.socket_errors == 0 {
        String::new()
    } else {
        format!(
            " ({} non-2xx, {} socket errors)",
            w.non_2xx, w.socket_errors
        )
    }
}

fn api_rows(section: &Section<ApiLoadReport>) -> Vec<Row> {
    const B: &str = "3 apiserver";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(a) = section else {
        return Vec::new();
    };
    let (g, h) = (&a.get_run, &a.healthz);
    vec![
        judged(
            row(
                B,
                &format!(
                    "GET /v1/runs/{{id}} req/s ({} conn, {} s) vs /healthz",
                    a.connections, a.seconds
                ),
                format!("{:.0}{}", g.requests_per_s, wrk_errors(g)),
                format!("{:.0}{}", h.requests_per_s, wrk_errors(h)),
            ),
            ">= 10000 req/s",
            Some(g.requests_per_s >= 10_000.0 && g.non_2xx == 0),
        ),
        row(
            B,
            "p50 / p99 latency",
            format!("{} / {} ms", f(g.p50_ms, 2), f(g.p99_ms, 2)),
            format!("{} / {} ms", f(h.p50_ms, 2), f(h.p99_ms, 2)),
        ),
    ]
}

fn scale_rows(section: &Section<ScaleReport>) -> Vec<Row> {
    const B: &str = "4 operator scale";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(s) = section else {
        return Vec::new();
    };
    let phases: Vec<String> = s.phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    vec![
        judged(
            row(
                B,
                &format!("{} CodeRuns: terminal / time to all terminal", s.runs),
                format!(
                    "{}/{} in {} s",
                    s.terminal,
                    s.created,
                    f(s.time_to_all_terminal_s, 1)
                ),
                NONE.into(),
            ),
            "all terminal",
            Some(s.all_terminal),
        ),
        judged(
            row(
                B,
                "lost / duplicated (pods, PodCreated events)",
                format!("{} / {}", s.lost, s.duplicated),
                NONE.into(),
            ),
            "0 / 0",
            Some(s.lost == 0 && s.duplicated == 0 && s.created == s.runs),
        ),
        judged(
            row(
                B,
                "Completed with stdout ok: status / stored record",
                format!("{} / {}", s.completed_ok, s.records_ok),
                NONE.into(),
            ),
            &format!("{0} / {0}", s.runs),
            Some(s.completed_ok == s.runs && s.records_ok == s.runs),
        ),
        row(B, "final phases", phases.join(", "), NONE.into()),
        row(
            B,
            "pods per run / PodCreated events per run (0,1,>1)",
            format!(
                "{},{},{} / {},{},{}",
                s.pods_per_run.zero,
                s.pods_per_run.one,
                s.pods_per_run.more,
                s.pod_created_events.zero,
                s.pod_created_events.one,
                s.pod_created_events.more
            ),
            NONE.into(),
        ),
        judged(
            row(
                B,
                "operator peak RSS (sampled every 200 ms)",
                format!("{} MiB", f(s.operator_rss_peak_mib, 1)),
                format!("before {} MiB", f(s.operator_rss_before_mib, 1)),
            ),
            "< 150 MiB",
            s.operator_rss_peak_mib.map(|m| m < 150.0),
        ),
    ]
}

fn wrapper_rows(section: &Section<WrapperReport>) -> Vec<Row> {
    const B: &str = "5 wrapper overhead";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(w) = section else {
        return Vec::new();
    };
    w.languages
        .iter()
        .map(|l| {
            let ours = match &l.error {
                Some(e) => e.chars().take(100).collect(),
                None => format!(
                    "{} ms (wrapped median {} ms)",
                    f(l.overhead_ms, 2),
                    f(l.wrapped_median_ms, 2)
                ),
            };
            judged(
                row(
                    B,
                    &format!("{}: wrapped - bare, medians of {}", l.language, l.runs),
                    ours,
                    format!("bare median {} ms", f(l.bare_median_ms, 2)),
                ),
                "< 5 ms",
                l.overhead_ms.map(|o| o < 5.0),
            )
        })
        .collect()
}

/// What a reader of the table needs to know to trust it: how things were measured, and
/// why anything failed.
pub fn notes(report: &Report) -> Vec<String> {
    let mut notes = vec![
        crate::latency::TIMING_NOTE.to_string(),
        format!(
            "{} CPUs shared with other workloads; load average before {} and after {}",
            report.host.cpus, report.host.load_before, report.host.load_after
        ),
    ];
    let failures = [
        ("run latency", report.latency.error()),
        ("throughput", report.throughput.error()),
        ("apiserver", report.apiserver.error()),
        ("operator scale", report.scale.error()),
        ("wrapper overhead", report.wrapper.error()),
    ];
    for (name, error) in failures {
        notes.extend(error.map(|e| format!("{name} did not complete: {e}")));
    }
    if let Section::Ran(l) = &report.latency {
        notes.push(
            "the raw pod is done when its container is seen terminated and its log is read \
             (the operator also acts on the container's terminated state; the pod's phase \
             turns Succeeded only about a second later)"
                .into(),
        );
        notes.extend(
            l.errors
                .iter()
                .take(3)
                .map(|e| format!("run latency error: {e}")),
        );
    }
    for level in match &report.throughput {
        Section::Ran(t) => t.levels.as_slice(),
        _ => &[],
    } {
        for (who, batch) in [("ours", &level.ours), ("raw pod", &level.raw_pod)] {
            if let Some(e) = &batch.first_error {
                notes.push(format!(
                    "throughput at concurrency {}, {who}: first error: {e}",
                    level.concurrency
                ));
            }
        }
    }
    if let Section::Ran(a) = &report.apiserver {
        notes.push(format!(
            "apiserver: {}; GET of finished run {} (its record is read from storage on each request)",
            a.note, a.run_id
        ));
    }
    if let Section::Ran(s) = &report.scale {
        notes.push(format!(
            "operator scale: {} runs with memory_mb {} in namespace {} (deleted afterwards: {}); \
             operator pid {} found by {}",
            s.runs,
            s.memory_mb,
            s.namespace,
            s.namespace_deleted,
            s.operator_pid
                .map_or_else(|| NONE.into(), |p| p.to_string()),
            s.operator_found_by
                .unwrap_or("nothing: no operator process found")
        ));
        for (phase, message) in &s.failure_examples {
            notes.push(format!("operator scale: e.g. {phase}: {message}"));
        }
    }
    if let Section::Ran(w) = &report.wrapper {
        notes.push(format!("wrapper overhead: {}", w.note));
    }
    notes
}

/// The table as aligned text.
pub fn render(rows: &[Row]) -> String {
    let header = Row {
        benchmark: "benchmark".into(),
        measure: "measure".into(),
        ours: "ours".into(),
        baseline: "baseline".into(),
        target: "target".into(),
        verdict: "verdict".into(),
    };
    let cells = |r: &Row| {
        [
            r.benchmark.clone(),
            r.measure.clone(),
            r.ours.clone(),
            r.baseline.clone(),
            r.target.clone(),
            r.verdict.clone(),
        ]
    };
    let all: Vec<[String; 6]> = std::iter::once(&header).chain(rows).map(cells).collect();
    let widths: Vec<usize> = (0..6)
        .map(|i| all.iter().map(|c| c[i].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |c: &[String; 6]| {
        let padded: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let rule = format!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut out = vec![line(&all[0]), rule];
    out.extend(all[1..].iter().map(line));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_met_missed_or_not_measured() {
        let r = || row("b", "m", "1".into(), "2".into());
        assert_eq!(judged(r(), "t", Some(true)).verdict, "met");
        assert_eq!(judged(r(), "t", Some(false)).verdict, "MISSED");
        assert_eq!(judged(r(), "t", None).verdict, "n/a");
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let rows = vec![row("a", "long measure", "1".into(), "2".into())];
        let text = render(&rows);
        let lens: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(lens.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn a_failed_benchmark_shows_its_error() {
        let section: Section<ThroughputReport> = Section::Failed {
            error: "boom".into(),
        };
        let rows = throughput_rows(&section);
        assert_eq!(rows[0].ours, "boom");
    }
}
