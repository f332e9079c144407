//! The one place that chooses a run's next step: a pure function of the facts about it (the
//! run, its pod as the cache shows it, and what this process knows beyond the caches),
//! tested as a table whose rows are named for the behaviour they pin down.
use std::time::Duration;

use codeinterp_crds::{CodeRun, Phase, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::index::Known;
use crate::outcome::{PodProgress, progress};

/// The settings the choice depends on.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub start_timeout_secs: u64,
    pub queue_timeout_secs: u64,
    /// The operator's default TTL of finished runs (a run may set its own).
    pub ttl_secs: u64,
}

/// Everything the choice is made from.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub run: &'a CodeRun,
    /// The run's pod in the cache: only a pod whose controller is the run.
    pub pod: Option<&'a Pod>,
    /// The pod is on its way out (deleted, or this process asked for its removal).
    pub pod_leaving: bool,
    pub known: &'a Known,
    /// Seconds since the epoch.
    pub now: i64,
    pub timing: Timing,
}

/// What to do next. A step carries the objects it acts on.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The run is being deleted: its pod goes with it (owner reference).
    Nothing,
    /// Nothing to do until something changes, or this long has passed.
    Wait(Duration),
    /// Finished: remove what is left of its pod; delete the run once its TTL has passed.
    Collect {
        pod: Option<Pod>,
        delete_run: bool,
        recheck_in: Duration,
    },
    /// No pod yet: ask for room (and then create or claim one).
    Admit,
    /// Cancelled before its program started: end it, removing its pod if it has one.
    Cancel { pod: Option<Pod> },
    /// Cancelled while its program runs: stop it, keeping what it printed; `read` when
    /// nobody reads its record yet.
    Stop { pod: Pod, read: bool },
    /// It can never finish: end it with this reason.
    Fail {
        pod: Option<Pod>,
        reason: Reason,
        message: String,
    },
    /// Its pod runs (or has ended) and nobody reads its record: read it. `fresh`: this
    /// process placed the pod and never handed it the job, so the job is handed over now.
    Read { pod: Pod, fresh: bool },
    /// It runs in a container (`spec.container`), whose task runs it in turn.
    InContainer,
}

fn age_secs(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: i64) -> u64 {
    t.map(|t| (now - t.0.as_second()).max(0) as u64)
        .unwrap_or(0)
}

pub fn decide(f: &Facts) -> Step {
    let run = f.run;
    if run.metadata.deletion_timestamp.is_some() {
        return Step::Nothing;
    }
    if run.is_finished() {
        return collect(f);
    }
    if run.spec.container.is_some() && *f.known != Known::Ended {
        return Step::InContainer;
    }
    match (f.known, f.pod) {
        (Known::Ended, _) => Step::Wait(Duration::from_secs(1)),
        (Known::Reading, Some(pod)) if run.cancel_requested() => Step::Stop {
            pod: pod.clone(),
            read: false,
        },
        (Known::Reading, _) => Step::Wait(Duration::from_secs(300)),
        (Known::Placed { lagging: true, .. }, None) => Step::Wait(Duration::from_secs(1)),
        (_, None) => podless(f),
        (_, Some(pod)) => with_pod(f, pod),
    }
}

fn collect(f: &Facts) -> Step {
    let ttl = f
        .run
        .spec
        .ttl_seconds_after_finished
        .unwrap_or(f.timing.ttl_secs);
    let status = f.run.status.as_ref();
    let age = age_secs(
        status
            .and_then(|s| s.completed_at.as_ref())
            .or(f.run.metadata.creation_timestamp.as_ref()),
        f.now,
    );
    Step::Collect {
        pod: f.pod.cloned(),
        delete_run: age >= ttl,
        recheck_in: Duration::from_secs(ttl.saturating_sub(age) + 1),
    }
}

/// The program started once `Running` was written (with the pod's name).
fn program_started(run: &CodeRun) -> bool {
    run.phase() == Some(Phase::Running)
}

fn podless(f: &Facts) -> Step {
    let run = f.run;
    if run.cancel_requested() {
        return Step::Cancel { pod: None };
    }
    if program_started(run) {
        return Step::Fail {
            pod: None,
            reason: Reason::PodFailed,
            message: "the runner pod was deleted before the run finished".into(),
        };
    }
    let waited = age_secs(run.metadata.creation_timestamp.as_ref(), f.now);
    if waited >= f.timing.queue_timeout_secs {
        return Step::Fail {
            pod: None,
            reason: Reason::QueueTimeout,
            message: format!(
                "no room for the run within {}s",
                f.timing.queue_timeout_secs
            ),
        };
    }
    Step::Admit
}

