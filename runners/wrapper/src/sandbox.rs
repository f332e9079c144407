//! What the wrapper does to itself and to the program's process before it runs: no dumping,
//! reaping orphans, signals as events, and the program's rlimits, session and OOM score.
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{OFlag, open};
use nix::sys::prctl;
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;
use nix::unistd::{Pid, setsid, write};
use runner_protocol::EffectiveLimits;
use runner_protocol::limits::MAX_OPEN_FILES;

/// Signals the wrapper handles, read as events from a descriptor instead of handlers.
pub struct Signals(SignalFd);

/// What arrived since the last look.
#[derive(Clone, Copy, Debug, Default)]
pub struct Arrived {
    pub child: bool,
    /// SIGTERM (a cancel, the pod's deletion or its deadline), SIGINT or SIGHUP.
    pub stop: bool,
}

/// Hardens the wrapper and takes over its signals. Must run before any thread or child.
pub fn harden_self() -> nix::Result<Signals> {
    // The program runs as the same user: without this it could open /proc/<wrapper>/fd/1
    // (the container log) and write frames of its own.
    prctl::set_dumpable(false)?;
    // Orphans of the program (daemons) are re-parented to the wrapper instead of escaping
    // it, so they can be found, killed and reaped. As PID 1 that is the case anyway.
    prctl::set_child_subreaper(true)?;
    let mut mask = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(signal);
    }
    // Threads started later inherit this mask; a program does not (`configure` clears it in
    // the child before exec).
    mask.thread_block()?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    Ok(Signals(fd))
}

impl Signals {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    pub fn drain(&self) -> Arrived {
        let mut arrived = Arrived::default();
        while let Ok(Some(info)) = self.0.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => arrived.child = true,
                Ok(_) => arrived.stop = true,
                Err(_) => {}
            }
        }
        arrived
    }
}

/// The program's rlimits. They apply per process (NPROC per user), so the pod's cgroup limits
/// and the wrapper's own clock and CPU check back them up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildLimits {
    pub cpu_soft_secs: u64,
    pub cpu_hard_secs: u64,
    pub file_bytes: u64,
    pub open_files: u64,
    pub processes: u64,
}

impl ChildLimits {
    pub fn for_job(limits: &EffectiveLimits) -> Self {
        // RLIMIT_CPU counts whole seconds; 0 would mean "kill at once".
        let cpu_soft_secs = limits.cpu_ms.div_ceil(1000).max(1);
        ChildLimits {
            cpu_soft_secs,
            // SIGXCPU at the soft limit, SIGKILL one second later if it is caught.
            cpu_hard_secs: cpu_soft_secs + 1,
            file_bytes: limits.max_file_bytes(),
            open_files: MAX_OPEN_FILES,
            processes: limits.max_processes,
        }
    }
}

impl ChildLimits {
    /// A kernel's limits before its job is known: what the wrapper has (a kernel is the image's
    /// own code until the job arrives), but the file and core limits of every program. At the
    /// hand-over [`lower_limits`] puts the job's on it.
    pub fn before_job() -> Self {
        ChildLimits {
            cpu_soft_secs: u64::MAX,
            cpu_hard_secs: u64::MAX,
            file_bytes: u64::MAX,
            open_files: MAX_OPEN_FILES,
            processes: u64::MAX,
        }
    }
}

/// Puts a job's limits on a kernel already running: RLIMIT_CPU at what it has used plus the
/// job's allowance (RLIMIT_CPU counts the process's whole life), the job's file size and process
/// limits. Only lowers, which needs no privilege for a process of the same user. Returns the
/// hard CPU limit set, in seconds of the process's life.
pub fn lower_limits(pid: Pid, limits: ChildLimits, cpu_used_ms: u64) -> std::io::Result<u64> {
    use rustix::process::{Resource as R, Rlimit, prlimit};
    let target = rustix::process::Pid::from_raw(pid.as_raw())
        .ok_or_else(|| std::io::Error::other("not a process id"))?;
    let used_secs = cpu_used_ms.div_ceil(1000);
    let cpu_soft = clamp(
        Resource::RLIMIT_CPU,
        used_secs.saturating_add(limits.cpu_soft_secs),
    );
    let cpu_hard = clamp(
        Resource::RLIMIT_CPU,
        used_secs.saturating_add(limits.cpu_hard_secs),
    );
    let set = |resource: R, soft: u64, hard: u64| {
        let value = |v: u64| (v != nix::libc::RLIM_INFINITY).then_some(v);
        let new = Rlimit {
            current: value(soft),
            maximum: value(hard),
        };
        prlimit(Some(target), resource, new).map(drop)
    };
    set(R::Cpu, cpu_soft, cpu_hard)?;
    let fsize = clamp(Resource::RLIMIT_FSIZE, limits.file_bytes);
    set(R::Fsize, fsize, fsize)?;
    let nproc = clamp(Resource::RLIMIT_NPROC, limits.processes);
    set(R::Nproc, nproc, nproc)?;
    Ok(cpu_hard)
}

