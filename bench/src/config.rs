//! Settings: every one a flag and an environment variable. The defaults keep a whole
//! `make bench` within about ten minutes on a two-core node.
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Suite {
    Latency,
    Pool,
    Stream,
    Mcp,
    Preload,
    Throughput,
    Apiserver,
    Scale,
    Wrapper,
    /// Admission and the operator at 100 simulated nodes and 10,000 runs (kwok).
    ScaleSim,
    /// Runs in a container that keeps state, against a warm one-shot run and `kubectl exec`;
    /// creating containers.
    Containers,
    /// A page of runs and of files from a store seeded with many, against one seeded with
    /// few (no cluster).
    Lists,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks against the running local stack; prints one table and writes it as JSON"
)]
pub struct Args {
    /// Which benchmarks to run (comma-separated); all of them by default.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',', value_enum)]
    pub only: Vec<Suite>,

    /// The REST API under test (started by `make up`).
    #[arg(long, env = "BENCH_API_URL", default_value = "http://localhost:8080")]
    pub api_url: String,
    #[arg(
        long,
        env = "BENCH_API_TOKEN",
        default_value = "dev_123",
        hide_env_values = true
    )]
    pub api_token: String,
    /// Namespace the API creates its CodeRuns in.
    #[arg(long, env = "SANDBOX_NAMESPACE", default_value = "codeinterp")]
    pub sandbox_namespace: String,

    /// Sequential runs of `print(1+1)` on each of the warm and the cold path, each beside one
    /// raw pod.
    #[arg(long, env = "BENCH_LATENCY_RUNS", default_value_t = 30)]
    pub latency_runs: usize,

    /// Rounds of the data-science run on each of the preloaded pool, a pool without
    /// preloading and a cold pod.
    #[arg(long, env = "BENCH_PRELOAD_ROUNDS", default_value_t = 12)]
    pub preload_rounds: usize,

    /// The Python warm pool's size during the pool benchmark (and its concurrency).
    #[arg(long, env = "BENCH_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Bursts of `pool_size` runs, each from a full pool.
    #[arg(long, env = "BENCH_POOL_BURSTS", default_value_t = 3)]
    pub pool_bursts: usize,
    /// Helm, its kubeconfig and the chart, to change the pool's size and roll it back.
    #[arg(long, env = "BENCH_HELM", default_value = "helm")]
    pub helm: PathBuf,
    #[arg(
        long,
        env = "KUBECONFIG_ADMIN",
        default_value = "/var/lib/codeinterp/pki/admin.kubeconfig"
    )]
    pub helm_kubeconfig: PathBuf,
    #[arg(long, env = "BENCH_CHART", default_value = "charts/codeinterp")]
    pub chart: String,

    /// Runs streamed with `"stream": true`, each printing 30 timestamps.
    #[arg(long, env = "BENCH_STREAM_RUNS", default_value_t = 5)]
    pub stream_runs: usize,

    /// Pairs of warm `print(1+1)` runs, one through MCP's `run_code` and one through
    /// `POST /v1/runs`, interleaved.
    #[arg(long, env = "BENCH_MCP_PAIRS", default_value_t = 30)]
    pub mcp_pairs: usize,

    /// Concurrency levels of the throughput benchmark.
    #[arg(long, env = "BENCH_THROUGHPUT_LEVELS", value_delimiter = ',', default_values_t = [1, 4, 16])]
    pub throughput_levels: Vec<usize>,
    /// Items run at each level (one number per level), for our runs and for raw pods each.
    #[arg(long, env = "BENCH_THROUGHPUT_ITEMS", value_delimiter = ',', default_values_t = [12, 24, 48])]
    pub throughput_items: Vec<usize>,

    /// The apiserver binary started, just for this benchmark, with a key without rate limit.
    #[arg(
        long,
        env = "BENCH_APISERVER_BIN",
        default_value = "/var/cache/codeinterp/cargo-target/release/apiserver"
    )]
    pub apiserver_bin: PathBuf,
    #[arg(long, env = "BENCH_APISERVER_PORT", default_value_t = 18095)]
    pub apiserver_port: u16,
    /// Open connections of the load generator.
    #[arg(long, env = "BENCH_HTTP_CONNECTIONS", default_value_t = 32)]
    pub http_connections: u32,
    /// Threads of the load generator (wrk).
    #[arg(long, env = "BENCH_HTTP_THREADS", default_value_t = 2)]
    pub http_threads: u32,
    /// Seconds of load on each route.
    #[arg(long, env = "BENCH_HTTP_SECONDS", default_value_t = 10)]
    pub http_seconds: u32,

    /// Run index entries seeded for the lists benchmark, one round per number (the first is
    /// the baseline).
    #[arg(long, env = "BENCH_LISTS_RUNS", value_delimiter = ',', default_values_t = [1_000, 1_000_000])]
    pub lists_runs: Vec<usize>,
    /// Files seeded for the lists benchmark, one round per number (the first is the baseline).
    #[arg(long, env = "BENCH_LISTS_FILES", value_delimiter = ',', default_values_t = [1_000, 100_000])]
    pub lists_files: Vec<usize>,
    /// Timed calls of each page.
    #[arg(long, env = "BENCH_LISTS_CALLS", default_value_t = 50)]
    pub lists_calls: usize,
    /// Where the lists benchmark seeds its stores (each removed after its round).
    #[arg(
        long,
        env = "BENCH_LISTS_DIR",
        default_value = "/var/cache/codeinterp/bench-lists"
    )]
    pub lists_dir: PathBuf,

    /// CodeRuns created at once by the operator scale benchmark, one round per number.
    #[arg(long, env = "BENCH_SCALE_RUNS", value_delimiter = ',', default_values_t = [500, 2000])]
    pub scale_runs: Vec<usize>,
    /// Raw pods of the baseline, run by a semaphore at the concurrency the runs reached
    /// (0: no baseline).
    #[arg(long, env = "BENCH_SCALE_RAW_PODS", default_value_t = 300)]
    pub scale_raw_pods: usize,
    /// Creations in flight at once.
    #[arg(long, env = "BENCH_SCALE_CREATE_CONCURRENCY", default_value_t = 32)]
    pub scale_create_concurrency: usize,
    /// Memory limit of each scale run. Runner pods request their whole memory limit, so the
    /// default 512 MiB would let only a few dozen run on this node at once.
    #[arg(long, env = "BENCH_SCALE_MEMORY_MB", default_value_t = 64)]
    pub scale_memory_mb: u64,
    /// Longest the scale benchmark waits for every run to end (at least a second per run).
    #[arg(long, env = "BENCH_SCALE_TIMEOUT_SECONDS", default_value_t = 900)]
    pub scale_timeout_seconds: u64,

    /// Runs of each simulated scale round whose pods start at once (the operator's cost per
    /// run at each size, and how fast it starts pods).
    #[arg(long, env = "BENCH_SIM_RUNS", value_delimiter = ',', default_values_t = [100, 10_000])]
    pub sim_runs: Vec<usize>,
    /// Runs of the simulated round whose pods hold their room (`sim_hold_seconds`), so the
    /// room runs out and the line's order across tenants shows (0: no such round).
    #[arg(long, env = "BENCH_SIM_FAIR_RUNS", default_value_t = 10_000)]
    pub sim_fair_runs: usize,
    /// How long kwok holds a pod of that round bound before marking it Running.
    #[arg(long, env = "BENCH_SIM_HOLD_SECONDS", default_value_t = 60)]
    pub sim_hold_seconds: u64,
    /// Tenants the simulated rounds' runs come from (tenant 0 makes half of them).
    #[arg(long, env = "BENCH_SIM_TENANTS", default_value_t = 20)]
    pub sim_tenants: usize,
    /// Simulated nodes, and how many of them are large.
    #[arg(long, env = "BENCH_SIM_NODES", default_value_t = 100)]
    pub sim_nodes: usize,
    #[arg(long, env = "BENCH_SIM_LARGE_NODES", default_value_t = 10)]
    pub sim_large_nodes: usize,
    /// `POST /v1/runs` in flight at once.
    #[arg(long, env = "BENCH_SIM_CREATE_CONCURRENCY", default_value_t = 64)]
    pub sim_create_concurrency: usize,
    /// Longest a simulated round waits for every pod to start.
    #[arg(long, env = "BENCH_SIM_TIMEOUT_SECONDS", default_value_t = 1800)]
    pub sim_timeout_seconds: u64,
    /// The script that builds and runs kwok and its nodes.
    #[arg(long, env = "BENCH_KWOK_SCRIPT", default_value = "hack/kwok/kwok.sh")]
    pub kwok_script: PathBuf,

    /// Executions of each of bare and wrapped, per language.
    #[arg(long, env = "BENCH_WRAPPER_RUNS", default_value_t = 30)]
    pub wrapper_runs: usize,

    /// Rounds of the containers benchmark: each a run in a live container, a warm one-shot
    /// run and a `kubectl exec` into the container's pod, interleaved.
    #[arg(long, env = "BENCH_CONTAINER_RUNS", default_value_t = 30)]
    pub container_runs: usize,
    /// Containers created one at a time (each with a first run, then deleted).
    #[arg(long, env = "BENCH_CONTAINER_CREATIONS", default_value_t = 10)]
    pub container_creations: usize,
    /// Longest wait before each creation for the container pool to have an idle pod again.
    #[arg(long, env = "BENCH_CONTAINER_REFILL_SECONDS", default_value_t = 90)]
    pub container_refill_seconds: u64,
    /// The kubectl of the `kubectl exec` baseline; by default the cluster's version that
    /// `make up` built, else the one on the PATH.
    #[arg(long, env = "BENCH_KUBECTL")]
    pub kubectl: Option<PathBuf>,

    /// Where the operator's and the cluster's state lives (pids, storage, signing key).
    #[arg(long, env = "CODEINTERP_RUN", default_value = "/var/lib/codeinterp")]
    pub run_dir: PathBuf,
    /// Where results.json (and a dated copy) are written.
    #[arg(
        long,
        env = "BENCH_OUT_DIR",
        default_value = "/var/lib/codeinterp/bench"
    )]
    pub out_dir: PathBuf,
}

impl Args {
    pub fn wants(&self, suite: Suite) -> bool {
        self.only.is_empty() || self.only.contains(&suite)
    }

    /// Whether a wanted benchmark needs the running stack (all but the lists one do).
    pub fn wants_cluster(&self) -> bool {
        Suite::value_variants()
            .iter()
            .any(|s| *s != Suite::Lists && self.wants(*s))
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.run_dir.join("storage")
    }
}
