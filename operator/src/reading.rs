//! Reading a run's record, as two small tables (pure): how to read it (hand the pod its job
//! and read the attach stream, or follow its log, or only conclude from what the log says),
//! and what the record, once read, comes to (finish the run, or give it a new pod because
//! its job never arrived).
//!
//! One-shot runner pods take exactly one job (stdin closes for good with the first attach
//! session), so handing a job to a pod that had one already runs nothing: the only way a
//! program could run twice is a second pod, and a run gets one only when its pod's record
//! proves the program never started.
use codeinterp_crds::Reason;
use k8s_openapi::api::core::v1::ContainerStateTerminated;
use runner_protocol::{Followed, ParseError, Record};

use crate::artifacts::StoredFile;

use crate::outcome::{Outcome, judge};

/// What the pod's log showed before reading began (for a pod this process did not just
/// place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogState {
    /// No record yet: the wrapper still waits for its job (or never got one).
    Empty,
    /// The wrapper reported that its job never arrived whole (stdin ended first).
    NoJob,
    /// The wrapper started the program (or reported why it could not).
    Started,
}

impl LogState {
    pub fn of(record: &Record) -> Self {
        match &record.exit {
            Some(exit) if exit.no_job => LogState::NoJob,
            _ if record.started => LogState::Started,
            _ => LogState::Empty,
        }
    }
}

/// Where reading starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// This process placed the pod and has not handed it the job.
    Fresh,
    /// Anything else: what the log shows.
    Log(LogState),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Hand the pod its job over attach and read the record from the same stream.
    Deliver,
    /// Follow the log: the program started before this reading began.
    Follow,
    /// The pod has nothing more to say: conclude from its whole log.
    Conclude,
}

pub fn plan(start: Start, pod_ended: bool) -> Plan {
    match (start, pod_ended) {
        (Start::Fresh, false) | (Start::Log(LogState::Empty), false) => Plan::Deliver,
        (Start::Log(LogState::Started), _) => Plan::Follow,
        (Start::Fresh, true) | (Start::Log(LogState::Empty | LogState::NoJob), _) => Plan::Conclude,
    }
}

/// A record as read from one stream, with the output files stored as they came.
#[derive(Debug)]
pub struct Read {
    pub followed: Followed,
    pub files: Vec<StoredFile>,
}

impl Read {
    pub fn nothing() -> Self {
        Read {
            followed: Followed {
                record: Ok(Record::default()),
                complete: false,
            },
            files: Vec::new(),
        }
    }
}

/// The better of what the stream gave and the whole log read afterwards (when the stream
/// ended without its end frame): a complete record first, then one that says how the
/// program ended.
pub fn better_of(stream: Read, log: Option<Read>) -> Read {
    let has_exit = |r: &Read| r.followed.record.as_ref().is_ok_and(|r| r.exit.is_some());
    match log {
        Some(log) if log.followed.complete || (has_exit(&log) && !has_exit(&stream)) => log,
        Some(log)
            if !stream.followed.complete
                && stream.followed.record.is_err()
                && log.followed.record.is_ok() =>
        {
            log
        }
        _ => stream,
    }
}

/// What reading a record came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Conclusion {
    Finish {
        record: Option<Box<Record>>,
        outcome: Outcome,
    },
    /// The job never reached the pod (nothing ran): the run gets a new pod.
    Restart { why: String },
}

/// How the container ended, as the kubelet reports it (when it has).
#[derive(Clone, Debug, Default)]
pub struct Ending {
    pub terminated: Option<ContainerStateTerminated>,
    pub pod_reason: Option<String>,
}

pub fn conclude(
    record: Result<Record, ParseError>,
    ending: &Ending,
    cancel_requested: bool,
) -> Conclusion {
    let rec = match record {
        Ok(rec) => rec,
        // Read from a log whose beginning was rotated away: the record was too large for it.
        Err(ParseError::BeforeStart(_)) => {
            let why = "the record's beginning was no longer in the pod's log (it was larger than the log keeps)";
            return Conclusion::Finish {
                record: None,
                outcome: Outcome::ended(Reason::RecordLost, why),
            };
        }
        Err(e) => {
            return Conclusion::Finish {
                record: None,
                outcome: Outcome::ended(Reason::InvalidRunnerOutput, e.to_string()),
            };
        }
    };
    let container_reason = ending.terminated.as_ref().and_then(|t| t.reason.as_deref());
    let never_ran = LogState::of(&rec) != LogState::Started;
    match (never_ran, cancel_requested, container_reason) {
        (true, true, _) => Conclusion::Finish {
            record: None,
            outcome: Outcome::ended(Reason::Cancelled, "cancelled before the program started"),
        },
        // Out of memory before the program started (its input files fill memory-backed
        // /work): another pod of the same size would too.
        (true, false, Some("OOMKilled")) => Conclusion::Finish {
            record: None,
            outcome: Outcome::ended(
                Reason::OomKilled,
                "the sandbox ran out of memory receiving the job",
            ),
        },
        (true, false, _) => Conclusion::Restart {
            why: match rec.exit.and_then(|e| e.error) {
                Some(error) => format!("the job never reached the pod whole ({error})"),
                None => "the pod ended before it was handed its job".into(),
            },
        },
        (false, _, _) => {
            let outcome = judge(
                Some(&rec),
                ending.terminated.as_ref(),
                ending.pod_reason.as_deref(),
                cancel_requested,
            );
            let outcome = unless_files_unread(outcome, &rec);
            Conclusion::Finish {
                record: Some(Box::new(rec)),
                outcome,
            }
        }
    }
}