fn with_pod(f: &Facts, pod: &Pod) -> Step {
    let run = f.run;
    let cancel = run.cancel_requested();
    let started = program_started(run);
    if f.pod_leaving && !started {
        // Never handed a job that ran (a restart): its deletion wakes the run, which then
        // gets a new pod.
        return if cancel {
            Step::Cancel { pod: None }
        } else {
            Step::Wait(Duration::from_secs(5))
        };
    }
    let fresh = matches!(f.known, Known::Placed { pod: name, .. } if *name == pod.name_any());
    let pod_age = age_secs(pod.creation_timestamp().as_ref(), f.now);
    let owned = Some(pod.clone());
    match progress(pod, pod_age, f.timing.start_timeout_secs) {
        PodProgress::Stuck { .. } | PodProgress::Waiting if cancel => Step::Cancel { pod: owned },
        PodProgress::Stuck { reason, message } => Step::Fail {
            pod: owned,
            reason,
            message,
        },
        PodProgress::Waiting => Step::Wait(Duration::from_secs(
            f.timing.start_timeout_secs.saturating_sub(pod_age).max(1),
        )),
        PodProgress::Running { .. } if cancel && started => Step::Stop {
            pod: pod.clone(),
            read: true,
        },
        PodProgress::Running { .. } if cancel => Step::Cancel { pod: owned },
        PodProgress::Running { .. } | PodProgress::Finished { .. } => Step::Read {
            pod: pod.clone(),
            fresh,
        },
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

    /// A run in `phase`, created 10 s ago.
    fn run(phase: Option<Phase>) -> CodeRun {
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
                cancel: None,
                container: None,
            },
        );
        r.metadata.creation_timestamp = Some(t(NOW - 10));
        r.status = Some(CodeRunStatus {
            phase,
            pod_name: (phase == Some(Phase::Running)).then(|| "r".into()),
            completed_at: phase.filter(|p| p.is_terminal()).map(|_| t(NOW - 10)),
            ..Default::default()
        });
        r
    }

    fn cancelled(mut r: CodeRun) -> CodeRun {
        r.spec.cancel = Some(true);
        r
    }

    /// The run's pod named "r", created 5 s ago, in `state`.
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
        p.metadata.name = Some("r".into());
        p.metadata.creation_timestamp = Some(t(NOW - 5));
        p
    }

    fn placed(lagging: bool) -> Known {
        Known::Placed {
            pod: "r".into(),
            lagging,
        }
    }

    /// One row: the facts, and what the step must be.
    struct Row {
        name: &'static str,
        run: CodeRun,
        pod: Option<&'static str>,
        leaving: bool,
        known: Known,
        want: fn(&Step) -> bool,
    }

    fn row(name: &'static str, run: CodeRun, pod: Option<&'static str>, known: Known) -> Row {
        Row {
            name,
            run,
            pod,
            leaving: false,
            known,
            want: |_| false,
        }
    }

    impl Row {
        fn leaving(mut self) -> Self {
            self.leaving = true;
            self
        }
        fn wants(mut self, want: fn(&Step) -> bool) -> Self {
            self.want = want;
            self
        }
    }

    fn step(r: &Row) -> Step {
        let pod = r.pod.map(pod);
        decide(&Facts {
            run: &r.run,
            pod: pod.as_ref(),
            pod_leaving: r.leaving,
            known: &r.known,
            now: NOW,
            timing: TIMING,
        })
    }

    #[test]
    fn the_next_step_for_each_state_of_run_pod_and_this_process() {
        use Known::{Ended, Nothing, Reading};
        use Phase::*;
        let rows = vec![
            row("a new run asks for room", run(None), None, Nothing).wants(|s| *s == Step::Admit),
            row("a queued run asks again", run(Some(Queued)), None, Nothing)
                .wants(|s| *s == Step::Admit),
            row(
                "a run cancelled before it had a pod ends",
                cancelled(run(None)),
                None,
                Nothing,
            )
            .wants(|s| *s == Step::Cancel { pod: None }),
            row(
                "a pod placed a moment ago that the cache lags behind is awaited",
                run(Some(Queued)),
                None,
                placed(true),
            )
            .wants(|s| *s == Step::Wait(Duration::from_secs(1))),
            row(
                "a placed pod that never showed up is replaced",
                run(Some(Queued)),
                None,
                placed(false),
            )
            .wants(|s| *s == Step::Admit),
            row(
                "a run ended here that the cache lags behind waits for it",
                run(Some(Queued)),
                Some("running"),
                Ended,
            )
            .wants(|s| *s == Step::Wait(Duration::from_secs(1))),
            row(
                "a run being read waits for its reader",
                run(Some(Running)),
                Some("running"),
                Reading,
            )
            .wants(|s| matches!(s, Step::Wait(_))),
            row(
                "a run being read is stopped, not read twice, on cancel",
                cancelled(run(Some(Running))),
                Some("running"),
                Reading,
            )
            .wants(|s| matches!(s, Step::Stop { read: false, .. })),
            row(
                "a started run whose pod vanished fails",
                run(Some(Running)),
                None,
                Nothing,
            )
            .wants(|s| {
                matches!(
                    s,
                    Step::Fail {
                        reason: Reason::PodFailed,
                        ..
                    }
                )
            }),
            row(
                "a pending pod is awaited up to the start timeout",
                run(None),
                Some("pending"),
                Nothing,
            )
            .wants(|s| *s == Step::Wait(Duration::from_secs(115))),
            row(
                "a pending pod of a cancelled run is removed with the run",
                cancelled(run(None)),
                Some("pending"),
                Nothing,
            )
            .wants(|s| matches!(s, Step::Cancel { pod: Some(_) })),
            row(
                "an image that cannot be pulled fails the run",
                run(None),
                Some("pulling"),
                Nothing,
            )
            .wants(|s| {
                matches!(
                    s,
                    Step::Fail {
                        reason: Reason::ImagePullFailed,
                        pod: Some(_),
                        ..
                    }
                )
            }),
            row(
                "a running pod placed here gets its job",
                run(Some(Queued)),
                Some("running"),
                placed(false),
            )
            .wants(|s| matches!(s, Step::Read { fresh: true, .. })),
            row(
                "a running pod placed by someone else is read from its log first",
                run(Some(Queued)),
                Some("running"),
                Nothing,
            )
            .wants(|s| matches!(s, Step::Read { fresh: false, .. })),
            row(
                "an ended pod of a started run is read",
                run(Some(Running)),
                Some("ended"),
                Nothing,
            )
            .wants(|s| matches!(s, Step::Read { fresh: false, .. })),
            row(
                "a cancelled run whose program never started ends without it",
                cancelled(run(Some(Queued))),
                Some("running"),
                Nothing,
            )
            .wants(|s| matches!(s, Step::Cancel { pod: Some(_) })),
            row(
                "a cancelled run whose program runs is stopped and read",
                cancelled(run(Some(Running))),
                Some("running"),
                Nothing,
            )
            .wants(|s| matches!(s, Step::Stop { read: true, .. })),
            row(
                "a cancelled run whose pod ended is read, for what it printed",
                cancelled(run(Some(Running))),
                Some("ended"),
                Nothing,
            )
            .wants(|s| matches!(s, Step::Read { .. })),
            row(
                "a pod being replaced (never given a job that ran) is awaited, not read",
                run(Some(Queued)),
                Some("running"),
                Nothing,
            )
            .leaving()
            .wants(|s| matches!(s, Step::Wait(_))),
            row(
                "a pod being replaced of a cancelled run ends the run",
                cancelled(run(Some(Queued))),
                Some("running"),
                Nothing,
            )
            .leaving()
            .wants(|s| *s == Step::Cancel { pod: None }),
            row(
                "a leaving pod whose program started is read while it can be",
                run(Some(Running)),
                Some("running"),
                Nothing,
            )
            .leaving()
            .wants(|s| matches!(s, Step::Read { .. })),
            row(
                "a finished run's leftovers are collected",
                run(Some(Completed)),
                Some("ended"),
                Nothing,
            )
            .wants(|s| {
                matches!(
                    s,
                    Step::Collect {
                        delete_run: false,
                        pod: Some(_),
                        ..
                    }
                )
            }),
            row(
                "a finished run is collected whatever this process knows",
                run(Some(Failed)),
                None,
                Reading,
            )
            .wants(|s| matches!(s, Step::Collect { pod: None, .. })),
        ];
        for r in &rows {
            let got = step(r);
            assert!((r.want)(&got), "{}: got {got:?}", r.name);
        }
    }

    #[test]
    fn a_run_waiting_longer_than_the_queue_timeout_fails_with_its_own_reason() {
        let mut r = row("", run(Some(Phase::Queued)), None, Known::Nothing);
        r.run.metadata.creation_timestamp = Some(t(NOW - 901));
        assert!(matches!(
            step(&r),
            Step::Fail {
                reason: Reason::QueueTimeout,
                ..
            }
        ));
    }

    #[test]
    fn a_pod_that_never_starts_fails_the_run_after_the_start_timeout() {
        let r = run(None);
        let mut p = pod("pending");
        p.metadata.creation_timestamp = Some(t(NOW - 121));
        let step = decide(&Facts {
            run: &r,
            pod: Some(&p),
            pod_leaving: false,
            known: &Known::Nothing,
            now: NOW,
            timing: TIMING,
        });
        assert!(matches!(
            step,
            Step::Fail {
                reason: Reason::StartTimeout,
                ..
            }
        ));
    }

    #[test]
    fn a_finished_run_is_deleted_once_its_ttl_has_passed() {
        let mut r = row("", run(Some(Phase::Completed)), None, Known::Nothing);
        r.run.spec.ttl_seconds_after_finished = Some(5);
        assert!(matches!(
            step(&r),
            Step::Collect {
                delete_run: true,
                ..
            }
        ));
        r.run.spec.ttl_seconds_after_finished = Some(60);
        assert_eq!(
            step(&r),
            Step::Collect {
                pod: None,
                delete_run: false,
                recheck_in: Duration::from_secs(51)
            }
        );
    }

    #[test]
    fn a_run_being_deleted_needs_nothing() {
        let mut r = row("", run(Some(Phase::Running)), None, Known::Nothing);
        r.run.metadata.deletion_timestamp = Some(t(NOW));
        assert_eq!(step(&r), Step::Nothing);
    }
}
