//! What happened to a run, as the operator records it: the phase, the reason, conditions,
//! usage and output files. The same types make the stored run record.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Reason;

/// The lifecycle of a run. The same meanings as the REST `status`. Records written before
/// the CodeRun spelling was used in storage say `completed` and the like: both read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted; its program has not started yet (it may be waiting for room).
    #[serde(alias = "queued")]
    Queued,
    /// The program is running.
    #[serde(alias = "running")]
    Running,
    /// The program exited by itself, whatever its exit code.
    #[serde(alias = "completed")]
    Completed,
    /// The wall-clock limit ended it.
    #[serde(alias = "timed_out")]
    TimedOut,
    /// A limit killed it or the platform failed; `reason` says which.
    #[serde(alias = "failed")]
    Failed,
    /// It was cancelled.
    #[serde(alias = "cancelled")]
    Cancelled,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Queued,
        Phase::Running,
        Phase::Completed,
        Phase::TimedOut,
        Phase::Failed,
        Phase::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Phase::Queued | Phase::Running)
    }

    /// The phases a run may move to from this one; a final phase moves nowhere. (A run can
    /// end straight from Queued: cancelled, timed out in line, its pod stuck, or a short
    /// program whose Running status was never written.)
    pub fn successors(self) -> &'static [Phase] {
        use Phase::*;
        match self {
            Queued => &[Running, Completed, TimedOut, Failed, Cancelled],
            Running => &[Completed, TimedOut, Failed, Cancelled],
            Completed | TimedOut | Failed | Cancelled => &[],
        }
    }

    /// Whether a run in `self` may be written as `next` (staying put is allowed).
    pub fn may_become(self, next: Phase) -> bool {
        self == next || self.successors().contains(&next)
    }

    /// The REST API's spelling (`status`).
    pub fn as_api_status(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Running => "running",
            Phase::Completed => "completed",
            Phase::TimedOut => "timed_out",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    /// The CodeRun's spelling (`status.phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "Queued",
            Phase::Running => "Running",
            Phase::Completed => "Completed",
            Phase::TimedOut => "TimedOut",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

/// The conditions a CodeRun's status carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// Whether the run has been given room to start (False while it waits in line).
    Admitted,
    /// Whether its runner pod exists (created, or claimed from the warm pool).
    PodReady,
    /// Whether its program has started.
    Started,
    /// Whether it has reached a final phase.
    Finished,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Admitted => "Admitted",
            ConditionType::PodReady => "PodReady",
            ConditionType::Started => "Started",
            ConditionType::Finished => "Finished",
        }
    }
}

/// The `reason` of a condition (CamelCase, as Kubernetes condition reasons are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionReason {
    WaitingForCapacity,
    Admitted,
    PodCreated,
    PodClaimed,
    ProgramStarted,
    /// The pod never got the job (it ended, or its operator died handing it over); a new
    /// one is made.
    PodReplaced,
    /// The run went to its container's pod.
    ContainerPod,
    /// The run's final phase, spelled as `status.phase`.
    Ended(Phase),
}

impl ConditionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionReason::WaitingForCapacity => "WaitingForCapacity",
            ConditionReason::Admitted => "Admitted",
            ConditionReason::PodCreated => "PodCreated",
            ConditionReason::PodClaimed => "PodClaimed",
            ConditionReason::ProgramStarted => "ProgramStarted",
            ConditionReason::PodReplaced => "PodReplaced",
            ConditionReason::ContainerPod => "ContainerPod",
            ConditionReason::Ended(phase) => phase.as_str(),
        }
    }
}

/// What the program used. Records written before these names were camelCase used snake_case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(alias = "wall_ms")]
    pub wall_ms: u64,
    #[serde(alias = "cpu_ms")]
    pub cpu_ms: u64,
    #[serde(alias = "memory_peak_bytes")]
    pub memory_peak_bytes: u64,
}

