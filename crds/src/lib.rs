//! The custom resources (`codeinterp.dev/v1alpha1`): `CodeRun`, what a user asks to run and
//! what happened; `RunnerPool`, a warm pool of runner pods; `CodeContainer`, a sandbox that
//! keeps its interpreters and files between runs. Nothing in a spec can choose an
//! image, a user, a volume or a privilege: those are the operator's. The CRD YAML in `crds/`
//! is generated from these types by `cargo run -p codeinterp-crds --bin crdgen -- crds`; a
//! test fails when it is stale.
#![forbid(unsafe_code)]

mod container;
mod limits;
mod pool;
mod reason;
mod status;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use container::{
    CodeContainer, CodeContainerSpec, CodeContainerStatus, ContainerPhase, FileOp, FileOpError,
    FileOpKind, MemoryLimit,
};
pub use limits::{EffectiveLimits, LimitError, Limits, Maxima};
pub use pool::{RunnerPool, RunnerPoolSpec, RunnerPoolStatus, default_preload};
pub use reason::Reason;
pub use runner_protocol::Language;
pub use status::{
    Applied, ArtifactRef, CodeRunStatus, ConditionReason, ConditionType, Phase, StartMode, Usage,
};

pub const GROUP: &str = "codeinterp.dev";
/// Label on every CodeRun created for a tenant (the API key's label). Honoured only in the
/// namespace where the REST API creates its runs; only its ServiceAccount may set it there
/// (the chart's ValidatingAdmissionPolicy).
pub const TENANT_LABEL: &str = "codeinterp.dev/tenant";
/// Label that assigns a CodeRun to one operator shard (see the operator's `--shard`).
pub const SHARD_LABEL: &str = "codeinterp.dev/shard";
/// Label on a run's pod: the CodeRun's UID. Anyone may set a label, so the operator trusts a
/// pod as a run's only through its controller owner reference.
pub const RUN_UID_LABEL: &str = "codeinterp.dev/run-uid";
/// Label that marks runner pods; the deny-all NetworkPolicy selects it.
pub const RUNNER_LABEL: &str = "codeinterp.dev/runner";
/// Label on the pods of a warm pool: the pool's name.
pub const POOL_LABEL: &str = "codeinterp.dev/pool";
/// On an idle pool pod: the operator process that holds an attach session open to it (only
/// that process may hand it a job; the pod ends when that session closes).
pub const HELD_LABEL: &str = "codeinterp.dev/held-by";
/// Largest program source accepted (bytes).
pub const MAX_CODE_BYTES: usize = 256 * 1024;
/// Largest stdin accepted (bytes).
pub const MAX_STDIN_BYTES: usize = 256 * 1024;
/// Longest CodeRun name: a DNS label, so it is also a valid pod name and label value.
pub const MAX_NAME_LENGTH: usize = 63;
/// Tenants of runs not created by the REST API are their namespace's: `_ns-<namespace>`.
/// API key labels cannot start with an underscore, so no REST tenant collides with one.
pub const NAMESPACE_TENANT_PREFIX: &str = "_ns-";

/// A program to run in a sandboxed pod, and (in `status`) how it went.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "codeinterp.dev",
    version = "v1alpha1",
    kind = "CodeRun",
    namespaced,
    status = "CodeRunStatus",
    shortname = "cr",
    category = "codeinterp",
    printcolumn = r#"{"name":"Language","type":"string","jsonPath":".spec.language"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Exit","type":"integer","jsonPath":".status.exitCode"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","priority":1}"#,
    printcolumn = r#"{"name":"Queue","type":"integer","jsonPath":".status.queuePosition","priority":1}"#,
    printcolumn = r#"{"name":"Start","type":"string","jsonPath":".status.startMode","priority":1}"#,
    printcolumn = r#"{"name":"Preloaded","type":"boolean","jsonPath":".status.preloaded","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("a CodeRun's name must be at most 63 characters (it names its pod)")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)").message("a cancelled run cannot be resumed"))]
