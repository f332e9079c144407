//! Running the program: start it, stream its output as it arrives, enforce the wall clock and
//! the CPU budget, act on a cancel, and once it is over kill and reap everything it left.
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{Pid, read};
use runner_protocol::{CHUNK_BYTES, Frame, PROTOCOL_VERSION};

use crate::emit::{CappedStream, Emitter, Stream};
use crate::proctree;
use crate::report::{Ended, Stop};
use crate::sandbox::{self, ChildLimits, Signals};

/// Everything needed to start the program and hold it to its limits.
#[derive(Clone, Debug)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub stdin: Option<PathBuf>,
    pub limits: ChildLimits,
    pub timeout: Duration,
    pub cpu_budget_ms: u64,
    pub max_output_bytes: u64,
}

pub struct Outcome {
    pub ended: Ended,
    pub stop: Option<Stop>,
    pub wall: Duration,
    pub stdout: CappedStream,
    pub stderr: CappedStream,
}

/// How often the CPU used by all of the program's processes is added up.
const CPU_CHECK_EVERY: Duration = Duration::from_millis(200);
/// After the kill: how long to wait for the pipes to close and the dead to be reaped.
const AFTER_KILL: Duration = Duration::from_secs(2);
/// Reads of one pipe in a row before the others get a turn.
const READS_PER_TURN: usize = 16;
/// How long output may wait to be gathered with more before it is written: live enough for
/// a person watching, coarse enough to bound the frames per second.
const GATHER: Duration = Duration::from_millis(20);

