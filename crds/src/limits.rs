//! Per-run limits: what a CodeRun may ask for, the defaults, and the clamp to operator-wide
//! maxima. Pure functions, shared by the operator and the REST API. The decided values are
//! [`EffectiveLimits`], the type the job carries to the wrapper.
use kube::KubeSchema;
pub use runner_protocol::EffectiveLimits;
use serde::{Deserialize, Serialize};

/// Limits a run asks for; unset ones take the operator's defaults. Bounds in the schema are
/// the hard ceiling of the product; an operator may set lower maxima.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Wall-clock limit from the moment the program starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600000))]
    pub timeout_ms: Option<u64>,
    /// Memory limit of the sandbox (the program, its children and the wrapper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 8192))]
    pub memory_mb: Option<u64>,
    /// CPU time the program may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600000))]
    pub cpu_ms: Option<u64>,
    /// CPU share while it runs, in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 4000))]
    pub cpu_millicores: Option<u64>,
    /// Bytes kept of stdout, and of stderr, each; the rest is cut and flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_output_bytes: Option<u64>,
    /// Output files collected from /work/outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub max_artifacts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1073741824))]
    pub max_artifact_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1073741824))]
    pub max_artifact_total_bytes: Option<u64>,
    /// Processes and threads the program may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 1024))]
    pub max_processes: Option<u64>,
    /// Size of the writable working directory /work (and, separately, of /tmp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub disk_mb: Option<u64>,
}

/// Operator-wide defaults and maxima.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maxima {
    pub defaults: EffectiveLimits,
    pub max: EffectiveLimits,
    /// Most bytes of input files one run may be given (they must also fit `disk_mb`).
    pub max_input_bytes: u64,
}

impl Default for Maxima {
    fn default() -> Self {
        Maxima {
            defaults: EffectiveLimits {
                timeout_ms: 30_000,
                memory_mb: 512,
                cpu_ms: 30_000,
                cpu_millicores: 1000,
                max_output_bytes: 256 * 1024,
                max_artifacts: 32,
                max_artifact_bytes: 100 * 1024 * 1024,
                max_artifact_total_bytes: 100 * 1024 * 1024,
                max_processes: 128,
                disk_mb: 64,
            },
            // Output files stream from the attach stream into object storage: as large as a
            // run's inputs may be (`MAX_INPUT_MB`).
            max: EffectiveLimits {
                timeout_ms: 300_000,
                memory_mb: 4096,
                cpu_ms: 300_000,
                cpu_millicores: 2000,
                max_output_bytes: 1024 * 1024,
                max_artifacts: 64,
                max_artifact_bytes: 100 * 1024 * 1024,
                max_artifact_total_bytes: 100 * 1024 * 1024,
                max_processes: 512,
                disk_mb: 1024,
            },
            max_input_bytes: 100 * 1024 * 1024,
        }
    }
}

