//! A container's next step, as a pure function of the facts about it (tested as a table):
//! serve it, or end it (stopped, idle past its minutes, past the longest a container may
//! live), or, once ended, collect what is left.
use std::time::Duration;

use codeinterp_crds::{CodeContainer, ContainerPhase};
use k8s_openapi::api::core::v1::Pod;

/// How long an ended container stays (listed, its status readable) before it is deleted.
pub const ENDED_TTL_SECS: u64 = 3600;

#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub container: &'a CodeContainer,
    /// Its pod in the cache: only a pod whose controller it is.
    pub pod: Option<&'a Pod>,
    /// A run is running in it now.
    pub busy: bool,
    /// Seconds since the epoch.
    pub now: i64,
    pub max_lifetime_secs: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// It is being deleted: its pod goes with it.
    Nothing,
    /// Keep a task serving it; look again in this long (its idle clock).
    Serve { recheck_in: Duration },
    /// End it: its pod goes, runs waiting for it fail.
    End {
        phase: ContainerPhase,
        reason: &'static str,
        message: String,
    },
    /// Ended: remove what is left of its pod; delete it once its time is up.
    Collect {
        remove_pod: bool,
        delete: bool,
        recheck_in: Duration,
    },
}

fn secs_since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: i64) -> u64 {
    t.map_or(0, |t| (now - t.0.as_second()).max(0) as u64)
}

pub fn decide(f: &Facts) -> Step {
    let c = f.container;
    if c.metadata.deletion_timestamp.is_some() {
        return Step::Nothing;
    }
    let status = c.status.clone().unwrap_or_default();
    if c.is_ended() {
        let ended_for = secs_since(status.last_active_at.as_ref(), f.now);
        return Step::Collect {
            remove_pod: f.pod.is_some(),
            delete: ended_for >= ENDED_TTL_SECS,
            recheck_in: Duration::from_secs(ENDED_TTL_SECS.saturating_sub(ended_for) + 1),
        };
    }
    if c.spec.stop == Some(true) {
        return Step::End {
            phase: ContainerPhase::Stopped,
            reason: "stopped",
            message: "the container was stopped".into(),
        };
    }
    let age = secs_since(c.metadata.creation_timestamp.as_ref(), f.now);
    if age >= f.max_lifetime_secs && !f.busy {
        return Step::End {
            phase: ContainerPhase::Expired,
            reason: "max_lifetime",
            message: format!(
                "the container reached its longest life, {}s",
                f.max_lifetime_secs
            ),
        };
    }
    let idle_limit = u64::from(c.spec.idle_minutes) * 60;
    let idle = secs_since(
        status
            .last_active_at
            .as_ref()
            .or(c.metadata.creation_timestamp.as_ref()),
        f.now,
    );
    if idle >= idle_limit && !f.busy {
        return Step::End {
            phase: ContainerPhase::Expired,
            reason: "idle",
            message: format!("the container was idle for {} minutes", c.spec.idle_minutes),
        };
    }
    let next_check = idle_limit
        .saturating_sub(idle)
        .min(f.max_lifetime_secs.saturating_sub(age))
        .max(1);
    Step::Serve {
        recheck_in: Duration::from_secs(next_check + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeContainerSpec, CodeContainerStatus, MemoryLimit};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    const NOW: i64 = 100_000;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    /// A container made `age` seconds ago, last active `idle` seconds ago.
    fn container(age: i64, idle: Option<i64>, phase: Option<ContainerPhase>) -> CodeContainer {
        let mut c = CodeContainer::new(
            "c",
            CodeContainerSpec {
                display_name: None,
                memory_limit: MemoryLimit::OneGig,
                idle_minutes: 20,
                file_ops: vec![],
                stop: None,
            },
        );
        c.metadata.creation_timestamp = Some(t(NOW - age));
        c.status = Some(CodeContainerStatus {
            phase,
            last_active_at: idle.map(|i| t(NOW - i)),
            ..Default::default()
        });
        c
    }

    fn step(c: &CodeContainer, busy: bool) -> Step {
        decide(&Facts {
            container: c,
            pod: None,
            busy,
            now: NOW,
            max_lifetime_secs: 86_400,
        })
    }

    fn ends(s: &Step, why: &str) -> bool {
        matches!(s, Step::End { reason, .. } if *reason == why)
    }

    #[test]
    fn the_next_step_for_each_state_of_a_container() {
        let running = Some(ContainerPhase::Running);
        type Row = (&'static str, CodeContainer, bool, fn(&Step) -> bool);
        let rows: Vec<Row> = vec![
            (
                "a new container is served",
                container(5, None, None),
                false,
                |s| matches!(s, Step::Serve { .. }),
            ),
            (
                "one used a minute ago is served until its idle time",
                container(600, Some(60), running),
                false,
                |s| {
                    *s == Step::Serve {
                        recheck_in: Duration::from_secs(1141),
                    }
                },
            ),
            (
                "one idle past its minutes expires",
                container(3000, Some(1200), running),
                false,
                |s| ends(s, "idle"),
            ),
            (
                "one never used expires counting from its creation",
                container(1300, None, running),
                false,
                |s| ends(s, "idle"),
            ),
            (
                "a busy one does not expire under its run",
                container(3000, Some(1300), running),
                true,
                |s| matches!(s, Step::Serve { .. }),
            ),
            (
                "one past the longest life expires however used",
                container(90_000, Some(1), running),
                false,
                |s| ends(s, "max_lifetime"),
            ),
            (
                "an ended one is collected, kept for a while",
                container(3000, Some(60), Some(ContainerPhase::Expired)),
                false,
                |s| matches!(s, Step::Collect { delete: false, .. }),
            ),
            (
                "an ended one is deleted after its time",
                container(9000, Some(4000), Some(ContainerPhase::Stopped)),
                false,
                |s| matches!(s, Step::Collect { delete: true, .. }),
            ),
        ];
        for (name, c, busy, want) in rows {
            let got = step(&c, busy);
            assert!(want(&got), "{name}: {got:?}");
        }
        let mut stopped = container(5, None, running);
        stopped.spec.stop = Some(true);
        assert!(ends(&step(&stopped, true), "stopped"));
        let mut deleting = container(5, None, running);
        deleting.metadata.deletion_timestamp = Some(t(NOW));
        assert_eq!(step(&deleting, false), Step::Nothing);
    }
}
