//! A kernel's session: snippets run one after another in one namespace that persists. Each is
//! supervised as a program is (output streamed as capped frames, the wall clock and the CPU
//! budget from when it is sent), except that a limit interrupts it (SIGINT) instead of killing
//! the kernel: its state lives on. A kernel that does not heed the interrupt in time, or that
//! cannot be interrupted, is killed, and the outcome says the state is lost.
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use runner_protocol::{EffectiveLimits, ExitReport, Frame, PROTOCOL_VERSION};

use super::{How, Kernel, KernelError, LIVENESS};
use crate::emit::{Emitter, Stream};
use crate::proctree;
use crate::report::{Ended, Stop};
use crate::supervise::{Pipe, poll_timeout};

/// How long an interrupted snippet has to end before the kernel is killed.
pub(crate) const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How often the kernel's CPU is read against the budget.
const CPU_CHECK_EVERY: Duration = Duration::from_millis(200);

/// How a snippet went, and the exit report written for it.
#[derive(Clone, Debug)]
pub struct SnippetOutcome {
    pub end: SnippetEnd,
    pub report: ExitReport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnippetEnd {
    /// The snippet is over and the kernel waits for the next, its state kept.
    Finished { status: i32, how: How },
    /// The kernel is gone (it exited, did not heed an interrupt, or broke the protocol): its
    /// state is lost. Start another.
    KernelGone { why: String },
}

/// What the loop of one snippet keeps track of.
struct Watch {
    deadline: Instant,
    cpu_budget_ms: u64,
    cpu_before_ms: u64,
    cpu_used_ms: u64,
    next_cpu_check: Instant,
    stop: Option<Stop>,
    /// When the interrupt was sent: past the grace the kernel is killed.
    interrupted_at: Option<Instant>,
    /// The interrupt was sent again, halfway through the grace.
    reminded: bool,
    end: Option<SnippetEnd>,
}

impl Kernel {
    /// Runs the file at `path` in the kernel's namespace. Writes a start frame, the output
    /// frames and an exit frame to `emitter` (the caller writes the files and the end frame), and
    /// returns once the kernel said `done` or is gone. The first snippet makes the kernel a
    /// session kernel for good: it can no longer be handed over.
    pub fn run_snippet<W: Write>(
        &mut self,
        path: &Path,
        limits: &EffectiveLimits,
        emitter: &mut Emitter<W>,
    ) -> io::Result<SnippetOutcome> {
        self.run_snippet_with(path, limits, emitter, |_, _| {})
    }

    /// [`Kernel::run_snippet`], with `adjust` given the exit report before it is written (what
    /// only the caller knows: the container's OOM counter, its disk, words for a person).
    pub(crate) fn run_snippet_with<W: Write>(
        &mut self,
        path: &Path,
        limits: &EffectiveLimits,
        emitter: &mut Emitter<W>,
        adjust: impl FnOnce(&SnippetEnd, &mut ExitReport),
    ) -> io::Result<SnippetOutcome> {
        emitter.frame(&Frame::Start {
            v: PROTOCOL_VERSION,
        })?;
        let mut pipes = [
            Pipe::new(self.stdout.take(), Stream::Stdout, limits.max_output_bytes),
            Pipe::new(self.stderr.take(), Stream::Stderr, limits.max_output_bytes),
        ];
        let started = Instant::now();
        let cpu_before_ms = proctree::process_cpu_ms(self.pid).unwrap_or(0);
        let mut watch = Watch {
            deadline: started + Duration::from_millis(limits.timeout_ms),
            cpu_budget_ms: limits.cpu_ms,
            cpu_before_ms,
            cpu_used_ms: 0,
            next_cpu_check: started + CPU_CHECK_EVERY,
            stop: None,
            interrupted_at: None,
            reminded: false,
            end: None,
        };
        let watched = self.begin_snippet(path).and_then(|()| {
            self.watch_snippet(&mut watch, &mut pipes, emitter)
                .map_err(|err| KernelError::Protocol(err.to_string()))
        });
        if let Err(err) = watched {
            self.kill();
            watch.end = Some(SnippetEnd::KernelGone {
                why: err.to_string(),
            });
        }
        for pipe in &mut pipes {
            pipe.flush(emitter, Instant::now(), true)?;
        }
        let wall = started.elapsed();
        let [out, err] = pipes;
        let mut report = watch.report(self, wall, &out, &err);
        (self.stdout, self.stderr) = (out.fd, err.fd);
        // The interrupt was for this snippet; one made while it was being sent is not lost.
        self.clear_interrupt();
        let end = watch.end.expect("a watched snippet has ended");
        adjust(&end, &mut report);
        emitter.frame(&Frame::Exit(report.clone()))?;
        emitter.flush()?;
        Ok(SnippetOutcome { end, report })
    }

    /// Sends the snippet to a kernel that is ready for it.
    fn begin_snippet(&mut self, path: &Path) -> Result<(), KernelError> {
        self.check_alive()?;
        if self.ready.is_none() {
            return Err(KernelError::Protocol(
                "a snippet before the kernel was ready".into(),
            ));
        }
        // Output between snippets (a timer that fired late) belongs to no run.
        self.discard_output();
        self.handle_messages(false)?;
        self.channel.send(&super::ToKernel::Snippet(path))?;
        Ok(())
    }

