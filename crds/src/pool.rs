//! The `RunnerPool` custom resource: a warm pool of runner pods of one language and shape,
//! each waiting (its interpreter started, its modules imported) for one job. The operator
//! sizes a pool between its minimum and maximum from the arrival rate of the runs it serves
//! and the time its pods take to become ready; `kubectl scale` (or an autoscaler, through the
//! scale subresource) sets the minimum.
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::Language;

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "codeinterp.dev",
    version = "v1alpha1",
    kind = "RunnerPool",
    namespaced,
    status = "RunnerPoolStatus",
    shortname = "rpool",
    category = "codeinterp",
    scale(
        spec_replicas_path = ".spec.minReplicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Language","type":"string","jsonPath":".spec.language"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Target","type":"integer","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Idle","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Hits","type":"integer","jsonPath":".status.hits"}"#,
    printcolumn = r#"{"name":"Misses","type":"integer","jsonPath":".status.misses"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 40").message("a pool's name must be at most 40 characters (it prefixes its pods' names)"),
    validation = Rule::new("self.spec.minReplicas <= self.spec.maxReplicas").message("minReplicas must not be above maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPoolSpec {
    /// The interpreter of the pool's pods.
    pub language: Language,
    /// The shape of the runs the pool serves (their limits after defaults must match);
    /// unset, the run defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 8192))]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 4000))]
    pub cpu_millicores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub disk_mb: Option<u64>,
    /// Idle pods kept at all times (what `kubectl scale` sets).
    #[serde(default)]
    #[schemars(range(min = 0, max = 256))]
    pub min_replicas: u32,
    /// Most idle pods, however many runs arrive.
    #[schemars(range(min = 0, max = 256))]
    pub max_replicas: u32,
    /// Whether each pod starts its interpreter before any job (default true). Without it a
    /// pod starts the interpreter when its job arrives, as a cold pod does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<bool>,
    /// Modules the waiting interpreter imports before any job. Unset: the language's default
    /// (Python: numpy, pandas, matplotlib with the Agg backend; the others: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.:/@-]+$"))
    )]
    pub preload: Option<Vec<String>>,
    /// Memory added to each pod for the waiting interpreter and what it imported, so a run
    /// still has all of its `memory_mb`. Unset: the language's default (Python with the data
    /// stack: 160; the others: 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4096))]
    pub preload_memory_mb: Option<u64>,
    /// Pods for containers (CodeContainers of `memoryMb` as their memory limit: 1024 for
    /// `1g`) instead of runs: a new container claims one and starts at once. Such a pod has
    /// every language's interpreter; `language`, `kernel` and `preload` do not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPoolStatus {
    /// Idle pods ready to be claimed.
    #[serde(default)]
    pub replicas: u32,
    /// The size the operator keeps the pool at now: from the arrival rate, within min..max.
    #[serde(default)]
    pub target: u32,
    /// Runs the pool served with an idle pod, and runs it served none (they started cold).
    #[serde(default)]
    pub hits: u64,
    #[serde(default)]
    pub misses: u64,
    /// Runs per minute the pool has seen lately.
    #[serde(default)]
    pub arrivals_per_minute: f64,
    /// Seconds a new pod takes to be ready (its interpreter started and its modules
    /// imported), as lately measured.
    #[serde(default)]
    pub ready_seconds: f64,
    /// The label selector of the pool's pods (for the scale subresource).
    #[serde(default)]
    pub selector: String,
}

impl RunnerPoolSpec {
    /// Whether the pool's pods run a waiting interpreter.
    pub fn kernel(&self) -> bool {
        self.kernel.unwrap_or(true)
    }

    /// What the pool's interpreters import before any job.
    pub fn preload(&self) -> Vec<String> {
        match (&self.preload, self.kernel()) {
            (_, false) => Vec::new(),
            (Some(list), true) => list.clone(),
            (None, true) => default_preload(self.language),
        }
    }

    /// Memory added to each pod for the waiting interpreter and its imports.
    pub fn preload_memory_mb(&self) -> u64 {
        match (self.preload_memory_mb, self.kernel()) {
            (_, false) => 0,
            (Some(mb), true) => mb,
            (None, true) if self.language == Language::Python && !self.preload().is_empty() => 160,
            (None, true) => 32,
        }
    }
}

/// What a language's waiting interpreter imports unless told otherwise.
pub fn default_preload(language: Language) -> Vec<String> {
    match language {
        Language::Python => ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"]
            .map(String::from)
            .to_vec(),
        _ => Vec::new(),
    }
}