/// A started program (or kernel): its process, the leader of its own process group, and the
/// read ends of its stdout and stderr.
pub struct Running {
    pub pid: Pid,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Where the program's clock and CPU count from: its start, or a kernel's hand-over (the CPU
/// the kernel used before, and anything reaped before, is not the program's).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub started: Instant,
    pub cpu_baseline_ms: u64,
}

impl Clock {
    /// From now, with everything reaped so far not counted.
    pub fn now() -> Self {
        Clock {
            started: Instant::now(),
            cpu_baseline_ms: sandbox::children_usage().cpu_ms,
        }
    }
}

/// Starts `launch.argv` in the sandbox: its own session, the rlimits, a clean environment, the
/// stdin file (or nothing), its output on pipes. Why not, when it cannot be started.
pub fn spawn(launch: &Launch) -> Result<Running, String> {
    let stdin = match &launch.stdin {
        Some(path) => Stdio::from(
            File::open(path)
                .map_err(|err| format!("cannot open stdin {}: {err}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut command = Command::new(&launch.argv[0]);
    command
        .args(&launch.argv[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sandbox::configure(&mut command, launch.limits);
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", launch.argv[0]))?;
    // The child is reaped with waitpid like every other orphan; dropping the handle neither
    // waits nor kills.
    Ok(Running {
        pid: Pid::from_raw(child.id() as i32),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    })
}

/// Writes the start frame and the output frames of a running program, holds it to the limits
/// of `launch` from `clock`, and returns once it and everything it started are gone.
pub fn watch<W: Write>(
    running: Running,
    clock: Clock,
    launch: &Launch,
    signals: &Signals,
    is_pid1: bool,
    emitter: &mut Emitter<W>,
) -> io::Result<Outcome> {
    let Running {
        pid: program,
        stdout,
        stderr,
    } = running;
    let started = clock.started;
    let mut pipes = [
        Pipe::new(stdout, Stream::Stdout, launch.max_output_bytes),
        Pipe::new(stderr, Stream::Stderr, launch.max_output_bytes),
    ];
    let mut watch = Watch {
        program,
        is_pid1,
        deadline: started + launch.timeout,
        cpu_budget_ms: launch.cpu_budget_ms,
        cpu_baseline_ms: clock.cpu_baseline_ms,
        next_cpu_check: started + CPU_CHECK_EVERY,
        ended: None,
        stop: None,
        stop_requested: false,
        killed_at: None,
    };
    let watched = emitter
        .frame(&Frame::Start {
            v: PROTOCOL_VERSION,
        })
        .and_then(|()| watch.run(&mut pipes, signals, emitter));
    if watched.is_err() {
        proctree::kill_everything(program, is_pid1);
    }
    watch.reap_the_rest(signals);
    watched?;
    // Anything still gathered when the loop gave up waiting for the pipes to close.
    for pipe in &mut pipes {
        pipe.flush(emitter, Instant::now(), true)?;
    }

    let (ended, wall) = match watch.ended {
        Some((ended, at)) => (ended, at - started),
        None => (Ended::Lost, started.elapsed()),
    };
    let [stdout, stderr] = pipes.map(|p| p.cap);
    Ok(Outcome {
        ended,
        stop: watch.stop,
        wall,
        stdout,
        stderr,
    })
}

/// One of the program's output pipes, read without blocking into capped, gathered frames.
pub(crate) struct Pipe {
    pub(crate) fd: Option<OwnedFd>,
    stream: Stream,
    pub(crate) cap: CappedStream,
    /// Output read but not yet written, and since when: small writes are gathered into one
    /// frame, so a program writing a byte at a time cannot blow up the record with framing.
    pending: Vec<u8>,
    pending_since: Option<Instant>,
}

impl Pipe {
    pub(crate) fn new(fd: Option<OwnedFd>, stream: Stream, max_output_bytes: u64) -> Self {
        if let Some(fd) = &fd {
            // Reads must never block the loop that keeps the clock.
            if let Err(err) = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
                eprintln!("ci-runner: cannot make the {stream:?} pipe non-blocking: {err}");
            }
        }
        Pipe {
            fd,
            stream,
            cap: CappedStream::new(max_output_bytes),
            pending: Vec::with_capacity(CHUNK_BYTES),
            pending_since: None,
        }
    }

    /// Reads what the pipe holds, up to a turn's worth. Output over the cap is read and
    /// counted, not kept, so the program never blocks on a full pipe. Full chunks are written
    /// at once. Whether the pipe is empty (or closed) now.
    pub(crate) fn drain<W: Write>(
        &mut self,
        emitter: &mut Emitter<W>,
        now: Instant,
    ) -> io::Result<bool> {
        let Some(fd) = &self.fd else {
            return Ok(true);
        };
        let mut buf = [0u8; CHUNK_BYTES];
        let mut closed = false;
        let mut empty = false;
        for _ in 0..READS_PER_TURN {
            match read(fd, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    let admitted = self.cap.admit(&buf[..n]);
                    if !admitted.is_empty() {
                        self.pending.extend_from_slice(admitted);
                        self.pending_since.get_or_insert(now);
                    }
                    if self.pending.len() >= CHUNK_BYTES {
                        let full = self.pending.len() - self.pending.len() % CHUNK_BYTES;
                        emitter.output(self.stream, &self.pending[..full])?;
                        self.pending.drain(..full);
                    }
                }
                Err(Errno::EAGAIN) => {
                    empty = true;
                    break;
                }
                Err(Errno::EINTR) => {}
                Err(err) => {
                    eprintln!("ci-runner: reading the program's {:?}: {err}", self.stream);
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.fd = None;
        }
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        Ok(empty || closed)
    }

    /// When the gathered output is due to be written.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + GATHER)
    }

    /// Writes the gathered output if it is due, or anyway when `all`.
    pub(crate) fn flush<W: Write>(
        &mut self,
        emitter: &mut Emitter<W>,
        now: Instant,
        all: bool,
    ) -> io::Result<()> {
        let due = all || self.fd.is_none() || self.due().is_some_and(|due| now >= due);
        if due && !self.pending.is_empty() {
            emitter.output(self.stream, &self.pending)?;
            self.pending.clear();
            self.pending_since = None;
        }
        Ok(())
    }
}

struct Watch {
    program: Pid,
    is_pid1: bool,
    deadline: Instant,
    cpu_budget_ms: u64,
    cpu_baseline_ms: u64,
    next_cpu_check: Instant,
    ended: Option<(Ended, Instant)>,
    stop: Option<Stop>,
    stop_requested: bool,
    killed_at: Option<Instant>,
}

impl Watch {
    fn run<W: Write>(
        &mut self,
        pipes: &mut [Pipe; 2],
        signals: &Signals,
        emitter: &mut Emitter<W>,
    ) -> io::Result<()> {
        loop {
            // Reap before looking at the clock: a program that died just as the deadline
            // passed is reported as it died, not as timed out.
            self.stop_requested |= signals.drain().stop;
            self.reap();
            let now = Instant::now();
            let over = self.ended.is_some() || self.killed_at.is_some();
            for pipe in pipes.iter_mut() {
                let _ = pipe.drain(emitter, now)?;
                pipe.flush(emitter, now, over)?;
            }
            emitter.flush()?;

            if self.ended.is_none() && self.stop.is_none() {
                self.stop = self.should_stop(now);
            }
            if (self.stop.is_some() || self.ended.is_some()) && self.killed_at.is_none() {
                // Whatever ended it, nothing it started may outlive it: daemons would hold
                // the pipes open and keep using the pod.
                proctree::kill_everything(self.program, self.is_pid1);
                self.killed_at = Some(Instant::now());
                continue;
            }
            let pipes_open = pipes.iter().any(|p| p.fd.is_some());
            if self.ended.is_some() && !pipes_open {
                return Ok(());
            }
            let wake = match self.killed_at {
                Some(at) if now >= at + AFTER_KILL => {
                    eprintln!("ci-runner: the program's output did not close after the kill");
                    return Ok(());
                }
                Some(at) => at + AFTER_KILL,
                None if self.cpu_budget_ms > 0 => self.deadline.min(self.next_cpu_check),
                None => self.deadline,
            };
            let wake = pipes.iter().filter_map(Pipe::due).fold(wake, Instant::min);
            let mut fds = vec![PollFd::new(signals.fd(), PollFlags::POLLIN)];
            fds.extend(
                pipes
                    .iter()
                    .filter_map(|p| p.fd.as_ref())
                    .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, poll_timeout(wake.saturating_duration_since(now))) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    fn should_stop(&mut self, now: Instant) -> Option<Stop> {
        if self.stop_requested {
            return Some(Stop::Cancel);
        }
        if now >= self.deadline {
            return Some(Stop::Timeout);
        }
        if self.cpu_budget_ms > 0 && now >= self.next_cpu_check {
            self.next_cpu_check = now + CPU_CHECK_EVERY;
            let used = (sandbox::children_usage().cpu_ms + proctree::running_cpu_ms())
                .saturating_sub(self.cpu_baseline_ms);
            if used > self.cpu_budget_ms {
                return Some(Stop::CpuBudget);
            }
        }
        None
    }

    /// Reaps every child that has exited (the program, and orphans re-parented to the
    /// wrapper), keeping the program's status.
    fn reap(&mut self) {
        while let Some((pid, ended)) = reap_one(-1) {
            if let (true, Some(ended)) = (pid == self.program.as_raw(), ended) {
                self.ended = Some((ended, Instant::now()));
            }
        }
    }

    /// After the kill: waits, boundedly, until no child is left, so no zombie outlives the
    /// wrapper and the usage figures include everyone.
    fn reap_the_rest(&mut self, signals: &Signals) {
        let until = Instant::now() + AFTER_KILL;
        loop {
            self.reap();
            if !proctree::has_children() {
                return;
            }
            let now = Instant::now();
            if now >= until {
                eprintln!("ci-runner: some processes could not be reaped");
                return;
            }
            let mut fds = [PollFd::new(signals.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, poll_timeout(until - now));
            signals.drain();
        }
    }
}

/// Reaps one exited child (`pid`, or any with -1) without blocking: its pid and how it ended
/// (`None` for a stop or a continue), or `None` when none has exited.
pub(crate) fn reap_one(pid: i32) -> Option<(i32, Option<Ended>)> {
    let mut status = 0;
    // SAFETY: waitpid only writes the status into the local it is given. It is called
    // directly because nix's wrapper fails on a death by a real-time signal, which would
    // lose the program's status.
    let pid = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None; // 0: none has exited yet; -1: no such child
    }
    let ended = if libc::WIFEXITED(status) {
        Some(Ended::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Ended::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    };
    Some((pid, ended))
}

pub(crate) fn poll_timeout(wait: Duration) -> PollTimeout {
    // Round up: waking a moment early would only spin.
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