/// An output file, stored in object storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRef {
    /// File id (`file-...`), served by the REST API.
    pub id: String,
    /// Path relative to /work/outputs.
    #[serde(alias = "filename")]
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// How a run got its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StartMode {
    /// A pre-started pod of the warm pool was claimed.
    Warm,
    /// A pod was created for the run.
    Cold,
    /// It ran in a container's pod, whose interpreters and files stay between runs.
    Container,
}

/// The isolation the operator actually applied to the run's pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// `Localhost/<profile>` or `RuntimeDefault`.
    pub seccomp: String,
    /// `Localhost/<profile>`, or `none` with the reason in `apparmorNote`.
    pub apparmor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor_note: Option<String>,
    /// Whether the pod ran in its own user namespace (`hostUsers: false`).
    pub user_namespace: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    pub network_policy: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Machine-readable cause of a final phase other than Completed, e.g. `oom_killed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Place in the line of runs waiting for room (1 is next), while the run is queued.
    /// Refreshed as the line moves, not on every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Wall time of the program, for `kubectl get`, e.g. `1.25s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The first bytes of stdout and stderr, with control characters shown as U+FFFD (the
    /// exact text is in object storage and the REST API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_preview: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_preview: Option<String>,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRef>,
    /// The runner pod the program runs in, written when the program starts. The operator
    /// finds the pod by what owns it (its controller owner reference), never by this name
    /// alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Warm (claimed from the pool) or cold (created for the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_mode: Option<StartMode>,
    /// The program ran in an interpreter started before its job arrived (a warm pool's
    /// waiting interpreter, its modules already imported).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preloaded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// Times the run was given a new pod because its job never reached the old one (the old
    /// pod ended, or its operator died while handing the job over). Nothing had run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// Key of the final run record in object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl CodeRunStatus {
    /// Sets a condition, keeping its transition time when nothing about it changed.
    pub fn set_condition(
        &mut self,
        type_: ConditionType,
        value: bool,
        reason: ConditionReason,
        message: &str,
        now: &Time,
    ) {
        let status = if value { "True" } else { "False" };
        let message: String = message.chars().take(1000).collect();
        let fresh = Condition {
            type_: type_.as_str().into(),
            status: status.into(),
            reason: reason.as_str().into(),
            message,
            last_transition_time: now.clone(),
            observed_generation: None,
        };
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == type_.as_str())
        {
            Some(c)
                if c.status == fresh.status
                    && c.reason == fresh.reason
                    && c.message == fresh.message => {}
            Some(c) => *c = fresh,
            None => self.conditions.push(fresh),
        }
    }

    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn both_spellings_of_a_phase_read_and_the_crd_one_is_written() {
        for p in Phase::ALL {
            let from_api: Phase =
                serde_json::from_value(serde_json::json!(p.as_api_status())).unwrap();
            let from_crd: Phase = serde_json::from_value(serde_json::json!(p.as_str())).unwrap();
            assert_eq!((from_api, from_crd), (p, p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_it_changes() {
        let t1 = Time(Timestamp::from_second(1).unwrap());
        let t2 = Time(Timestamp::from_second(2).unwrap());
        let mut s = CodeRunStatus::default();
        s.set_condition(
            ConditionType::Admitted,
            false,
            ConditionReason::WaitingForCapacity,
            "wait",
            &t1,
        );
        s.set_condition(
            ConditionType::Admitted,
            false,
            ConditionReason::WaitingForCapacity,
            "wait",
            &t2,
        );
        let c = s.condition(ConditionType::Admitted).unwrap();
        assert_eq!((c.status.as_str(), &c.last_transition_time), ("False", &t1));
        s.set_condition(
            ConditionType::Admitted,
            true,
            ConditionReason::Admitted,
            "go",
            &t2,
        );
        let c = s.condition(ConditionType::Admitted).unwrap();
        assert_eq!(
            (
                c.status.as_str(),
                c.reason.as_str(),
                &c.last_transition_time
            ),
            ("True", "Admitted", &t2)
        );
        assert_eq!(s.conditions.len(), 1);
    }
}
