//! The reconciler's choice of the next step for a run, as a pure function of what is known
//! about it: the run, its pod (only a pod the run owns), and whether this operator is already
//! reading its record. Tested as a table.
use std::time::Duration;

use codeinterp_crds::{CodeRun, Phase, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::outcome::{PodProgress, progress};

/// The settings the choice depends on.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub start_timeout_secs: u64,
    pub queue_timeout_secs: u64,
    /// The operator's default TTL of finished runs (a run may set its own).
    pub ttl_secs: u64,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The run is being deleted: its pod goes with it (owner reference).
    Nothing,
    /// Finished: remove what is left of its pod; delete the run once its TTL has passed.
    Collect {
        delete_run: bool,
        recheck_in: Duration,
    },
    /// No pod yet: ask for room (and then create or claim one).
    Admit,
    /// Cancelled before its program started: end it without running it.
    CancelUnstarted,
    /// Cancelled while its program runs: stop it, keeping what it printed.
    StopProgram { also_read: bool },
    /// It can never finish: end it with this reason.
    Fail { reason: Reason, message: String },
    /// Its pod runs or has ended, and nobody reads its record yet.
    Read,
    /// Nothing to do until something changes, or this long has passed.
    Wait(Duration),
}

fn age_secs(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: i64) -> u64 {
    t.map(|t| (now - t.0.as_second()).max(0) as u64)
        .unwrap_or(0)
}

