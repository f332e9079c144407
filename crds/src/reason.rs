//! Why a run ended the way it did: one enum, its wire spelling (`status.reason` in the
//! CodeRun, `error.code` in the REST API) and its meaning in one place. The README's table of
//! reason codes is checked against [`Reason::ALL`] by a test.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Phase;

macro_rules! reasons {
    ($($variant:ident = $code:literal => $phase:ident, $meaning:literal;)*) => {
        /// Machine-readable cause of a run's final phase.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum Reason {
            $(
                #[doc = $meaning]
                #[serde(rename = $code)]
                $variant,
            )*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $code,)* }
            }

            /// The phase a run ends in for this reason.
            pub fn phase(self) -> Phase {
                match self { $(Reason::$variant => Phase::$phase,)* }
            }

            /// For a person: what happened.
            pub fn meaning(self) -> &'static str {
                match self { $(Reason::$variant => $meaning,)* }
            }
        }
    };
}

reasons! {
    Cancelled = "cancelled" => Cancelled, "The run was cancelled (what it printed so far is kept).";
    TimedOut = "timed_out" => TimedOut, "The program ran past its `timeout_ms` and was killed.";
    DeadlineExceeded = "deadline_exceeded" => TimedOut, "The pod's backstop deadline ended it before the wrapper's own clock could.";
    OomKilled = "oom_killed" => Failed, "The program ran out of memory (`memory_mb`).";
    CpuLimitExceeded = "cpu_limit_exceeded" => Failed, "The program used up its CPU time (`cpu_ms`).";
    OutputLimitExceeded = "output_limit_exceeded" => Failed, "The program grew a single file past RLIMIT_FSIZE (a backstop just over `disk_mb`).";
    DiskLimitExceeded = "disk_limit_exceeded" => Failed, "`/work` or `/tmp` was full (`disk_mb`) and the program failed.";
    ArtifactLimitExceeded = "artifact_limit_exceeded" => Failed, "Output files over `max_artifacts`, `max_artifact_bytes` or `max_artifact_total_bytes` were left out.";
    ArtifactLost = "artifact_lost" => Failed, "An output file could not be read back whole (it failed or changed while being collected, or its bytes were cut short on the way): it was left out, the others were kept, and the message names it.";
    StorageQuotaExceeded = "storage_quota_exceeded" => Failed, "The output files would have taken the tenant past its storage quota (`STORAGE_QUOTA_MB`): none was kept (exit code, stdout and stderr were).";
    RunnerError = "runner_error" => Failed, "The wrapper could not run the program (no interpreter, a broken job).";
    InvalidRunnerOutput = "invalid_runner_output" => Failed, "The runner's record failed validation.";
    RecordLost = "record_lost" => Failed, "The operator changed leaders while the program ran and the record could not be read back: it (its output files) was larger than the pod's log keeps, or, in a container, the run ended before the new leader attached (it is never run twice).";
    InvalidInput = "invalid_input" => Failed, "An input file could not be resolved (unknown `fileId`, bad base64).";
    InputsTooLarge = "inputs_too_large" => Failed, "The inputs are over what a run may be given.";
    JobDeliveryFailed = "job_delivery_failed" => Failed, "The job could not be handed to the runner pod.";
    PodFailed = "pod_failed" => Failed, "The runner pod failed or was deleted before the run finished.";
    PodRejected = "pod_rejected" => Failed, "The cluster refused the runner pod (admission, quota, invalid value).";
    ImagePullFailed = "image_pull_failed" => Failed, "The runner image could not be pulled.";
    Unschedulable = "unschedulable" => Failed, "No node can ever run the pod.";
    StartTimeout = "start_timeout" => Failed, "The runner pod did not start within `START_TIMEOUT_SECONDS`.";
    ApparmorUnavailable = "apparmor_unavailable" => Failed, "AppArmor is required but the nodes do not enforce it.";
    NameConflict = "name_conflict" => Failed, "An object the run needs to create already exists and is not the run's: nothing was touched.";
    StorageFailed = "storage_failed" => Failed, "The results could not be written to object storage.";
    StatusRejected = "status_rejected" => Failed, "The API server refused the run's status for good.";
    QueueFull = "queue_full" => Failed, "The tenant already had as many runs waiting as it may.";
    QueueTimeout = "queue_timeout" => Failed, "The run waited for room longer than `QUEUE_TIMEOUT_SECONDS`.";
    ContainerNotFound = "container_not_found" => Failed, "The run names a container that does not exist (or is another tenant's): the operator's cache has listed the containers, the run is over 10 s old, and the API server, asked then, has none of that name for the run's tenant and shard.";
    ContainerExpired = "container_expired" => Failed, "The run's container expired or was deleted before the run could start.";
    InterpreterLost = "interpreter_lost" => Failed, "The container's interpreter ended during the run (out of memory, `os._exit`, a fatal error) or could not be interrupted at the timeout: it starts afresh for the next run, the files stay.";
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reason {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_wire_spelling() {
        for r in Reason::ALL {
            let json = serde_json::to_value(r).unwrap();
            assert_eq!(json, serde_json::json!(r.as_str()));
            assert_eq!(serde_json::from_value::<Reason>(json).unwrap(), *r);
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), *r);
            assert!(r.phase().is_terminal());
            assert_ne!(
                r.phase(),
                Phase::Completed,
                "{r}: a reason is never a success"
            );
        }
    }

    #[test]
    fn the_codes_of_records_written_before_the_enum_still_parse() {
        for code in [
            "cancelled",
            "timed_out",
            "deadline_exceeded",
            "oom_killed",
            "cpu_limit_exceeded",
            "output_limit_exceeded",
            "artifact_limit_exceeded",
            "runner_error",
            "invalid_runner_output",
            "invalid_input",
            "inputs_too_large",
            "pod_failed",
            "pod_rejected",
            "image_pull_failed",
            "unschedulable",
            "start_timeout",
            "apparmor_unavailable",
            "storage_failed",
        ] {
            assert!(code.parse::<Reason>().is_ok(), "{code}");
        }
    }
}