/// An unprivileged process cannot raise a hard limit: no more than the wrapper has.
fn clamp(resource: Resource, value: u64) -> u64 {
    match getrlimit(resource) {
        Ok((_, hard)) => value.min(hard),
        Err(_) => value,
    }
}

/// Makes `command` start the program in a session of its own, under `limits`, first in line
/// for the OOM killer.
pub fn configure(command: &mut Command, limits: ChildLimits) {
    let cpu_soft = clamp(Resource::RLIMIT_CPU, limits.cpu_soft_secs);
    let cpu_hard = clamp(Resource::RLIMIT_CPU, limits.cpu_hard_secs);
    let fsize = clamp(Resource::RLIMIT_FSIZE, limits.file_bytes);
    let nofile = clamp(Resource::RLIMIT_NOFILE, limits.open_files);
    let nproc = clamp(Resource::RLIMIT_NPROC, limits.processes);

    let in_child = move || -> nix::Result<()> {
        // Its own session and process group: the whole tree can be signalled at once, and it
        // has no controlling terminal.
        setsid()?;
        // The wrapper blocks the signals it reads from a descriptor, and a mask survives exec:
        // the program starts with none blocked, as it would anywhere else (std does not reset
        // it). An interpreter that ran with SIGINT blocked could not be interrupted.
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        // If the wrapper dies the program must not run on unsupervised.
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        // Nothing it runs gains a privilege (set-user-ID files): the pod says so too.
        prctl::set_no_new_privs()?;
        // The fork inherited the wrapper's "not dumpable", which makes /proc/self belong to
        // root; restore it (exec would anyway) so the program can write its own OOM score.
        prctl::set_dumpable(true)?;
        if let Ok(fd) = open(
            c"/proc/self/oom_score_adj",
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            // Best effort: without /proc the pod's memory limit still holds.
            let _ = write(&fd, b"1000");
        }
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        setrlimit(Resource::RLIMIT_CPU, cpu_soft, cpu_hard)?;
        setrlimit(Resource::RLIMIT_FSIZE, fsize, fsize)?;
        setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile)?;
        setrlimit(Resource::RLIMIT_NPROC, nproc, nproc)?;
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec. It only makes system calls (setsid,
    // sigprocmask, prctl, open, write, setrlimit) on values computed before the fork (an empty
    // signal set is made with sigemptyset, itself async-signal-safe), allocates nothing and
    // takes no lock, so it is async-signal-safe: sound even when the wrapper has other threads
    // (a container's server and runs' threads), whose locks the child never touches.
    unsafe {
        command.pre_exec(move || in_child().map_err(std::io::Error::from));
    }
}

/// CPU time and peak resident size of every descendant the wrapper has reaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_ms: u64,
    pub max_rss_bytes: u64,
}

pub fn children_usage() -> Usage {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return Usage::default();
    };
    let ms = |t: TimeVal| (t.tv_sec().max(0) as u64) * 1000 + (t.tv_usec().max(0) as u64) / 1000;
    Usage {
        cpu_ms: ms(usage.user_time()) + ms(usage.system_time()),
        max_rss_bytes: (usage.max_rss().max(0) as u64).saturating_mul(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpu_ms: u64) -> EffectiveLimits {
        EffectiveLimits {
            timeout_ms: 1000,
            memory_mb: 64,
            cpu_ms,
            cpu_millicores: 100,
            max_output_bytes: 1,
            max_artifacts: 1,
            max_artifact_bytes: 1,
            max_artifact_total_bytes: 1,
            max_processes: 30,
            disk_mb: 2,
        }
    }

    #[test]
    fn cpu_limit_is_whole_seconds_rounded_up_with_a_second_of_grace() {
        let l = ChildLimits::for_job(&limits(2500));
        assert_eq!((l.cpu_soft_secs, l.cpu_hard_secs), (3, 4));
        let l = ChildLimits::for_job(&limits(2000));
        assert_eq!((l.cpu_soft_secs, l.cpu_hard_secs), (2, 3));
        let l = ChildLimits::for_job(&limits(0));
        assert_eq!((l.cpu_soft_secs, l.cpu_hard_secs), (1, 2));
        assert_eq!(
            (l.file_bytes, l.open_files, l.processes),
            (3 << 20, MAX_OPEN_FILES, 30)
        );
    }
}