    fn watch_snippet<W: Write>(
        &mut self,
        watch: &mut Watch,
        pipes: &mut [Pipe; 2],
        emitter: &mut Emitter<W>,
    ) -> io::Result<()> {
        loop {
            let now = Instant::now();
            for pipe in pipes.iter_mut() {
                let _ = pipe.drain(emitter, now)?;
                pipe.flush(emitter, now, false)?;
            }
            emitter.flush()?;
            match self.handle_messages(true) {
                Ok(Some((status, how))) => {
                    // Everything it wrote before `done` is in the pipes by now.
                    for pipe in pipes.iter_mut() {
                        while !pipe.drain(emitter, now)? {}
                    }
                    let asked = self.shared.interrupt_requested.load(Ordering::SeqCst);
                    if how == How::Interrupted && asked && watch.stop.is_none() {
                        // The caller's interrupt, heeded before this loop looked at it.
                        watch.stop = Some(Stop::Cancel);
                    }
                    watch.end = Some(SnippetEnd::Finished { status, how });
                    return Ok(());
                }
                Ok(None) => {}
                Err(err) => return Err(io::Error::other(err.to_string())),
            }
            if let Err(err) = self.check_alive() {
                watch.end = Some(SnippetEnd::KernelGone {
                    why: err.to_string(),
                });
                for pipe in pipes.iter_mut() {
                    // Its output up to its death: the pipes close unless it left children.
                    let _ = pipe.drain(emitter, now)?;
                }
                return Ok(());
            }
            self.enforce(watch, now);
            let wake = [
                Some(watch.deadline),
                Some(watch.next_cpu_check),
                watch.interrupted_at.map(|at| at + INTERRUPT_GRACE / 2),
                watch.interrupted_at.map(|at| at + INTERRUPT_GRACE),
                Some(now + LIVENESS),
            ]
            .into_iter()
            .flatten()
            .chain(pipes.iter().filter_map(Pipe::due))
            .fold(now + LIVENESS, Instant::min);
            let mut fds = vec![PollFd::new(self.channel.fd(), PollFlags::POLLIN)];
            fds.extend(
                pipes
                    .iter()
                    .filter_map(|p| p.fd.as_ref())
                    .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
            );
            let _ = poll(&mut fds, poll_timeout(wake.saturating_duration_since(now)));
        }
    }

    /// Interrupts the snippet when a limit or the caller asks; kills the kernel when the
    /// interrupt was not heeded in time, or cannot be.
    fn enforce(&mut self, watch: &mut Watch, now: Instant) {
        if now >= watch.next_cpu_check {
            watch.next_cpu_check = now + CPU_CHECK_EVERY;
            if let Some(cpu) = proctree::process_cpu_ms(self.pid) {
                watch.cpu_used_ms = cpu.saturating_sub(watch.cpu_before_ms);
            }
        }
        if watch.stop.is_none() {
            watch.stop = if self.shared.interrupt_requested.load(Ordering::SeqCst) {
                Some(Stop::Cancel)
            } else if now >= watch.deadline {
                Some(Stop::Timeout)
            } else if watch.cpu_budget_ms > 0 && watch.cpu_used_ms > watch.cpu_budget_ms {
                Some(Stop::CpuBudget)
            } else {
                None
            };
            if watch.stop.is_some() {
                if self.is_interruptible() {
                    let _ = kill(self.pid, Signal::SIGINT);
                }
                watch.interrupted_at = Some(now);
            }
        }
        let grace = if self.is_interruptible() {
            INTERRUPT_GRACE
        } else {
            Duration::ZERO
        };
        // Once more halfway: an interrupt that came as the snippet was being sent may have
        // reached the kernel before it listened for it, and a program may have swallowed the
        // first (as a person presses Ctrl-C twice).
        if self.is_interruptible()
            && !watch.reminded
            && watch.interrupted_at.is_some_and(|at| now >= at + grace / 2)
        {
            watch.reminded = true;
            let _ = kill(self.pid, Signal::SIGINT);
        }
        if watch.interrupted_at.is_some_and(|at| now >= at + grace) {
            self.kill();
        }
    }
}

impl Watch {
    fn report(&self, kernel: &Kernel, wall: Duration, out: &Pipe, err: &Pipe) -> ExitReport {
        let cpu_ms = proctree::process_cpu_ms(kernel.pid).map_or(self.cpu_used_ms, |cpu| {
            cpu.saturating_sub(self.cpu_before_ms)
        });
        let (exit_code, signal, error) = match &self.end {
            Some(SnippetEnd::Finished { status, .. }) => (Some(*status), None, None),
            Some(SnippetEnd::KernelGone { why }) => match kernel.exited {
                Some(Ended::Exited(code)) => (Some(code), None, Some(why.clone())),
                Some(Ended::Signaled(signal)) => (None, Some(signal), Some(why.clone())),
                _ => (None, None, Some(why.clone())),
            },
            None => (None, None, None),
        };
        ExitReport {
            exit_code,
            signal,
            timed_out: self.stop == Some(Stop::Timeout),
            cancelled: self.stop == Some(Stop::Cancel),
            cpu_limit_exceeded: self.stop == Some(Stop::CpuBudget),
            wall_ms: wall.as_millis().try_into().unwrap_or(u64::MAX),
            cpu_ms,
            memory_peak_bytes: peak_rss(kernel.pid),
            stdout_bytes: out.cap.total(),
            stderr_bytes: err.cap.total(),
            stdout_truncated: out.cap.truncated(),
            stderr_truncated: err.cap.truncated(),
            interpreter_lost: matches!(self.end, Some(SnippetEnd::KernelGone { .. })),
            error,
            kernel: true,
            ..ExitReport::default()
        }
    }
}

/// The kernel's peak resident size so far (its whole life: preload and earlier snippets too).
fn peak_rss(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
