//! Deciding what happened to a run from its pod's status and the runner's record. Pure.
use codeinterp_crds::{Phase, Usage};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use runner_protocol::RunRecord;

use crate::pod_spec::RUNNER_CONTAINER;

/// Where the runner pod is, as far as the run is concerned.
#[derive(Debug, PartialEq)]
pub enum PodProgress {
    /// Not started yet, and nothing says it never will.
    Waiting,
    /// Will never start: the reason code and a message for the user.
    Stuck {
        reason: &'static str,
        message: String,
    },
    /// The program is running since this time.
    Running {
        started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    },
    /// The container has ended; its log holds the record.
    Finished {
        terminated: Option<ContainerStateTerminated>,
        pod_reason: Option<String>,
    },
}

/// Reads a pod's status. `waited_secs` is how long the run has been waiting for a start.
pub fn progress(pod: &Pod, waited_secs: u64, start_timeout_secs: u64) -> PodProgress {
    let Some(status) = pod.status.as_ref() else {
        return PodProgress::Waiting;
    };
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == RUNNER_CONTAINER));
    let phase = status.phase.as_deref().unwrap_or("Pending");

    if let Some(state) = container.and_then(|c| c.state.as_ref()) {
        if let Some(t) = &state.terminated {
            return PodProgress::Finished {
                terminated: Some(t.clone()),
                pod_reason: status.reason.clone(),
            };
        }
        if let Some(r) = &state.running {
            return PodProgress::Running {
                started_at: r.started_at.clone(),
            };
        }
        if let Some(w) = &state.waiting {
            let reason = w.reason.as_deref().unwrap_or("");
            let message = w.message.clone().unwrap_or_else(|| reason.to_string());
            match reason {
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName" => {
                    return PodProgress::Stuck {
                        reason: "image_pull_failed",
                        message,
                    };
                }
                "CreateContainerConfigError"
                | "CreateContainerError"
                | "RunContainerError"
                | "CrashLoopBackOff" => {
                    return PodProgress::Stuck {
                        reason: "pod_failed",
                        message,
                    };
                }
                _ => {}
            }
        }
    }
    if phase == "Failed" || phase == "Succeeded" {
        // Ended before the container ever ran (evicted, deadline while pulling, rejected
        // by the kubelet's admission, e.g. an AppArmor profile the node cannot enforce).
        return PodProgress::Finished {
            terminated: None,
            pod_reason: status.reason.clone(),
        };
    }
    if waited_secs >= start_timeout_secs {
        let unschedulable = status.conditions.as_ref().and_then(|cs| {
            cs.iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        });
        return match unschedulable {
            Some(c) => PodProgress::Stuck {
                reason: "unschedulable",
                message: c
                    .message
                    .clone()
                    .unwrap_or_else(|| "no node can run the pod".into()),
            },
            None => PodProgress::Stuck {
                reason: "start_timeout",
                message: format!("the runner pod did not start within {start_timeout_secs}s"),
            },
        };
    }
    PodProgress::Waiting
}

/// The final verdict on a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub phase: Phase,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub usage: Usage,
}

impl Outcome {
    pub fn failed(reason: &str, message: impl Into<String>) -> Self {
        Outcome::without_record(Phase::Failed, reason, message)
    }

    pub fn without_record(phase: Phase, reason: &str, message: impl Into<String>) -> Self {
        Outcome {
            phase,
            reason: Some(reason.to_string()),
            message: Some(message.into()),
            exit_code: None,
            signal: None,
            usage: Usage::default(),
        }
    }
}

