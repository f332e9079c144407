//! The `CodeContainer` custom resource: a sandbox that keeps a live interpreter per language
//! and its files between runs (OpenAI's containers), until it has been idle too long. Runs
//! name it in `spec.container` and execute in it one at a time, in order. Its files are
//! changed through `spec.fileOps` (the REST API appends an upload or a removal; the operator
//! carries it out in order and says how far it got in `status.fileOpsDone`), and by the runs
//! themselves; object storage keeps a copy of every file, so a container whose pod is lost
//! gets its files back.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// OpenAI's memory sizes of a container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MemoryLimit {
    #[default]
    #[serde(rename = "1g")]
    OneGig,
    #[serde(rename = "4g")]
    FourGig,
    #[serde(rename = "16g")]
    SixteenGig,
    #[serde(rename = "64g")]
    SixtyFourGig,
}

impl MemoryLimit {
    pub const ALL: [MemoryLimit; 4] = [
        MemoryLimit::OneGig,
        MemoryLimit::FourGig,
        MemoryLimit::SixteenGig,
        MemoryLimit::SixtyFourGig,
    ];

    pub fn mb(self) -> u64 {
        match self {
            MemoryLimit::OneGig => 1024,
            MemoryLimit::FourGig => 4 * 1024,
            MemoryLimit::SixteenGig => 16 * 1024,
            MemoryLimit::SixtyFourGig => 64 * 1024,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemoryLimit::OneGig => "1g",
            MemoryLimit::FourGig => "4g",
            MemoryLimit::SixteenGig => "16g",
            MemoryLimit::SixtyFourGig => "64g",
        }
    }
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemoryLimit::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a memory limit: one of 1g, 4g, 16g, 64g"))
    }
}

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "codeinterp.dev",
    version = "v1alpha1",
    kind = "CodeContainer",
    namespaced,
    status = "CodeContainerStatus",
    shortname = "ccontainer",
    category = "codeinterp",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memoryLimit"}"#,
    printcolumn = r#"{"name":"Runs","type":"integer","jsonPath":".status.runs"}"#,
    printcolumn = r#"{"name":"Last Active","type":"date","jsonPath":".status.lastActiveAt"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","priority":1}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("a CodeContainer's name must be at most 63 characters (it names its pod)")
)]
#[serde(rename_all = "camelCase")]
// Only the file operations and `stop` change after creation; the rules sit on the spec so
// that a field absent before (or now) is caught too.
#[x_kube(validation = Rule::new("has(self.memoryLimit) == has(oldSelf.memoryLimit) && (!has(self.memoryLimit) || self.memoryLimit == oldSelf.memoryLimit)").message("memoryLimit is immutable"))]
#[x_kube(validation = Rule::new("has(self.idleMinutes) == has(oldSelf.idleMinutes) && (!has(self.idleMinutes) || self.idleMinutes == oldSelf.idleMinutes)").message("idleMinutes is immutable"))]
#[x_kube(validation = Rule::new("has(self.displayName) == has(oldSelf.displayName) && (!has(self.displayName) || self.displayName == oldSelf.displayName)").message("displayName is immutable"))]
pub struct CodeContainerSpec {
    /// A name for people (OpenAI's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[serde(default)]
    pub memory_limit: MemoryLimit,
    /// Minutes without a run or a file change after which the container expires (its pod
    /// goes; its files stay listed, a run to it is refused).
    #[serde(default = "default_idle_minutes")]
    #[schemars(range(min = 1, max = 1440))]
    pub idle_minutes: u32,
    /// Changes to the container's files, in order (`seq` increasing): the operator carries
    /// out those above `status.fileOpsDone`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub file_ops: Vec<FileOp>,
    /// Set to true to end the container now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<bool>,
}

fn default_idle_minutes() -> u32 {
    20
}

/// One change to a container's files.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'Put' || has(self.fileId)").message("a Put names the stored file (fileId)"))]
pub struct FileOp {
    pub seq: u64,
    pub kind: FileOpKind,
    /// Under the container's folder (`/mnt/data`), relative.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// For a `Put`: the container file in object storage whose bytes go there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub file_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FileOpKind {
    Put,
    Delete,
}

/// Where a container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ContainerPhase {
    /// Its pod is being made (or claimed) and connected.
    Starting,
    /// Ready for runs.
    Running,
    /// Idle past its `idleMinutes` (or past the longest a container may live): its pod went.
    Expired,
    /// Ended on request (`stop`, a REST `DELETE`).
    Stopped,
    /// It cannot run (refused settings, a pod that cannot start).
    Failed,
}

impl ContainerPhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ContainerPhase::Expired | ContainerPhase::Stopped | ContainerPhase::Failed
        )
    }

    /// OpenAI's spelling (`status` of a container object).
    pub fn as_api_status(self) -> &'static str {
        match self {
            ContainerPhase::Starting | ContainerPhase::Running => "running",
            ContainerPhase::Expired => "expired",
            ContainerPhase::Stopped => "deleted",
            ContainerPhase::Failed => "failed",
        }
    }
}

/// A file change that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileOpError {
    pub seq: u64,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeContainerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ContainerPhase>,
    /// Why it expired, stopped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The pod the container's interpreters live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The last run or file change (the idle clock starts here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<Time>,
    /// Runs finished in it.
    #[serde(default)]
    pub runs: u64,
    /// The highest `spec.fileOps[].seq` carried out (or failed: see `fileOpErrors`).
    #[serde(default)]
    pub file_ops_done: u64,
    /// The latest file changes that failed (a few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_op_errors: Vec<FileOpError>,
    /// Languages whose interpreter lost its state (restarted) and when, most recent last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl CodeContainer {
    pub fn phase(&self) -> Option<ContainerPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn is_ended(&self) -> bool {
        self.phase().is_some_and(ContainerPhase::is_terminal)
    }

    /// The tenant label as set (honoured only where the REST API creates containers; see
    /// [`crate::CodeRun::tenant_in`]).
    pub fn tenant_in(&self, rest_namespace: &str) -> String {
        let ns = self.metadata.namespace.as_deref().unwrap_or_default();
        let label = self
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::TENANT_LABEL));
        match label {
            Some(label) if ns == rest_namespace && crate::is_api_tenant(label) => label.clone(),
            _ => format!("{}{ns}", crate::NAMESPACE_TENANT_PREFIX),
        }
    }
}
