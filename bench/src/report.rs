//! The results: one table (printed and kept in the JSON) and every figure behind it.
use serde::Serialize;

use crate::apiserver_load::ApiLoadReport;
use crate::containers::ContainersReport;
use crate::latency::{LatencyReport, PathReport};
use crate::lists::ListsReport;
use crate::mcp::McpReport;
use crate::pool::PoolReport;
use crate::preload::PreloadReport;
use crate::scale::ScaleReport;
use crate::sim::{SimReport, SimRound};
use crate::stream::StreamReport;
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
    pub pool: Section<PoolReport>,
    pub stream: Section<StreamReport>,
    pub mcp: Section<McpReport>,
    pub preload: Section<PreloadReport>,
    pub throughput: Section<ThroughputReport>,
    pub apiserver: Section<ApiLoadReport>,
    pub scale: Section<ScaleRounds>,
    pub wrapper: Section<WrapperReport>,
    pub scale_sim: Section<SimReport>,
    pub containers: Section<ContainersReport>,
    pub lists: Section<ListsReport>,
}

/// The scale benchmark's rounds, one per number of runs.
#[derive(Debug, Serialize)]
pub struct ScaleRounds {
    pub rounds: Vec<ScaleReport>,
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
    rows.extend(stream_rows(&report.stream));
    rows.extend(mcp_rows(&report.mcp));
    rows.extend(preload_rows(&report.preload));
    rows.extend(containers_rows(&report.containers));
    rows.extend(lists_rows(&report.lists));
    rows.extend(pool_rows(&report.pool));
    rows.extend(throughput_rows(&report.throughput));
    rows.extend(api_rows(&report.apiserver));
    rows.extend(scale_rows(&report.scale));
    rows.extend(wrapper_rows(&report.wrapper));
    rows.extend(sim_rows(&report.scale_sim));
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
    let (w, c, r) = (&l.warm.summary, &l.cold.summary, &l.raw_pod.summary);
    let mut rows = vec![
        judged(
            row(
                B,
                &format!("warm p50 (n={}; baseline: raw pod, n={})", w.n, r.n),
                ms(w.p50_ms),
                ms(r.p50_ms),
            ),
            "<= 150 ms",
            w.p50_ms.map(|v| v <= 150.0),
        ),
        judged(
            row(B, "warm p99", ms(w.p99_ms), ms(r.p99_ms)),
            "<= 400 ms",
            w.p99_ms.map(|v| v <= 400.0),
        ),
        row(
            B,
            "warm p50 / raw pod p50",
            format!("{}x", f(l.warm_p50_ratio_to_raw, 2)),
            NONE.into(),
        ),
        row(
            B,
            &format!("cold p50 / p99 (n={})", c.n),
            format!("{} / {}", ms(c.p50_ms), ms(c.p99_ms)),
            format!("{} / {}", ms(r.p50_ms), ms(r.p99_ms)),
        ),
        judged(
            row(
                B,
                "cold p50 / raw pod p50",
                format!("{}x", f(l.cold_p50_ratio_to_raw, 2)),
                NONE.into(),
            ),
            "<= 1.20x",
            l.cold_p50_ratio_to_raw.map(|v| v <= 1.2),
        ),
        row(
            B,
            "warm runs that went cold (no pool pod free)",
            l.warm_misses.to_string(),
            NONE.into(),
        ),
    ];
    for (name, path) in [("warm", &l.warm), ("cold", &l.cold)] {
        rows.extend(phase_rows(B, name, path));
    }
    for p in &l.raw_pod.phases {
        rows.push(row(
            B,
            &format!("raw pod median: {}", p.phase),
            NONE.into(),
            ms(p.median_ms),
        ));
    }
    for (name, path) in [("warm", &l.warm), ("cold", &l.cold)] {
        rows.push(judged(
            row(
                B,
                &format!(
                    "{name}: API writes per run, before the answer / in all (REST create + operator's)"
                ),
                format!(
                    "1 + {} / 1 + {}",
                    f(path.writes_before_answer, 1),
                    f(path.writes_in_all, 1)
                ),
                NONE.into(),
            ),
            "<= 4 before the answer",
            path.writes_before_answer.map(|v| 1.0 + v <= 4.0),
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

fn phase_rows(b: &str, name: &str, path: &PathReport) -> Vec<Row> {
    path.phases
        .iter()
        .map(|p| {
            row(
                b,
                &format!("{name} median (p99): {}", p.phase),
                format!("{} ({})", ms(p.median_ms), ms(p.p99_ms)),
                NONE.into(),
            )
        })
        .collect()
}

fn stream_rows(section: &Section<StreamReport>) -> Vec<Row> {
    const B: &str = "2 live output";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(s) = section else {
        return Vec::new();
    };
    vec![
        judged(
            row(
                B,
                &format!(
                    "program write -> client receipt, p50 ({} of {} lines)",
                    s.lines_received, s.lines_expected
                ),
                ms(s.write_to_receipt.p50_ms),
                NONE.into(),
            ),
            "<= 50 ms",
            s.write_to_receipt.p50_ms.map(|v| v <= 50.0),
        ),
        row(
            B,
            "program write -> client receipt, p99",
            ms(s.write_to_receipt.p99_ms),
            NONE.into(),
        ),
        row(
            B,
            &format!("request -> first delta, p50 ({} streams)", s.streams),
            ms(s.first_delta.p50_ms),
            NONE.into(),
        ),
        row(
            B,
            "request -> final event, p50 (the program runs ~3 s)",
            ms(s.final_answer.p50_ms),
            NONE.into(),
        ),
    ]
}

fn preload_rows(section: &Section<PreloadReport>) -> Vec<Row> {
    const B: &str = "2b preloaded interpreters";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(p) = section else {
        return Vec::new();
    };
    let d = &p.data;
    let mut rows = vec![
        judged(
            row(
                B,
                &format!(
                    "pandas + matplotlib run, POST -> answer, p50 (n={}, {} warm; baseline: same pool without preload, n={}, {} warm)",
                    d.preloaded.n, d.preloaded_warm, d.plain_pool.n, d.plain_warm
                ),
                ms(d.preloaded.p50_ms),
                ms(d.plain_pool.p50_ms),
            ),
            "<= 150 ms",
            d.preloaded.p50_ms.map(|v| v <= 150.0),
        ),
        row(
            B,
            "the same, p99",
            ms(d.preloaded.p99_ms),
            ms(d.plain_pool.p99_ms),
        ),
        row(
            B,
            &format!("the same on a cold pod, p50 (n={})", d.cold.n),
            ms(d.cold.p50_ms),
            format!("x{} of preloaded", f(d.p50_cold_over_preloaded, 1)),
        ),
        judged(
            row(
                B,
                &format!(
                    "{} print(1+1) at 3/s through the default pool (min 2), p99 ({} cold)",
                    p.steady.runs, p.steady.cold
                ),
                ms(p.steady.latency.p99_ms),
                format!("p50 {}", ms(p.steady.latency.p50_ms)),
            ),
            "<= 150 ms, none cold",
            p.steady
                .latency
                .p99_ms
                .map(|v| v <= 150.0 && p.steady.cold == 0 && p.steady.completed == p.steady.runs),
        ),
    ];
    for s in &p.sweep {
        rows.push(row(
            B,
            &format!(
                "{} print(1+1) at {}/s, plain pool (min 2, max 16), p50 / p99 ({} cold)",
                s.runs, s.per_second, s.cold
            ),
            format!("{} / {}", ms(s.latency.p50_ms), ms(s.latency.p99_ms)),
            format!(
                "{} CPU-s a run, node {}% busy",
                f(s.cpu_s_per_run, 2),
                f(s.node_busy_pct, 0)
            ),
        ));
    }
    rows.extend([row(
        B,
        "idle pool pod's interpreter RSS (baseline: without preload)",
        p.idle
            .preloaded_rss_mib
            .map_or(NONE.into(), |v| format!("{v} MiB")),
        p.idle
            .plain_rss_mib
            .map_or(NONE.into(), |v| format!("{v} MiB")),
    )]);
    if let Some(l) = &p.large_output {
        rows.push(row(
            B,
            "100 MiB output file: run, then download (operator peak RSS)",
            format!("{:.1} s, {:.1} s", l.run_s, l.download_s),
            l.operator_peak_mib
                .map_or(NONE.into(), |v| format!("{v} MiB")),
        ));
    }
    rows
}

/// Each page at each size, beside the same page at the list's first (smallest) size.
fn lists_rows(section: &Section<ListsReport>) -> Vec<Row> {
    const B: &str = "2d lists at scale";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(l) = section else {
        return Vec::new();
    };
    let sub_ms = |v: Option<f64>| v.map_or_else(|| NONE.into(), |v| format!("{v:.2} ms"));
    let mut rows = Vec::new();
    for list in ["runs", "files"] {
        let rounds: Vec<_> = l.rounds.iter().filter(|r| r.list == list).collect();
        let Some(base) = rounds.first() else {
            continue;
        };
        for r in &rounds {
            let pages = [
                ("newest page", &r.first_page, &base.first_page),
                (
                    "page after a cursor halfway",
                    &r.after_cursor,
                    &base.after_cursor,
                ),
            ];
            for (which, ours, baseline) in pages {
                let measure = format!(
                    "{list}: {which} of 20 at {} (seeded in {:.0} s), p50 (n={}; baseline: at {})",
                    r.entries, r.seed_s, ours.n, base.entries
                );
                let mut out = row(B, &measure, sub_ms(ours.p50_ms), sub_ms(baseline.p50_ms));
                if r.entries > base.entries {
                    let met = ours.p50_ms.zip(baseline.p50_ms).map(|(o, b)| o <= 2.0 * b);
                    out = judged(out, "<= 2x baseline", met);
                }
                rows.push(out);
            }
        }
    }
    rows
}

fn containers_rows(section: &Section<ContainersReport>) -> Vec<Row> {
    const B: &str = "2c containers";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(c) = section else {
        return Vec::new();
    };
    let (run, one, exec) = (&c.container_run, &c.one_shot, &c.kubectl_exec);
    let x = |v: Option<f64>| format!("{}x", f(v, 2));
    let mut rows = vec![
        judged(
            row(
                B,
                &format!(
                    "x += 1; print(x) in a live container, POST -> answer, p50 (n={}; baseline: warm one-shot print(1), n={}, interleaved)",
                    run.n, one.n
                ),
                ms(run.p50_ms),
                ms(one.p50_ms),
            ),
            "<= 40 ms",
            run.p50_ms.map(|v| v <= 40.0),
        ),
        judged(
            row(B, "the same, p99", ms(run.p99_ms), ms(one.p99_ms)),
            "<= 150 ms",
            run.p99_ms.map(|v| v <= 150.0),
        ),
        row(
            B,
            "container run / warm one-shot, p50; p99",
            format!(
                "{}; {}",
                x(c.p50_ratio_to_one_shot),
                x(c.p99_ratio_to_one_shot)
            ),
            NONE.into(),
        ),
        row(
            B,
            &format!(
                "the same step as kubectl exec python3 -c 'print(1)' into the container's pod, p50 / p99 (n={})",
                exec.n
            ),
            format!("{} / {}", ms(run.p50_ms), ms(run.p99_ms)),
            format!("{} / {}", ms(exec.p50_ms), ms(exec.p99_ms)),
        ),
        row(
            B,
            "container run / kubectl exec, p50; p99",
            format!(
                "{}; {}",
                x(c.p50_ratio_to_kubectl_exec),
                x(c.p99_ratio_to_kubectl_exec)
            ),
            NONE.into(),
        ),
        judged(
            row(
                B,
                "left out: container runs with the wrong number / failed; one-shots not warm / failed; execs failed",
                format!("{} / {}", c.container_mismatches, c.container_failures),
                format!(
                    "{} / {}; {}",
                    c.one_shot_misses, c.one_shot_failures, c.kubectl_exec_failures
                ),
            ),
            "0 / 0",
            Some(c.container_mismatches == 0 && c.container_failures == 0),
        ),
    ];
    let k = &c.creations;
    let fresh = &k.create_to_first_run_new_pod;
    let pooled = &k.create_to_first_run_from_pool;
    rows.extend([
        row(
            B,
            &format!(
                "POST /v1/containers -> answer, p50 / p99 (n={} of {})",
                k.create.n, k.attempted
            ),
            format!("{} / {}", ms(k.create.p50_ms), ms(k.create.p99_ms)),
            NONE.into(),
        ),
        row(
            B,
            &format!(
                "create -> first print(1) answered, p50 / p99 (n={})",
                k.create_to_first_run.n
            ),
            format!(
                "{} / {}",
                ms(k.create_to_first_run.p50_ms),
                ms(k.create_to_first_run.p99_ms)
            ),
            format!("first run alone p50 {}", ms(k.first_run.p50_ms)),
        ),
        row(
            B,
            &format!(
                "the same, p50 / max: claimed an idle pool pod (n={}; baseline: a new pod, n={})",
                pooled.n, fresh.n
            ),
            format!("{} / {}", ms(pooled.p50_ms), ms(pooled.max_ms)),
            format!("{} / {}", ms(fresh.p50_ms), ms(fresh.max_ms)),
        ),
        row(
            B,
            &format!(
                "creations that claimed a pool pod / got a new pod / pod unread (pool {}: idle before {} of them)",
                k.pool.as_deref().unwrap_or("none"),
                k.pool_ready_before
            ),
            format!("{} / {} / {}", k.from_pool, k.new_pod, k.pod_unknown),
            NONE.into(),
        ),
        row(
            B,
            "DELETE /v1/containers/{id} -> answer, p50",
            ms(k.delete.p50_ms),
            NONE.into(),
        ),
    ]);
    if !c.errors.is_empty() || !c.left_behind.is_empty() {
        rows.push(row(
            B,
            "errors; containers left behind",
            format!("{} (see JSON); {}", c.errors.len(), c.left_behind.len()),
            NONE.into(),
        ));
    }
    rows
}

fn mcp_rows(section: &Section<McpReport>) -> Vec<Row> {
    const B: &str = "2 MCP run_code";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(m) = section else {
        return Vec::new();
    };
    let mut rows = vec![
        judged(
            row(
                B,
                &format!(
                    "warm print(1+1), call -> result, p50 (n={}; baseline: REST, n={}, interleaved)",
                    m.mcp.n, m.rest.n
                ),
                ms(m.mcp.p50_ms),
                ms(m.rest.p50_ms),
            ),
            "<= REST + 10 ms",
            m.p50_overhead_ms.map(|v| v <= 10.0),
        ),
        row(B, "p99", ms(m.mcp.p99_ms), ms(m.rest.p99_ms)),
        row(
            B,
            "p50 MCP - REST",
            f(m.p50_overhead_ms, 1) + " ms",
            NONE.into(),
        ),
    ];
    if !m.errors.is_empty() {
        rows.push(row(
            B,
            "errors",
            format!("{} (see JSON)", m.errors.len()),
            NONE.into(),
        ));
    }
    rows
}

fn pool_rows(section: &Section<PoolReport>) -> Vec<Row> {
    const B: &str = "3 warm pool";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(p) = section else {
        return Vec::new();
    };
    let warm: usize = p.bursts.iter().map(|b| b.warm).sum();
    let runs: usize = p.bursts.iter().map(|b| b.runs).sum();
    let mut rows = vec![
        judged(
            row(
                B,
                &format!(
                    "runs/s, {0} at once from a full pool of {0} (median of {1})",
                    p.size,
                    p.bursts.len()
                ),
                f(p.burst_runs_per_s_median, 1),
                NONE.into(),
            ),
            ">= 10 runs/s",
            p.burst_runs_per_s_median.map(|v| v >= 10.0),
        ),
        row(
            B,
            "those runs: warm / all; latency p50 / p99",
            format!(
                "{warm}/{runs}; {} / {}",
                ms(p.burst_latency.p50_ms),
                ms(p.burst_latency.p99_ms)
            ),
            NONE.into(),
        ),
    ];
    rows.extend(phase_rows(B, "burst", &p.burst_phases));
    rows.extend([
        row(
            B,
            "pool refill after a burst (pods/s, median)",
            f(p.refill_pods_per_s_median, 2),
            NONE.into(),
        ),
        row(
            B,
            &format!(
                "sustained: {} runs at concurrency {}: runs/s (warm)",
                p.sustained.runs, p.sustained.concurrency
            ),
            format!(
                "{:.1} ({}/{} warm)",
                p.sustained.runs_per_s, p.sustained.warm, p.sustained.completed
            ),
            NONE.into(),
        ),
        row(
            B,
            "sustained latency p50 / p99",
            format!(
                "{} / {}",
                ms(p.sustained.latency.p50_ms),
                ms(p.sustained.latency.p99_ms)
            ),
            NONE.into(),
        ),
    ]);
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
            ">= 0.5x /healthz",
            Some(g.requests_per_s >= 0.5 * h.requests_per_s && g.non_2xx == 0),
        ),
        row(
            B,
            "p50 / p99 latency",
            format!("{} / {} ms", f(g.p50_ms, 2), f(g.p99_ms, 2)),
            format!("{} / {} ms", f(h.p50_ms, 2), f(h.p99_ms, 2)),
        ),
    ]
}

fn scale_rows(section: &Section<ScaleRounds>) -> Vec<Row> {
    const B: &str = "4 operator scale";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(all) = section else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for s in &all.rounds {
        let n = s.runs;
        let phases: Vec<String> = s.phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
        let raw = s.raw.as_ref();
        rows.extend([
            judged(
                row(
                    B,
                    &format!("{n} at once: Completed with stdout ok (status / record)"),
                    format!(
                        "{} / {} in {} s",
                        s.completed_ok,
                        s.records_ok,
                        f(s.time_to_all_terminal_s, 1)
                    ),
                    NONE.into(),
                ),
                &format!("{n} / {n}"),
                Some(s.completed_ok == n && s.records_ok == n),
            ),
            judged(
                row(
                    B,
                    &format!("{n}: lost / duplicated (pods, PodCreated events)"),
                    format!("{} / {}", s.lost, s.duplicated),
                    NONE.into(),
                ),
                "0 / 0",
                Some(s.lost == 0 && s.duplicated == 0 && s.created == n),
            ),
            row(B, &format!("{n}: final phases"), phases.join(", "), NONE.into()),
            row(
                B,
                &format!("{n}: queue wait p50 / p99 (created -> pod)"),
                format!(
                    "{} / {}",
                    ms(s.queue_wait.p50_ms),
                    ms(s.queue_wait.p99_ms)
                ),
                NONE.into(),
            ),
            judged(
                row(
                    B,
                    &format!(
                        "{n}: completed/s at saturation (peak {} at once) vs raw pods by a semaphore",
                        s.peak_concurrent
                    ),
                    format!(
                        "{} ({}x)",
                        f(s.saturated_runs_per_s, 2),
                        f(s.ratio_to_raw, 2)
                    ),
                    raw.map_or_else(
                        || NONE.into(),
                        |r| {
                            format!(
                                "{} ({} of {} pods)",
                                f(r.saturated_pods_per_s, 2),
                                r.completed,
                                r.pods
                            )
                        },
                    ),
                ),
                ">= 0.9x",
                s.ratio_to_raw.map(|r| r >= 0.9),
            ),
            judged(
                row(
                    B,
                    &format!("{n}: operator peak RSS (leader, every 200 ms)"),
                    format!("{} MiB", f(s.operator_rss_peak_mib, 1)),
                    format!("before {} MiB", f(s.operator_rss_before_mib, 1)),
                ),
                "< 150 MiB",
                s.operator_rss_peak_mib.map(|m| m < 150.0),
            ),
            row(
                B,
                &format!("{n}: operator API writes per run, in all (pool refills apart)"),
                f(s.writes_per_run, 2),
                NONE.into(),
            ),
        ]);
    }
    rows
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

fn sim_rows(section: &Section<SimReport>) -> Vec<Row> {
    const B: &str = "6 scale by simulation";
    if let Some(rows) = failed_row(B, section) {
        return rows;
    }
    let Section::Ran(sim) = section else {
        return Vec::new();
    };
    // The operator's cost per run is judged against the smallest round's.
    let smallest = sim.rounds.iter().min_by_key(|r| r.runs);
    let mut rows = Vec::new();
    for r in &sim.rounds {
        rows.extend(sim_flow_rows(B, r));
        if r.hold_s > 0 {
            rows.extend(sim_fairness_rows(B, r));
        }
        rows.extend(sim_cost_rows(B, r, smallest));
        rows.extend(sim_load_rows(B, r));
    }
    rows
}

fn sim_label(r: &SimRound) -> String {
    match r.hold_s {
        0 => format!("{} runs", r.runs),
        s => format!("{} runs, pods held {s} s", r.runs),
    }
}

fn p50_p99(s: &crate::stats::Summary) -> String {
    format!("{} / {}", ms(s.p50_ms), ms(s.p99_ms))
}

fn sim_flow_rows(b: &str, r: &SimRound) -> Vec<Row> {
    let l = sim_label(r);
    let n = r.runs;
    vec![
        row(
            b,
            &format!(
                "{l}: created through REST ({} tenants), per s; POST p50 / p99",
                r.tenants
            ),
            format!("{:.0}/s; {}", r.created_per_s, p50_p99(&r.post)),
            NONE.into(),
        ),
        judged(
            row(
                b,
                &format!("{l}: admitted / bound / started (pod Running)"),
                format!("{} / {} / {}", r.admitted, r.bound, r.started),
                NONE.into(),
            ),
            &format!("{n} each"),
            Some(r.created == n && r.admitted == n && r.bound == n && r.started == n),
        ),
        row(
            b,
            &format!("{l}: created -> admitted, p50 / p99"),
            p50_p99(&r.to_admitted),
            NONE.into(),
        ),
        row(
            b,
            &format!("{l}: created -> bound, p50 / p99 (admitted -> bound: the scheduler)"),
            p50_p99(&r.to_bound),
            p50_p99(&r.admitted_to_bound),
        ),
        row(
            b,
            &format!("{l}: created -> started, p50 / p99"),
            p50_p99(&r.to_started),
            NONE.into(),
        ),
        row(
            b,
            &format!("{l}: pods started per s at saturation (admitted per s)"),
            format!("{} ({})", f(r.started_per_s, 1), f(r.admitted_per_s, 1)),
            NONE.into(),
        ),
        judged(
            row(
                b,
                &format!("{l}: misplaced (no node could hold the pod) / large on a small node"),
                format!("{} / {}", r.misplaced, r.large_on_standard),
                NONE.into(),
            ),
            "0 / 0",
            Some(r.misplaced == 0 && r.large_on_standard == 0 && r.bound > 0),
        ),
        judged(
            row(
                b,
                &format!("{l}: runs reported Completed (nothing ran)"),
                r.phases.get("Completed").copied().unwrap_or(0).to_string(),
                NONE.into(),
            ),
            "0",
            Some(!r.phases.contains_key("Completed")),
        ),
    ]
}

fn sim_fairness_rows(b: &str, r: &SimRound) -> Vec<Row> {
    let l = sim_label(r);
    let fair = &r.fairness;
    vec![
        judged(
            row(
                b,
                &format!(
                    "{l}: tenants' shares while all waited ({} admitted in {:.0} s): min-max; heavy tenant (half the runs)",
                    fair.window_admissions, fair.window_s
                ),
                format!(
                    "{}-{}x; {}x",
                    f(fair.min_share, 2),
                    f(fair.max_share, 2),
                    f(fair.heavy_share, 2)
                ),
                format!("first come first served: {:.1}x", r.tenants as f64 / 2.0),
            ),
            "0.75-1.25x",
            fair.min_share
                .zip(fair.max_share)
                .map(|(lo, hi)| lo >= 0.75 && hi <= 1.25),
        ),
        row(
            b,
            &format!("{l}: waited for room; created -> admitted p50, heavy tenant vs the others"),
            format!(
                "{}; {} vs {}",
                r.waited_for_room,
                ms(fair.heavy_wait.p50_ms),
                ms(fair.light_wait.p50_ms)
            ),
            NONE.into(),
        ),
        row(
            b,
            &format!("{l}: runs admitted ahead of an earlier run of their tenant (most places)"),
            format!("{} ({})", fair.overtakes, fair.max_overtake),
            NONE.into(),
        ),
    ]
}

fn sim_cost_rows(b: &str, r: &SimRound, smallest: Option<&SimRound>) -> Vec<Row> {
    let l = sim_label(r);
    let base = smallest.filter(|s| s.runs < r.runs && s.hold_s == r.hold_s);
    let no_higher = |ours: Option<f64>, theirs: Option<f64>| {
        base.and(ours.zip(theirs)).map(|(o, t)| o <= t * 1.1)
    };
    let target = |what: &str| match base {
        Some(s) => format!("<= {what} at {} (+10%)", s.runs),
        None => NONE.into(),
    };
    let rss = |name: &str| r.peak_rss_mib.get(name).copied();
    vec![
        judged(
            row(
                b,
                &format!("{l}: operator CPU ms per run"),
                f(r.operator_cpu_ms_per_run, 2),
                base.map_or(NONE.into(), |s| f(s.operator_cpu_ms_per_run, 2)),
            ),
            &target("the same"),
            no_higher(
                r.operator_cpu_ms_per_run,
                base.and_then(|s| s.operator_cpu_ms_per_run),
            ),
        ),
        judged(
            row(
                b,
                &format!("{l}: operator API writes per run"),
                f(r.operator_writes_per_run, 2),
                base.map_or(NONE.into(), |s| f(s.operator_writes_per_run, 2)),
            ),
            &target("the same"),
            no_higher(
                r.operator_writes_per_run,
                base.and_then(|s| s.operator_writes_per_run),
            ),
        ),
        judged(
            row(
                b,
                &format!(
                    "{l}: operator peak RSS, the round's shard (its runs and every pod; baseline: the main stack's, every pod and none of the runs)"
                ),
                format!("{} MiB", f(rss("operator (shard)"), 0)),
                format!("{} MiB", f(rss("operator (main stack)"), 0)),
            ),
            "< 300 MiB",
            rss("operator (shard)").map(|m| m < 300.0),
        ),
    ]
}

fn sim_load_rows(b: &str, r: &SimRound) -> Vec<Row> {
    let l = sim_label(r);
    let cpu = |name: &str| r.cpu_s.get(name).copied();
    let rss = |name: &str| r.peak_rss_mib.get(name).copied();
    let by_process: Vec<String> = r.cpu_s.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
    vec![
        row(
            b,
            &format!("{l}: API server CPU ms per run; peak RSS"),
            format!(
                "{}; {} MiB",
                f(r.apiserver_cpu_ms_per_run, 2),
                f(rss("apiserver (shard)"), 0)
            ),
            NONE.into(),
        ),
        row(
            b,
            &format!("{l}: kube-apiserver requests per run (whole cluster), by verb"),
            format!(
                "{} ({})",
                f(r.kube_requests_per_run, 1),
                crate::sim::figures::largest(&r.kube_requests_by_verb, 6)
            ),
            format!("kube-apiserver peak {} MiB", f(rss("kube-apiserver"), 0)),
        ),
        row(
            b,
            &format!(
                "{l}: CPU s by process over {:.0} s (where the time goes)",
                r.duration_s
            ),
            by_process.join(", "),
            format!("operator {} s", f(cpu("operator (shard)"), 1)),
        ),
    ]
}

fn sim_notes(s: &SimReport) -> Vec<String> {
    let mut notes = vec![format!("scale by simulation: {}", crate::sim::describe(s))];
    for r in &s.rounds {
        let l = sim_label(r);
        notes.push(format!(
            "scale by simulation, {l} (shard {}): shapes {:?}; pods per run {:?}; phases reached {:?}; \
             deleted {}; cleaned up {}",
            r.shard, r.shapes, r.pods_per_run, r.phases, r.deleted, r.cleaned_up
        ));
        notes.push(format!(
            "scale by simulation, {l}: operator writes per run: {}",
            r.operator_writes
        ));
        notes.push(format!(
            "scale by simulation, {l}: kube-apiserver requests per run: {}",
            r.kube_requests_largest
        ));
        notes.extend(
            r.create_errors
                .iter()
                .map(|e| format!("scale by simulation, {l}: create error: {e}")),
        );
        notes.extend(
            r.delete_errors
                .iter()
                .map(|e| format!("scale by simulation, {l}: delete error: {e}")),
        );
    }
    if !s.cleaned_up {
        notes.push(
            "scale by simulation: something was left behind (see cleaned_up per round)".into(),
        );
    }
    notes
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
        ("live output", report.stream.error()),
        ("MCP vs REST", report.mcp.error()),
        ("preloaded interpreters", report.preload.error()),
        ("warm pool", report.pool.error()),
        ("throughput", report.throughput.error()),
        ("apiserver", report.apiserver.error()),
        ("operator scale", report.scale.error()),
        ("wrapper overhead", report.wrapper.error()),
        ("scale by simulation", report.scale_sim.error()),
        ("containers", report.containers.error()),
        ("lists at scale", report.lists.error()),
    ];
    for (name, error) in failures {
        notes.extend(error.map(|e| format!("{name} did not complete: {e}")));
    }
    if let Section::Ran(l) = &report.latency {
        notes.push(
            "the raw pod is done when its container is seen terminated and its log is read; \
             a warm run is one the operator served from a pool pod (its CodeRun says \
             startMode Warm), a cold run asked for a memory limit no pool has"
                .into(),
        );
        notes.push(format!("warm writes per run: {}", l.warm.writes_breakdown));
        notes.push(format!("cold writes per run: {}", l.cold.writes_breakdown));
        notes.extend(
            l.errors
                .iter()
                .take(3)
                .map(|e| format!("run latency error: {e}")),
        );
    }
    if let Section::Ran(s) = &report.stream {
        notes.extend(s.errors.iter().take(3).map(|e| format!("live output: {e}")));
    }
    if let Section::Ran(m) = &report.mcp {
        notes.push(
            "MCP vs REST: each pair is one warm run of each, the order alternating; MCP is a \
             tools/call of run_code over Streamable HTTP after one initialize"
                .into(),
        );
        notes.extend(m.errors.iter().take(3).map(|e| format!("MCP vs REST: {e}")));
    }
    if let Section::Ran(p) = &report.preload {
        notes.push(
            "preloaded interpreters: the data-science run makes a 1,000-row CSV, reads it with \
             pandas, groups it and plots it with matplotlib to a PNG; the plain pool is a pool \
             of the same image whose interpreter waits without importing anything, the cold \
             pod a shape no pool has; the three are interleaved"
                .into(),
        );
        notes.extend(
            p.first_error
                .iter()
                .map(|e| format!("preloaded interpreters: first error: {e}")),
        );
    }
    if let Section::Ran(c) = &report.containers {
        notes.push(format!(
            "containers: each round is one run in the live container (POST /v1/runs with \
             \"container\", request to answer), one warm one-shot print(1) (only those served \
             from a pool pod count) and one `{} exec {} -- python3 -c 'print(1)'` (process \
             start to exit: kubectl's own start-up included, as a user pays it), the order \
             rotating, each after the runs' warm pools are back to their idle size; the live \
             container's pod {} (from the pool: {:?}); creations: one at a time, each after the \
             container pool has an idle pod again, then deleted; deleted in all {}",
            c.kubectl,
            c.exec_target.as_deref().unwrap_or("-"),
            c.live_pod.as_deref().unwrap_or("-"),
            c.live_pod_from_pool,
            c.cleaned_up
        ));
        notes.extend(c.errors.iter().take(3).map(|e| format!("containers: {e}")));
        notes.extend(
            c.creations
                .items
                .iter()
                .filter_map(|i| i.error.as_ref().map(|e| (i.index, e)))
                .take(3)
                .map(|(i, e)| format!("containers: creation {i}: {e}")),
        );
        notes.extend(
            c.left_behind
                .iter()
                .map(|l| format!("containers: left behind: {l}")),
        );
    }
    if let Section::Ran(p) = &report.pool {
        notes.push(format!(
            "warm pool: grown to {} in {:.1} s through helm upgrade; rolled back afterwards: {}",
            p.size, p.grow_s, p.rolled_back
        ));
        notes.extend(
            p.first_error
                .iter()
                .map(|e| format!("warm pool: first error: {e}")),
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
            "apiserver: {}; GET of finished run {} (served from the finished-runs cache)",
            a.note, a.run_id
        ));
    }
    if let Section::Ran(all) = &report.scale {
        for s in &all.rounds {
            notes.push(format!(
                "operator scale: {} runs with memory_mb {} (cold: no pool has that shape) in \
                 namespace {} (deleted afterwards: {}); writes per run: {}",
                s.runs, s.memory_mb, s.namespace, s.namespace_deleted, s.writes_breakdown
            ));
            for (phase, message) in &s.failure_examples {
                notes.push(format!("operator scale: e.g. {phase}: {message}"));
            }
            if let Some(e) = s.raw.as_ref().and_then(|r| r.first_error.as_ref()) {
                notes.push(format!("operator scale: raw pods: first error: {e}"));
            }
        }
    }
    if let Section::Ran(w) = &report.wrapper {
        notes.push(format!("wrapper overhead: {}", w.note));
    }
    if let Section::Ran(s) = &report.scale_sim {
        notes.extend(sim_notes(s));
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
    fn a_report_of_every_kind_serialises() {
        let scale: Section<ScaleRounds> = Section::Ran(ScaleRounds { rounds: Vec::new() });
        assert!(serde_json::to_string(&scale).is_ok());
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