/// Decides the outcome of a run whose container has ended, from the runner's record (when it
/// could be read) and what the kubelet says about the container and the pod.
pub fn decide(
    record: Option<&RunRecord>,
    terminated: Option<&ContainerStateTerminated>,
    pod_reason: Option<&str>,
    cancel_requested: bool,
) -> Outcome {
    let container_reason = terminated.and_then(|t| t.reason.as_deref());
    let exit = record.and_then(|r| r.exit.as_ref());
    let Some(exit) = exit else {
        // No exit report: the wrapper itself was stopped before it could write one.
        return if container_reason == Some("OOMKilled") {
            Outcome::failed("oom_killed", "the sandbox ran out of memory")
        } else if cancel_requested {
            Outcome::without_record(Phase::Cancelled, "cancelled", "the run was cancelled")
        } else if pod_reason == Some("DeadlineExceeded") {
            Outcome::without_record(
                Phase::TimedOut,
                "deadline_exceeded",
                "the pod's deadline (the backstop) ended the run",
            )
        } else {
            let detail = match (container_reason, record.map(|r| r.diagnostics.join("; "))) {
                (_, Some(d)) if !d.is_empty() => d,
                (Some(r), _) => format!("runner container ended ({r}) without a result"),
                (None, _) => format!(
                    "runner pod ended ({}) without a result",
                    pod_reason.unwrap_or("unknown reason")
                ),
            };
            Outcome::failed("pod_failed", detail)
        };
    };
    let usage = Usage {
        wall_ms: exit.wall_ms,
        cpu_ms: exit.cpu_ms,
        memory_peak_bytes: exit.memory_peak_bytes,
    };
    let (phase, reason, message) = if exit.timed_out {
        (
            Phase::TimedOut,
            Some("timed_out"),
            Some("the program ran past its timeout".to_string()),
        )
    } else if exit.cancelled || (cancel_requested && exit.exit_code.is_none()) {
        // The wrapper was told to stop (SIGTERM): by a cancel, by the pod's backstop
        // deadline, or by someone deleting the pod.
        if cancel_requested {
            (
                Phase::Cancelled,
                Some("cancelled"),
                Some("the run was cancelled".to_string()),
            )
        } else if pod_reason == Some("DeadlineExceeded") {
            (
                Phase::TimedOut,
                Some("deadline_exceeded"),
                Some("the pod's deadline (the backstop) ended the run".to_string()),
            )
        } else {
            (
                Phase::Failed,
                Some("pod_failed"),
                Some("the runner pod was stopped before the program finished".to_string()),
            )
        }
    } else if exit.oom_killed || container_reason == Some("OOMKilled") {
        (
            Phase::Failed,
            Some("oom_killed"),
            Some("the program ran out of memory".to_string()),
        )
    } else if exit.cpu_limit_exceeded {
        (
            Phase::Failed,
            Some("cpu_limit_exceeded"),
            Some("the program used up its CPU time".to_string()),
        )
    } else if exit.file_size_exceeded {
        (
            Phase::Failed,
            Some("output_limit_exceeded"),
            Some("the program wrote a file past the size limit".to_string()),
        )
    } else if let Some(err) = &exit.error {
        (Phase::Failed, Some("runner_error"), Some(err.clone()))
    } else if record.is_some_and(|r| r.artifact_limit_exceeded) {
        let skipped = record.map(|r| r.skipped.len()).unwrap_or(0);
        (
            Phase::Failed,
            Some("artifact_limit_exceeded"),
            Some(format!(
                "{skipped} output file(s) over the limits were not kept"
            )),
        )
    } else {
        (Phase::Completed, None, None)
    };
    Outcome {
        phase,
        reason: reason.map(str::to_string),
        message,
        exit_code: exit.exit_code,
        signal: exit.signal,
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_protocol::ExitReport;

    fn record(exit: ExitReport) -> RunRecord {
        RunRecord {
            started: true,
            exit: Some(exit),
            complete: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_program_that_exits_by_itself_is_completed_whatever_its_code() {
        let r = record(ExitReport {
            exit_code: Some(3),
            ..Default::default()
        });
        let o = decide(Some(&r), None, None, false);
        assert_eq!((o.phase, o.exit_code), (Phase::Completed, Some(3)));
    }

    #[test]
    fn timeout_oom_and_cancel_are_told_apart() {
        let t = record(ExitReport {
            timed_out: true,
            signal: Some(9),
            ..Default::default()
        });
        assert_eq!(decide(Some(&t), None, None, false).phase, Phase::TimedOut);
        let oom = record(ExitReport {
            oom_killed: true,
            signal: Some(9),
            ..Default::default()
        });
        let o = decide(Some(&oom), None, None, false);
        assert_eq!(
            (o.phase, o.reason.as_deref()),
            (Phase::Failed, Some("oom_killed"))
        );
        let c = record(ExitReport {
            cancelled: true,
            signal: Some(9),
            ..Default::default()
        });
        assert_eq!(decide(Some(&c), None, None, true).phase, Phase::Cancelled);
    }

    #[test]
    fn a_container_oom_killed_before_any_report_is_an_oom_failure() {
        let t = ContainerStateTerminated {
            reason: Some("OOMKilled".into()),
            exit_code: 137,
            ..Default::default()
        };
        let o = decide(None, Some(&t), None, false);
        assert_eq!(o.reason.as_deref(), Some("oom_killed"));
    }

    #[test]
    fn the_backstop_deadline_without_a_report_is_a_timeout() {
        let o = decide(None, None, Some("DeadlineExceeded"), false);
        assert_eq!(o.phase, Phase::TimedOut);
    }

    #[test]
    fn output_files_over_the_caps_fail_the_run_but_keep_the_exit_code() {
        let mut r = record(ExitReport {
            exit_code: Some(0),
            ..Default::default()
        });
        r.artifact_limit_exceeded = true;
        let o = decide(Some(&r), None, None, false);
        assert_eq!(
            (o.phase, o.reason.as_deref(), o.exit_code),
            (Phase::Failed, Some("artifact_limit_exceeded"), Some(0))
        );
    }

    #[test]
    fn image_pull_errors_and_long_waits_are_stuck() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
        };
        let waiting = |reason: &str| Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: RUNNER_CONTAINER.into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            progress(&waiting("ErrImageNeverPull"), 0, 120),
            PodProgress::Stuck {
                reason: "image_pull_failed",
                ..
            }
        ));
        assert_eq!(
            progress(&waiting("ContainerCreating"), 5, 120),
            PodProgress::Waiting
        );
        let unschedulable = Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/1 nodes are available: Insufficient memory.".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(progress(&unschedulable, 10, 120), PodProgress::Waiting);
        assert!(matches!(
            progress(&unschedulable, 121, 120),
            PodProgress::Stuck {
                reason: "unschedulable",
                ..
            }
        ));
    }
}
