//! How the program ended, in the terms of the exit report: which limit or request stopped it.
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_protocol::ExitReport;

use crate::emit::CappedStream;

/// The program's own wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
    /// Never reaped (stuck in the kernel after SIGKILL).
    Lost,
}

/// Why the wrapper ended the program, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Timeout,
    Cancel,
    /// The wrapper's own check: the program's processes together used more than `cpu_ms`.
    CpuBudget,
}

pub struct Facts {
    pub ended: Ended,
    pub stop: Option<Stop>,
    pub wall: Duration,
    pub cpu_ms: u64,
    /// RLIMIT_CPU's hard limit: a SIGKILL after this much CPU came from it.
    pub cpu_hard_limit_ms: u64,
    pub memory_peak_bytes: u64,
    /// The cgroup's OOM-kill counter went up while the program ran.
    pub oom_kills_rose: bool,
    /// `/work` or `/tmp` was (nearly) full when the program ended.
    pub disk_full: bool,
    pub stdout: CappedStream,
    pub stderr: CappedStream,
    /// The program ran in a kernel started before the job.
    pub kernel: bool,
}

pub fn exit_report(f: &Facts) -> ExitReport {
    let (exit_code, signal) = match f.ended {
        Ended::Exited(code) => (Some(code), None),
        Ended::Signaled(sig) => (None, Some(sig)),
        // Killed by the wrapper and never seen again.
        Ended::Lost => (None, Some(Signal::SIGKILL as i32)),
    };
    let killed_by_kernel = signal == Some(Signal::SIGKILL as i32) && f.stop.is_none();
    let oom_killed = killed_by_kernel && f.oom_kills_rose;
    ExitReport {
        exit_code,
        signal,
        timed_out: f.stop == Some(Stop::Timeout),
        cancelled: f.stop == Some(Stop::Cancel),
        oom_killed,
        cpu_limit_exceeded: f.stop == Some(Stop::CpuBudget)
            || signal == Some(Signal::SIGXCPU as i32)
            || (killed_by_kernel && !oom_killed && f.cpu_ms >= f.cpu_hard_limit_ms),
        file_size_exceeded: signal == Some(Signal::SIGXFSZ as i32),
        // A full disk is the likely cause only of a program that did not succeed: one that
        // filled its disk and exited 0 dealt with it.
        disk_full: f.disk_full && exit_code != Some(0),
        wall_ms: f.wall.as_millis().try_into().unwrap_or(u64::MAX),
        cpu_ms: f.cpu_ms,
        memory_peak_bytes: f.memory_peak_bytes,
        stdout_bytes: f.stdout.total(),
        stderr_bytes: f.stderr.total(),
        stdout_truncated: f.stdout.truncated(),
        stderr_truncated: f.stderr.truncated(),
        error: None,
        no_job: false,
        interpreter_lost: false,
        already_ran: false,
        kernel: f.kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ended: Ended, stop: Option<Stop>) -> Facts {
        Facts {
            ended,
            stop,
            wall: Duration::from_millis(1500),
            cpu_ms: 100,
            cpu_hard_limit_ms: 3000,
            memory_peak_bytes: 1 << 20,
            oom_kills_rose: false,
            disk_full: false,
            stdout: CappedStream::new(10),
            stderr: CappedStream::new(10),
            kernel: false,
        }
    }

    const SIGKILL: Ended = Ended::Signaled(9);

    #[test]
    fn a_program_that_exits_by_itself_has_only_its_exit_code() {
        let r = exit_report(&facts(Ended::Exited(3), None));
        assert_eq!((r.exit_code, r.signal), (Some(3), None));
        assert!(!(r.timed_out || r.cancelled || r.oom_killed || r.cpu_limit_exceeded));
        assert_eq!(r.wall_ms, 1500);
    }

    #[test]
    fn a_kill_by_the_wrapper_is_a_timeout_or_a_cancel_never_an_oom() {
        let mut f = facts(SIGKILL, Some(Stop::Timeout));
        f.oom_kills_rose = true;
        let r = exit_report(&f);
        assert!(r.timed_out && !r.oom_killed && !r.cancelled);
        let r = exit_report(&facts(SIGKILL, Some(Stop::Cancel)));
        assert!(r.cancelled && !r.timed_out);
        assert_eq!(r.signal, Some(9));
    }

    #[test]
    fn sigkill_with_the_oom_counter_up_is_an_oom_kill() {
        let mut f = facts(SIGKILL, None);
        f.oom_kills_rose = true;
        let r = exit_report(&f);
        assert!(r.oom_killed && !r.cpu_limit_exceeded);
        assert!(!exit_report(&facts(SIGKILL, None)).oom_killed);
    }

    #[test]
    fn cpu_limits_show_as_sigxcpu_a_sigkill_at_the_hard_limit_or_the_wrappers_check() {
        assert!(
            exit_report(&facts(Ended::Signaled(Signal::SIGXCPU as i32), None)).cpu_limit_exceeded
        );
        let mut f = facts(SIGKILL, None);
        f.cpu_ms = 3000;
        assert!(exit_report(&f).cpu_limit_exceeded);
        assert!(exit_report(&facts(SIGKILL, Some(Stop::CpuBudget))).cpu_limit_exceeded);
    }

    #[test]
    fn a_full_disk_is_reported_only_for_a_program_that_did_not_succeed() {
        let mut f = facts(Ended::Exited(1), None);
        f.disk_full = true;
        assert!(exit_report(&f).disk_full);
        let mut f = facts(Ended::Exited(0), None);
        f.disk_full = true;
        assert!(!exit_report(&f).disk_full);
    }

    #[test]
    fn sigxfsz_is_a_file_size_limit() {
        let r = exit_report(&facts(Ended::Signaled(Signal::SIGXFSZ as i32), None));
        assert!(r.file_size_exceeded);
    }
}