pub fn decide(run: &CodeRun, pod: Option<&Pod>, reading: bool, now: i64, timing: Timing) -> Step {
    let status = run.status.clone().unwrap_or_default();
    if run.metadata.deletion_timestamp.is_some() {
        return Step::Nothing;
    }
    if run.is_finished() {
        let ttl = run
            .spec
            .ttl_seconds_after_finished
            .unwrap_or(timing.ttl_secs);
        let age = age_secs(
            status
                .completed_at
                .as_ref()
                .or(run.metadata.creation_timestamp.as_ref()),
            now,
        );
        return Step::Collect {
            delete_run: age >= ttl,
            recheck_in: Duration::from_secs(ttl.saturating_sub(age) + 1),
        };
    }
    let cancel = run.cancel_requested();
    // The job is handed over before the Running status is written: a run being read by this
    // operator may have a running program whatever its status says.
    let delivered = reading || status.phase == Some(Phase::Running);
    if reading {
        return if cancel {
            Step::StopProgram { also_read: false }
        } else {
            Step::Wait(Duration::from_secs(300))
        };
    }
    let Some(pod) = pod else {
        if cancel {
            return Step::CancelUnstarted;
        }
        if status.pod_name.is_some() {
            return Step::Fail {
                reason: Reason::PodFailed,
                message: "the runner pod was deleted before the run finished".into(),
            };
        }
        let waited = age_secs(run.metadata.creation_timestamp.as_ref(), now);
        if waited >= timing.queue_timeout_secs {
            return Step::Fail {
                reason: Reason::QueueTimeout,
                message: format!("no room for the run within {}s", timing.queue_timeout_secs),
            };
        }
        return Step::Admit;
    };
    let pod_age = age_secs(pod.creation_timestamp().as_ref(), now);
    match progress(pod, pod_age, timing.start_timeout_secs) {
        PodProgress::Stuck { .. } | PodProgress::Waiting if cancel => Step::CancelUnstarted,
        PodProgress::Stuck { reason, message } => Step::Fail { reason, message },
        PodProgress::Waiting => Step::Wait(Duration::from_secs(
            timing.start_timeout_secs.saturating_sub(pod_age).max(1),
        )),
        PodProgress::Running { .. } if cancel && delivered => Step::StopProgram { also_read: true },
        PodProgress::Running { .. } if cancel => Step::CancelUnstarted,
        PodProgress::Running { .. } | PodProgress::Finished { .. } => Step::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeRunSpec, CodeRunStatus, Language};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    const NOW: i64 = 10_000;
    const TIMING: Timing = Timing {
        start_timeout_secs: 120,
        queue_timeout_secs: 900,
        ttl_secs: 3600,
    };

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn run(phase: Option<Phase>, cancel: bool, pod_name: bool) -> CodeRun {
        let mut r = CodeRun::new(
            "r",
            CodeRunSpec {
                language: Language::Python,
                code: "1".into(),
                stdin: None,
                args: vec![],
                files: vec![],
                limits: Default::default(),
                ttl_seconds_after_finished: None,
                cancel: cancel.then_some(true),
            },
        );
        r.metadata.creation_timestamp = Some(t(NOW - 10));
        r.status = Some(CodeRunStatus {
            phase,
            pod_name: pod_name.then(|| "r".into()),
            completed_at: phase.filter(|p| p.is_terminal()).map(|_| t(NOW - 10)),
            ..Default::default()
        });
        r
    }

    fn pod(state: &str) -> Pod {
        let cs = |s: ContainerState| ContainerStatus {
            name: "runner".into(),
            state: Some(s),
            ..Default::default()
        };
        let (phase, container) = match state {
            "pending" => ("Pending", None),
            "pulling" => (
                "Pending",
                Some(cs(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ErrImageNeverPull".into()),
                        message: None,
                    }),
                    ..Default::default()
                })),
            ),
            "running" => (
                "Running",
                Some(cs(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(t(NOW - 1)),
                    }),
                    ..Default::default()
                })),
            ),
            "ended" => (
                "Succeeded",
                Some(cs(ContainerState {
                    terminated: Some(ContainerStateTerminated::default()),
                    ..Default::default()
                })),
            ),
            other => panic!("{other}"),
        };
        let mut p = Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: container.map(|c| vec![c]),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.creation_timestamp = Some(t(NOW - 5));
        p
    }

    fn fail(reason: Reason) -> impl Fn(&Step) -> bool {
        move |s| matches!(s, Step::Fail { reason: r, .. } if *r == reason)
    }

    #[test]
    fn the_next_step_for_each_state_of_run_and_pod() {
        use Phase::*;
        type Check = Box<dyn Fn(&Step) -> bool>;
        /// (run phase, cancel requested, podName set, pod state, being read) -> step.
        type Row = (Option<Phase>, bool, bool, Option<&'static str>, bool, Check);
        let is = |want: Step| -> Check { Box::new(move |s| *s == want) };
        let table: Vec<Row> = vec![
            (None, false, false, None, false, is(Step::Admit)),
            (Some(Queued), false, false, None, false, is(Step::Admit)),
            (None, true, false, None, false, is(Step::CancelUnstarted)),
            (
                Some(Running),
                false,
                true,
                None,
                false,
                Box::new(fail(Reason::PodFailed)),
            ),
            (
                None,
                false,
                false,
                Some("pending"),
                false,
                Box::new(|s| matches!(s, Step::Wait(d) if d.as_secs() == 115)),
            ),
            (
                None,
                true,
                false,
                Some("pending"),
                false,
                is(Step::CancelUnstarted),
            ),
            (
                None,
                false,
                false,
                Some("pulling"),
                false,
                Box::new(fail(Reason::ImagePullFailed)),
            ),
            (None, false, false, Some("running"), false, is(Step::Read)),
            (
                None,
                true,
                false,
                Some("running"),
                false,
                is(Step::CancelUnstarted),
            ),
            (
                Some(Running),
                true,
                true,
                Some("running"),
                false,
                is(Step::StopProgram { also_read: true }),
            ),
            (
                Some(Running),
                true,
                true,
                Some("running"),
                true,
                is(Step::StopProgram { also_read: false }),
            ),
            (
                Some(Running),
                false,
                true,
                Some("running"),
                true,
                Box::new(|s| matches!(s, Step::Wait(_))),
            ),
            (
                Some(Running),
                false,
                true,
                Some("ended"),
                false,
                is(Step::Read),
            ),
            (
                Some(Running),
                true,
                true,
                Some("ended"),
                false,
                is(Step::Read),
            ),
            (
                Some(Completed),
                false,
                true,
                Some("ended"),
                false,
                Box::new(|s| {
                    matches!(
                        s,
                        Step::Collect {
                            delete_run: false,
                            ..
                        }
                    )
                }),
            ),
            (
                Some(Failed),
                false,
                false,
                None,
                true,
                Box::new(|s| matches!(s, Step::Collect { .. })),
            ),
        ];
        for (i, (phase, cancel, pod_name, pod_state, reading, check)) in
            table.into_iter().enumerate()
        {
            let r = run(phase, cancel, pod_name);
            let p = pod_state.map(pod);
            let step = decide(&r, p.as_ref(), reading, NOW, TIMING);
            assert!(
                check(&step),
                "row {i}: {phase:?} cancel={cancel} pod={pod_state:?} reading={reading} -> {step:?}"
            );
        }
    }

    #[test]
    fn a_run_waiting_longer_than_the_queue_timeout_fails_with_its_own_reason() {
        let mut r = run(Some(Phase::Queued), false, false);
        r.metadata.creation_timestamp = Some(t(NOW - 901));
        assert!(fail(Reason::QueueTimeout)(&decide(
            &r, None, false, NOW, TIMING
        )));
    }

    #[test]
    fn a_pod_that_never_starts_fails_the_run_after_the_start_timeout() {
        let r = run(None, false, false);
        let mut p = pod("pending");
        p.metadata.creation_timestamp = Some(t(NOW - 121));
        assert!(fail(Reason::StartTimeout)(&decide(
            &r,
            Some(&p),
            false,
            NOW,
            TIMING
        )));
    }

    #[test]
    fn a_finished_run_is_deleted_once_its_ttl_has_passed() {
        let mut r = run(Some(Phase::Completed), false, true);
        r.spec.ttl_seconds_after_finished = Some(5);
        assert!(matches!(
            decide(&r, None, false, NOW, TIMING),
            Step::Collect {
                delete_run: true,
                ..
            }
        ));
        r.spec.ttl_seconds_after_finished = Some(60);
        assert_eq!(
            decide(&r, None, false, NOW, TIMING),
            Step::Collect {
                delete_run: false,
                recheck_in: Duration::from_secs(51)
            }
        );
    }

    #[test]
    fn a_run_being_deleted_needs_nothing() {
        let mut r = run(Some(Phase::Running), false, true);
        r.metadata.deletion_timestamp = Some(t(NOW));
        assert_eq!(decide(&r, None, false, NOW, TIMING), Step::Nothing);
    }
}