/// A program that exited by itself, whose record broke off after its exit report and before
/// the end frame (the stream from the pod ended early, and the log no longer held the rest):
/// its output files, which come after the report, may be missing, and a run is never shown
/// completed without them.
fn unless_files_unread(outcome: Outcome, rec: &Record) -> Outcome {
    if outcome.reason.is_some() || rec.complete || rec.exit.is_none() {
        return outcome;
    }
    Outcome {
        phase: Reason::ArtifactLost.phase(),
        reason: Some(Reason::ArtifactLost),
        message: Some(
            "the record from the pod broke off after the program's exit report: its output \
             files could not be read back (stdout, stderr and the exit code were)"
                .into(),
        ),
        ..outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::Phase;
    use runner_protocol::ExitReport;

    fn started(exit: Option<ExitReport>) -> Record {
        Record {
            started: true,
            exit,
            ..Default::default()
        }
    }

    fn no_job() -> Record {
        started(Some(ExitReport {
            no_job: true,
            error: Some("no job arrived on stdin".into()),
            ..Default::default()
        }))
    }

    fn exited(code: i32) -> Record {
        Record {
            complete: true,
            ..broke_off(code)
        }
    }

    /// A record with the exit report and without the end frame.
    fn broke_off(code: i32) -> Record {
        started(Some(ExitReport {
            exit_code: Some(code),
            ..Default::default()
        }))
    }

    #[test]
    fn how_a_record_is_read_from_where_the_pod_is() {
        use LogState::*;
        let rows = [
            (
                "a pod placed here gets its job",
                Start::Fresh,
                false,
                Plan::Deliver,
            ),
            (
                "a pod placed here that ended never had it",
                Start::Fresh,
                true,
                Plan::Conclude,
            ),
            (
                "a waiting pod found after a restart gets its job",
                Start::Log(Empty),
                false,
                Plan::Deliver,
            ),
            (
                "a pod whose program started is followed",
                Start::Log(Started),
                false,
                Plan::Follow,
            ),
            (
                "an ended pod whose program started is read to the end",
                Start::Log(Started),
                true,
                Plan::Follow,
            ),
            (
                "a pod whose job was cut short is concluded",
                Start::Log(NoJob),
                false,
                Plan::Conclude,
            ),
            (
                "an ended pod with an empty log is concluded",
                Start::Log(Empty),
                true,
                Plan::Conclude,
            ),
        ];
        for (name, start, ended, want) in rows {
            assert_eq!(plan(start, ended), want, "{name}");
        }
    }

    #[test]
    fn what_a_record_comes_to() {
        let oom = Ending {
            terminated: Some(ContainerStateTerminated {
                reason: Some("OOMKilled".into()),
                ..Default::default()
            }),
            pod_reason: None,
        };
        let none = Ending::default();
        let restart = |c: &Conclusion| matches!(c, Conclusion::Restart { .. });
        let finish = |phase: Phase, reason: Option<Reason>| move |c: &Conclusion| matches!(c, Conclusion::Finish { outcome, .. } if outcome.phase == phase && outcome.reason == reason);
        type Check = Box<dyn Fn(&Conclusion) -> bool>;
        type Row<'a> = (&'a str, Result<Record, ParseError>, &'a Ending, bool, Check);
        let rows: Vec<Row> = vec![
            (
                "a program that exited is completed",
                Ok(exited(3)),
                &none,
                false,
                Box::new(finish(Phase::Completed, None)),
            ),
            (
                "a record that broke off after the exit report is not shown completed",
                Ok(broke_off(0)),
                &none,
                false,
                Box::new(finish(Phase::Failed, Some(Reason::ArtifactLost))),
            ),
            (
                "a job cut short gets a new pod",
                Ok(no_job()),
                &none,
                false,
                Box::new(restart),
            ),
            (
                "a pod that ended with an empty log gets a new pod",
                Ok(Record::default()),
                &none,
                false,
                Box::new(restart),
            ),
            (
                "a cancelled run whose job never arrived is cancelled, not restarted",
                Ok(no_job()),
                &none,
                true,
                Box::new(finish(Phase::Cancelled, Some(Reason::Cancelled))),
            ),
            (
                "running out of memory receiving the job fails, not restarts",
                Ok(Record::default()),
                &oom,
                false,
                Box::new(finish(Phase::Failed, Some(Reason::OomKilled))),
            ),
            (
                "a record the decoder refused fails the run",
                Err(ParseError::AfterEnd),
                &none,
                false,
                Box::new(finish(Phase::Failed, Some(Reason::InvalidRunnerOutput))),
            ),
            (
                "a started program killed for memory is oom_killed",
                Ok(started(None)),
                &oom,
                false,
                Box::new(finish(Phase::Failed, Some(Reason::OomKilled))),
            ),
        ];
        for (name, record, ending, cancel, check) in rows {
            let got = conclude(record, ending, cancel);
            assert!(check(&got), "{name}: {got:?}");
        }
    }

    #[test]
    fn the_whole_log_wins_when_it_is_complete_or_the_stream_missed_the_exit() {
        let f = |rec: Record, complete: bool| Read {
            followed: Followed {
                record: Ok(rec),
                complete,
            },
            files: vec![],
        };
        let stream = f(started(None), false);
        let log = f(exited(0), true);
        assert!(better_of(stream, Some(log)).followed.complete);
        let stream = f(exited(1), false);
        let log = f(started(None), false);
        let kept = better_of(stream, Some(log)).followed;
        assert_eq!(kept.record.unwrap().exit.unwrap().exit_code, Some(1));
        assert!(!better_of(f(started(None), false), None).followed.complete);
    }
}
