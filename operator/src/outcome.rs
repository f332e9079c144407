//! Deciding what happened to a run from its pod's status and the runner's record. Pure.
use codeinterp_crds::{Phase, Reason, Usage};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use runner_protocol::Record;

use crate::pod_spec::RUNNER_CONTAINER;

/// Where the runner pod is, as far as the run is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum PodProgress {
    /// Not started yet, and nothing says it never will.
    Waiting,
    /// Will never start: the reason and a message for the user.
    Stuck { reason: Reason, message: String },
    /// The runner container is running (waiting for its job, or running it).
    Running { started_at: Option<Time> },
    /// The container has ended; its log holds the record.
    Finished {
        terminated: Option<ContainerStateTerminated>,
        pod_reason: Option<String>,
    },
}

/// Reads a pod's status. `waited_secs` is how long the pod has existed.
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
                        reason: Reason::ImagePullFailed,
                        message,
                    };
                }
                "CreateContainerConfigError"
                | "CreateContainerError"
                | "RunContainerError"
                | "CrashLoopBackOff" => {
                    return PodProgress::Stuck {
                        reason: Reason::PodFailed,
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
                reason: Reason::Unschedulable,
                message: c
                    .message
                    .clone()
                    .unwrap_or_else(|| "no node can run the pod".into()),
            },
            None => PodProgress::Stuck {
                reason: Reason::StartTimeout,
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
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub usage: Option<Usage>,
    /// The program ran in an interpreter started before its job.
    pub preloaded: bool,
}

impl Outcome {
    /// Ended for `reason`, in the phase the reason implies.
    pub fn ended(reason: Reason, message: impl Into<String>) -> Self {
        Outcome {
            phase: reason.phase(),
            reason: Some(reason),
            message: Some(message.into()),
            exit_code: None,
            signal: None,
            usage: None,
            preloaded: false,
        }
    }

    pub fn completed(exit_code: Option<i32>) -> Self {
        Outcome {
            phase: Phase::Completed,
            reason: None,
            message: None,
            exit_code,
            signal: None,
            usage: None,
            preloaded: false,
        }
    }
}

/// Decides the outcome of a run whose record has ended (its end frame arrived, or its stream
/// ended without one), from the record and what the kubelet says about the container and
/// the pod (when it has ended too).
pub fn judge(
    record: Option<&Record>,
    terminated: Option<&ContainerStateTerminated>,
    pod_reason: Option<&str>,
    cancel_requested: bool,
) -> Outcome {
    let container_reason = terminated.and_then(|t| t.reason.as_deref());
    let Some(exit) = record.and_then(|r| r.exit.as_ref()) else {
        return without_exit(record, container_reason, pod_reason, cancel_requested);
    };
    let cause = if exit.cancelled || (cancel_requested && exit.exit_code.is_none()) {
        stopped(cancel_requested, pod_reason)
    } else {
        limit_or_fault(exit, record, container_reason)
    };
    let (reason, message) = match cause {
        Some((reason, message)) => (Some(reason), Some(message)),
        None => (None, None),
    };
    Outcome {
        phase: reason.map_or(Phase::Completed, Reason::phase),
        message,
        reason,
        exit_code: exit.exit_code,
        signal: exit.signal,
        usage: Some(Usage {
            wall_ms: exit.wall_ms,
            cpu_ms: exit.cpu_ms,
            memory_peak_bytes: exit.memory_peak_bytes,
        }),
        preloaded: exit.kernel,
    }
}

/// No exit report: the wrapper itself was stopped before it could write one.
fn without_exit(
    record: Option<&Record>,
    container_reason: Option<&str>,
    pod_reason: Option<&str>,
    cancel_requested: bool,
) -> Outcome {
    if container_reason == Some("OOMKilled") {
        return Outcome::ended(Reason::OomKilled, "the sandbox ran out of memory");
    }
    if cancel_requested {
        return Outcome::ended(Reason::Cancelled, "the run was cancelled");
    }
    if pod_reason == Some("DeadlineExceeded") {
        return Outcome::ended(Reason::DeadlineExceeded, BACKSTOP);
    }
    let detail = match (container_reason, record.map(|r| r.diagnostics.join("; "))) {
        (_, Some(d)) if !d.is_empty() => d,
        (Some(r), _) => format!("runner container ended ({r}) without a result"),
        (None, _) => format!(
            "runner pod ended ({}) without a result",
            pod_reason.unwrap_or("unknown reason")
        ),
    };
    Outcome::ended(Reason::PodFailed, detail)
}

const BACKSTOP: &str = "the pod's deadline (the backstop) ended the run";

/// The wrapper was told to stop (SIGTERM): by a cancel, by the pod's backstop deadline, or
/// by someone deleting the pod.
fn stopped(cancel_requested: bool, pod_reason: Option<&str>) -> Option<(Reason, String)> {
    Some(if cancel_requested {
        (Reason::Cancelled, "the run was cancelled".into())
    } else if pod_reason == Some("DeadlineExceeded") {
        (Reason::DeadlineExceeded, BACKSTOP.into())
    } else {
        (
            Reason::PodFailed,
            "the runner pod was stopped before the program finished".into(),
        )
    })
}

/// The limit that ended the program, or the fault that kept it from running; `None` when it
/// exited by itself with everything kept.
fn limit_or_fault(
    exit: &runner_protocol::ExitReport,
    record: Option<&Record>,
    container_reason: Option<&str>,
) -> Option<(Reason, String)> {
    let (reason, message) = if exit.timed_out {
        (Reason::TimedOut, "the program ran past its timeout")
    } else if exit.oom_killed || container_reason == Some("OOMKilled") {
        (Reason::OomKilled, "the program ran out of memory")
    } else if exit.cpu_limit_exceeded {
        (Reason::CpuLimitExceeded, "the program used up its CPU time")
    } else if exit.file_size_exceeded {
        (
            Reason::OutputLimitExceeded,
            "the program wrote a file past the size limit",
        )
    } else if exit.disk_full {
        (
            Reason::DiskLimitExceeded,
            "the program's /work or /tmp was full (disk_mb)",
        )
    } else if let Some(err) = &exit.error {
        return Some((Reason::RunnerError, err.clone()));
    } else if let Some(r) = record.filter(|r| r.artifact_limit_exceeded) {
        let over = r
            .skipped
            .iter()
            .filter(|s| s.reason.is_over_a_limit())
            .count();
        return Some((
            Reason::ArtifactLimitExceeded,
            format!("{over} output file(s) over the limits were not kept"),
        ));
    } else if let Some(lost) = record.and_then(lost_file) {
        return Some((
            Reason::ArtifactLost,
            format!(
                "the output file {:?} was not kept: {}",
                lost.name,
                if lost.detail.is_empty() {
                    "it could not be read back whole"
                } else {
                    &lost.detail
                }
            ),
        ));
    } else {
        return None;
    };
    Some((reason, message.into()))
}

/// The first output file the program left whole that did not come back whole: it failed or
/// changed while the wrapper read it, or its bytes were cut short on the way. Files the
/// program itself made uncollectable (links, bad names, too deep) are not lost.
fn lost_file(record: &Record) -> Option<&runner_protocol::SkippedFile> {
    use runner_protocol::SkipReason;
    record
        .skipped
        .iter()
        .find(|s| matches!(s.reason, SkipReason::Unreadable | SkipReason::CutShort))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_protocol::{ExitReport, SkipReason, SkippedFile};

    fn record(exit: ExitReport) -> Record {
        Record {
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
        let o = judge(Some(&r), None, None, false);
        assert_eq!(
            (o.phase, o.exit_code, o.reason),
            (Phase::Completed, Some(3), None)
        );
    }

    #[test]
    fn each_limit_is_told_apart() {
        let cases: Vec<(ExitReport, Reason)> = vec![
            (
                ExitReport {
                    timed_out: true,
                    signal: Some(9),
                    ..Default::default()
                },
                Reason::TimedOut,
            ),
            (
                ExitReport {
                    oom_killed: true,
                    signal: Some(9),
                    ..Default::default()
                },
                Reason::OomKilled,
            ),
            (
                ExitReport {
                    cpu_limit_exceeded: true,
                    ..Default::default()
                },
                Reason::CpuLimitExceeded,
            ),
            (
                ExitReport {
                    file_size_exceeded: true,
                    ..Default::default()
                },
                Reason::OutputLimitExceeded,
            ),
            (
                ExitReport {
                    disk_full: true,
                    exit_code: Some(1),
                    ..Default::default()
                },
                Reason::DiskLimitExceeded,
            ),
            (
                ExitReport {
                    error: Some("no python3".into()),
                    ..Default::default()
                },
                Reason::RunnerError,
            ),
        ];
        for (exit, want) in cases {
            let o = judge(Some(&record(exit)), None, None, false);
            assert_eq!((o.phase, o.reason), (want.phase(), Some(want)));
        }
        let c = record(ExitReport {
            cancelled: true,
            signal: Some(9),
            ..Default::default()
        });
        assert_eq!(
            judge(Some(&c), None, None, true).reason,
            Some(Reason::Cancelled)
        );
    }

    #[test]
    fn a_container_oom_killed_before_any_report_is_an_oom_failure() {
        let t = ContainerStateTerminated {
            reason: Some("OOMKilled".into()),
            exit_code: 137,
            ..Default::default()
        };
        let o = judge(None, Some(&t), None, false);
        assert_eq!(o.reason, Some(Reason::OomKilled));
    }

    #[test]
    fn the_backstop_deadline_without_a_report_is_a_timeout() {
        let o = judge(None, None, Some("DeadlineExceeded"), false);
        assert_eq!(o.phase, Phase::TimedOut);
    }

    #[test]
    fn output_files_over_the_caps_fail_the_run_but_keep_the_exit_code() {
        let mut r = record(ExitReport {
            exit_code: Some(0),
            ..Default::default()
        });
        r.artifact_limit_exceeded = true;
        r.skipped.push(SkippedFile {
            name: "x".into(),
            reason: SkipReason::TooLarge,
            detail: String::new(),
        });
        let o = judge(Some(&r), None, None, false);
        assert_eq!(
            (o.phase, o.reason, o.exit_code),
            (Phase::Failed, Some(Reason::ArtifactLimitExceeded), Some(0))
        );
        assert!(o.message.unwrap().starts_with("1 output file"));
    }

    #[test]
    fn an_output_file_that_did_not_come_back_whole_fails_the_run_and_is_named() {
        let with = |reason| {
            let mut r = record(ExitReport {
                exit_code: Some(0),
                ..Default::default()
            });
            r.skipped.push(SkippedFile {
                name: "model.bin".into(),
                reason,
                detail: "changed while being collected: cut short".into(),
            });
            judge(Some(&r), None, None, false)
        };
        for reason in [SkipReason::CutShort, SkipReason::Unreadable] {
            let o = with(reason);
            assert_eq!(
                (o.phase, o.reason, o.exit_code),
                (Phase::Failed, Some(Reason::ArtifactLost), Some(0)),
                "{reason:?}"
            );
            let message = o.message.unwrap();
            assert!(message.contains("\"model.bin\""), "{message}");
            assert!(message.contains("cut short"), "{message}");
        }
        // What the program made uncollectable itself is refused, not lost.
        for reason in [
            SkipReason::NotAFile,
            SkipReason::InvalidName,
            SkipReason::NotWalked,
        ] {
            assert_eq!(with(reason).reason, None, "{reason:?}");
        }
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
                reason: Reason::ImagePullFailed,
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
                reason: Reason::Unschedulable,
                ..
            }
        ));
    }
}