// Everything but `cancel` is fixed at creation. The rules sit on the spec, not on each field:
// a field's own `self == oldSelf` is skipped when the field was absent before or is absent
// now, so stdin, args or files could be added to (or taken from) a queued run.
#[x_kube(validation = Rule::new("self.language == oldSelf.language").message("language is immutable"))]
#[x_kube(validation = Rule::new("self.code == oldSelf.code").message("code is immutable"))]
#[x_kube(validation = Rule::new("has(self.stdin) == has(oldSelf.stdin) && (!has(self.stdin) || self.stdin == oldSelf.stdin)").message("stdin is immutable"))]
#[x_kube(validation = Rule::new("has(self.args) == has(oldSelf.args) && (!has(self.args) || self.args == oldSelf.args)").message("args are immutable"))]
#[x_kube(validation = Rule::new("has(self.files) == has(oldSelf.files) && (!has(self.files) || self.files == oldSelf.files)").message("files are immutable"))]
#[x_kube(validation = Rule::new("has(self.limits) == has(oldSelf.limits) && (!has(self.limits) || self.limits == oldSelf.limits)").message("limits are immutable"))]
#[x_kube(validation = Rule::new("has(self.ttlSecondsAfterFinished) == has(oldSelf.ttlSecondsAfterFinished) && (!has(self.ttlSecondsAfterFinished) || self.ttlSecondsAfterFinished == oldSelf.ttlSecondsAfterFinished)").message("ttlSecondsAfterFinished is immutable"))]
#[x_kube(validation = Rule::new("has(self.container) == has(oldSelf.container) && (!has(self.container) || self.container == oldSelf.container)").message("container is immutable"))]
pub struct CodeRunSpec {
    pub language: Language,
    /// The program's source.
    #[schemars(length(min = 1, max = 262144))]
    pub code: String,
    /// Standard input for the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub stdin: Option<String>,
    /// Command-line arguments for the program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Files placed in the program's working directory before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g.name == f.name))").message("file names must be unique"))]
    pub files: Vec<InputFile>,
    #[serde(default)]
    pub limits: Limits,
    /// Delete the CodeRun (and anything left of its pod) this many seconds after it
    /// finishes; the run record stays in object storage. Default: the operator's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub ttl_seconds_after_finished: Option<u64>,
    /// Set to true to stop the run; what it printed so far is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Run in this CodeContainer (of the same namespace) instead of a pod of its own: its
    /// interpreter's state and its files are there from earlier runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

/// An input file, given inline (base64) or as the id of a file uploaded through the REST API.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.fileId) != has(self.contentBase64)").message("give exactly one of fileId and contentBase64"))]
pub struct InputFile {
    /// Name in the working directory: a plain file name, no folders.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._ -]*$")
    )]
    pub name: String,
    /// An uploaded file of the run's tenant. Only the REST API may set it (the chart's
    /// ValidatingAdmissionPolicy); the operator honours it only for the REST API's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 921600))]
    pub content_base64: Option<String>,
}

impl CodeRun {
    /// The tenant label as set, whoever set it (see [`CodeRun::tenant_in`]).
    pub fn tenant_label(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TENANT_LABEL))
            .map(String::as_str)
    }

    /// The tenant the run belongs to: its tenant label when it lives in `rest_namespace`
    /// (where only the REST API may set one), else its namespace's tenant. A label set on a
    /// run elsewhere names no one.
    pub fn tenant_in(&self, rest_namespace: &str) -> String {
        let ns = self.metadata.namespace.as_deref().unwrap_or_default();
        match self.tenant_label() {
            Some(label) if ns == rest_namespace && is_api_tenant(label) => label.to_string(),
            _ => format!("{NAMESPACE_TENANT_PREFIX}{ns}"),
        }
    }

    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn is_finished(&self) -> bool {
        self.phase().is_some_and(Phase::is_terminal)
    }

    pub fn cancel_requested(&self) -> bool {
        self.spec.cancel == Some(true)
    }
}

/// A tenant of the REST API: an API key's label, a DNS label.
pub fn is_api_tenant(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Every CRD, with the file it is checked in as (in `crds/`, copied into the chart).
pub fn crds() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    let yaml = |crd| {
        let mut out = String::from(
            "# Generated by `cargo run -p codeinterp-crds --bin crdgen -- crds`; do not edit.\n",
        );
        out.push_str(&serde_yaml::to_string(&crd).expect("CRD serializes"));
        out
    };
    vec![
        ("coderun.yaml", yaml(CodeRun::crd())),
        ("runnerpool.yaml", yaml(RunnerPool::crd())),
        ("codecontainer.yaml", yaml(CodeContainer::crd())),
    ]
}
