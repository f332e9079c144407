use serde::{Deserialize, Serialize};

/// A run's limits with every value decided (defaults filled in, clamped to the operator's
/// maxima). The job carries them to the wrapper, which enforces the ones it can (time, CPU,
/// output, files, processes); the operator sizes the pod from them and applies the output
/// caps again when it reads the record back, whatever the wrapper claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveLimits {
    /// Wall clock, from the moment the program starts.
    pub timeout_ms: u64,
    /// Memory of the program and everything it starts (the pod's cgroup).
    pub memory_mb: u64,
    /// CPU time (RLIMIT_CPU, whole seconds rounded up, plus the wrapper's own check).
    pub cpu_ms: u64,
    /// CPU share while it runs.
    pub cpu_millicores: u64,
    /// Per stream: stdout and stderr are each cut after this many bytes.
    pub max_output_bytes: u64,
    /// Output files collected from `/work/outputs`.
    pub max_artifacts: u32,
    pub max_artifact_bytes: u64,
    pub max_artifact_total_bytes: u64,
    /// Processes (and threads) the program may have at once; the pod's pids limit backs it up.
    pub max_processes: u64,
    /// Size of `/work`, and separately of `/tmp`: memory-backed volumes the kernel caps.
    pub disk_mb: u64,
}

/// Files the program may hold open at once (RLIMIT_NOFILE).
pub const MAX_OPEN_FILES: u64 = 256;

impl EffectiveLimits {
    /// RLIMIT_FSIZE, a backstop a little over the volumes' size: a file in `/work` or `/tmp`
    /// meets the volume's own cap first (ENOSPC, reported as the disk limit), never this.
    pub fn max_file_bytes(&self) -> u64 {
        self.disk_mb.saturating_add(1).saturating_mul(1024 * 1024)
    }

    /// Bytes one run may hand over as input files: what fits in `/work`.
    pub fn max_input_bytes(&self) -> u64 {
        self.disk_mb.saturating_mul(1024 * 1024)
    }
}