impl Maxima {
    /// The defaults with the operator's ceilings on time and memory (the two a deployment
    /// sets), the defaults lowered to fit under them.
    pub fn with_ceilings(max_timeout_ms: u64, max_memory_mb: u64, max_input_mb: u64) -> Self {
        let mut m = Maxima::default();
        m.max.timeout_ms = max_timeout_ms;
        m.max.memory_mb = max_memory_mb;
        m.defaults.timeout_ms = m.defaults.timeout_ms.min(max_timeout_ms);
        m.defaults.memory_mb = m.defaults.memory_mb.min(max_memory_mb);
        m.max_input_bytes = max_input_mb.saturating_mul(1024 * 1024);
        // Output files may be as large as inputs.
        m.max.max_artifact_bytes = m.max_input_bytes;
        m.max.max_artifact_total_bytes = m.max_input_bytes;
        m.defaults.max_artifact_bytes = m.defaults.max_artifact_bytes.min(m.max_input_bytes);
        m.defaults.max_artifact_total_bytes =
            m.defaults.max_artifact_total_bytes.min(m.max_input_bytes);
        m
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("limits.{field} is {value}; the maximum is {max}")]
pub struct LimitError {
    pub field: &'static str,
    pub value: u64,
    pub max: u64,
}

impl Limits {
    /// Fills in defaults and clamps each value to the maxima (what the operator does: a
    /// CodeRun applied by hand gets the most the operator allows).
    pub fn clamp(&self, m: &Maxima) -> EffectiveLimits {
        let pick = |asked: Option<u64>, default: u64, max: u64| asked.unwrap_or(default).min(max);
        let d = &m.defaults;
        let x = &m.max;
        EffectiveLimits {
            timeout_ms: pick(self.timeout_ms, d.timeout_ms, x.timeout_ms),
            memory_mb: pick(self.memory_mb, d.memory_mb, x.memory_mb),
            cpu_ms: pick(self.cpu_ms, d.cpu_ms, x.cpu_ms),
            cpu_millicores: pick(self.cpu_millicores, d.cpu_millicores, x.cpu_millicores),
            max_output_bytes: pick(
                self.max_output_bytes,
                d.max_output_bytes,
                x.max_output_bytes,
            ),
            max_artifacts: self
                .max_artifacts
                .unwrap_or(d.max_artifacts)
                .min(x.max_artifacts),
            max_artifact_bytes: pick(
                self.max_artifact_bytes,
                d.max_artifact_bytes,
                x.max_artifact_bytes,
            ),
            max_artifact_total_bytes: pick(
                self.max_artifact_total_bytes,
                d.max_artifact_total_bytes,
                x.max_artifact_total_bytes,
            ),
            max_processes: pick(self.max_processes, d.max_processes, x.max_processes),
            disk_mb: pick(self.disk_mb, d.disk_mb, x.disk_mb),
        }
    }

    /// Refuses values over the maxima (what the REST API does: a client asking for more than
    /// it may have gets a clear 400 rather than silently less).
    pub fn check(&self, m: &Maxima) -> Result<(), LimitError> {
        let x = &m.max;
        let fields: [(&'static str, Option<u64>, u64); 10] = [
            ("timeout_ms", self.timeout_ms, x.timeout_ms),
            ("memory_mb", self.memory_mb, x.memory_mb),
            ("cpu_ms", self.cpu_ms, x.cpu_ms),
            ("cpu_millicores", self.cpu_millicores, x.cpu_millicores),
            (
                "max_output_bytes",
                self.max_output_bytes,
                x.max_output_bytes,
            ),
            (
                "max_artifacts",
                self.max_artifacts.map(u64::from),
                u64::from(x.max_artifacts),
            ),
            (
                "max_artifact_bytes",
                self.max_artifact_bytes,
                x.max_artifact_bytes,
            ),
            (
                "max_artifact_total_bytes",
                self.max_artifact_total_bytes,
                x.max_artifact_total_bytes,
            ),
            ("max_processes", self.max_processes, x.max_processes),
            ("disk_mb", self.disk_mb, x.disk_mb),
        ];
        for (field, value, max) in fields {
            if let Some(value) = value.filter(|v| *v > max) {
                return Err(LimitError { field, value, max });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_take_the_defaults() {
        let m = Maxima::default();
        assert_eq!(Limits::default().clamp(&m), m.defaults);
    }

    #[test]
    fn values_over_the_maxima_are_clamped() {
        let m = Maxima::default();
        let asked = Limits {
            timeout_ms: Some(10_000_000),
            memory_mb: Some(64),
            ..Default::default()
        };
        let got = asked.clamp(&m);
        assert_eq!(got.timeout_ms, m.max.timeout_ms);
        assert_eq!(got.memory_mb, 64);
    }

    #[test]
    fn check_names_the_first_limit_over_its_maximum() {
        let m = Maxima::default();
        let asked = Limits {
            memory_mb: Some(100_000),
            ..Default::default()
        };
        assert_eq!(
            asked.check(&m),
            Err(LimitError {
                field: "memory_mb",
                value: 100_000,
                max: 4096
            })
        );
        assert!(
            Limits {
                memory_mb: Some(128),
                ..Default::default()
            }
            .check(&m)
            .is_ok()
        );
    }
}
