//! Kernels: an interpreter the wrapper starts before its job, inside the same sandbox as a
//! program (spawned by [`supervise::spawn`] like one: same session, rlimits, environment,
//! working directory, OOM score and seccomp), that imports what it is told to and waits for
//! code. It then either becomes the job's program, indistinguishable from a fresh interpreter
//! but for its speed ([`Kernel::hand_over`], one-shot pool pods), or runs snippets one after
//! another in one namespace that persists ([`Kernel::run_snippet`], containers). The drivers
//! and the control protocol are in `runners/kernels` (its README is the one description).
mod control;
mod session;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, read};
use runner_protocol::Language;

pub use control::How;
pub(crate) use session::INTERRUPT_GRACE;
pub use session::{SnippetEnd, SnippetOutcome};

use crate::job::{self, STDIN_FILE};
use crate::proctree;
use crate::report::Ended;
use crate::sandbox::{self, ChildLimits};
use crate::settings::Settings;
use crate::supervise::{self, Clock, Launch, Running, poll_timeout, reap_one};
use control::{CONTROL_ENV, Channel, FromKernel, ToKernel};

/// How often a waiting wrapper looks whether the kernel is still alive (its pipes may be held
/// open by something it started).
const LIVENESS: Duration = Duration::from_millis(100);

/// What a kernel is started with.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub language: Language,
    /// Modules (Python), module specifiers (Node.js), features (Ruby) or files (PHP) to load
    /// before it is ready.
    pub preload: Vec<String>,
    /// Where the drivers are: `<kernels_dir>/<language>/`.
    pub kernels_dir: PathBuf,
    /// Where the job's source and stdin are written (the kernel's fd 0 is `stdin` there, and
    /// its control channel lives there until it is ready).
    pub job_dir: PathBuf,
    /// Its working directory, and the program's `HOME`.
    pub work_dir: PathBuf,
    /// The program's `PATH`.
    pub program_path: String,
}

impl KernelSpec {
    /// A kernel for the job folders and `PATH` of the wrapper's settings.
    pub fn new(
        language: Language,
        preload: Vec<String>,
        kernels_dir: &Path,
        settings: &Settings,
    ) -> Self {
        KernelSpec {
            language,
            preload,
            kernels_dir: kernels_dir.into(),
            job_dir: settings.job_dir.clone(),
            work_dir: settings.work_dir.clone(),
            program_path: settings.program_path.clone(),
        }
    }

    /// The kernel's command line and what it adds to the program's environment.
    fn command(&self, control: &Path) -> (Vec<String>, Vec<(String, String)>) {
        let source = self.job_dir.join(self.language.source_file());
        let source = source.to_string_lossy().into_owned();
        let dir = self.kernels_dir.join(self.language.as_str());
        let driver = |file: &str| dir.join(file).to_string_lossy().into_owned();
        let mut env = vec![(CONTROL_ENV.to_string(), control.to_string_lossy().into())];
        let argv = match self.language {
            // Exactly the program's command line: `site` imports the driver before CPython
            // opens the script.
            Language::Python => {
                env.push(("PYTHONPATH".into(), dir.to_string_lossy().into()));
                self.language.command(&source)
            }
            Language::Node => vec![
                "node".into(),
                "--require".into(),
                driver("kernel.js"),
                source,
            ],
            Language::Ruby => vec!["ruby".into(), driver("kernel.rb"), source],
            Language::Php => vec![
                "php".into(),
                "-d".into(),
                format!("auto_prepend_file={}", driver("kernel.php")),
                source,
            ],
        };
        (argv, env)
    }
}

/// Why a kernel cannot be used.
#[derive(Debug)]
pub enum KernelError {
    /// It could not be started.
    Start(String),
    /// It is gone.
    Exited(Ended),
    /// It did not say it was ready in time.
    NotReady(Duration),
    /// It said something it should not have, or the channel failed.
    Protocol(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Start(why) => write!(f, "the kernel could not start: {why}"),
            KernelError::Exited(Ended::Exited(code)) => write!(f, "the kernel exited ({code})"),
            KernelError::Exited(Ended::Signaled(signal)) => {
                write!(f, "the kernel was killed by signal {signal}")
            }
            KernelError::Exited(Ended::Lost) => write!(f, "the kernel is gone"),
            KernelError::NotReady(after) => {
                write!(f, "the kernel was not ready after {} ms", after.as_millis())
            }
            KernelError::Protocol(why) => write!(f, "the kernel broke its protocol: {why}"),
        }
    }
}

impl std::error::Error for KernelError {}

impl From<io::Error> for KernelError {
    fn from(err: io::Error) -> Self {
        KernelError::Protocol(err.to_string())
    }
}

/// A running kernel. Dropping it kills it (its whole process group) and reaps it, unless it
/// was handed over to become a program.
pub struct Kernel {
    language: Language,
    pid: Pid,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    channel: Channel,
    /// `Some(interruptible)` once it said `ready`.
    ready: Option<bool>,
    exited: Option<Ended>,
    shared: Arc<Shared>,
    handed_over: bool,
}

/// What an [`Interrupter`] shares with its kernel.
#[derive(Debug, Default)]
struct Shared {
    interrupt_requested: AtomicBool,
    reaped: AtomicBool,
}

/// Interrupts a kernel's running snippet from another thread: SIGINT, as a timeout does. An
/// interrupt made while no snippet runs holds for the next one (so one made while a snippet is
/// being sent is not lost), until the kernel's interrupt is cleared.
#[derive(Clone, Debug)]
pub struct Interrupter {
    pid: Pid,
    shared: Arc<Shared>,
}

impl Interrupter {
    pub fn interrupt(&self) {
        // Never signal a pid that may have been reused.
        if !self.shared.reaped.load(Ordering::SeqCst) {
            self.shared
                .interrupt_requested
                .store(true, Ordering::SeqCst);
            let _ = kill(self.pid, Signal::SIGINT);
        }
    }
}

/// A kernel that became the job's program: hand these to [`supervise::watch`].
pub(crate) struct HandedOver {
    pub running: Running,
    /// From `run`: the wall clock, and the CPU used before it (not the program's).
    pub clock: Clock,
    /// RLIMIT_CPU's hard limit, counted from the hand-over (a SIGKILL past it came from it).
    pub cpu_hard_limit_ms: u64,
}

impl Kernel {
    /// Starts the kernel and tells it what to preload; [`Kernel::wait_ready`] waits for that.
    pub fn start(spec: &KernelSpec) -> Result<Kernel, KernelError> {
        let start =
            |what: &str, err: &dyn fmt::Display| KernelError::Start(format!("{what}: {err}"));
        // The kernel holds fd 0 on the job's stdin file before the job's stdin is written into
        // it (the same file: written in place, never replaced), and PHP opens the script when
        // it starts but reads it only at the hand-over.
        let stdin = spec.job_dir.join(STDIN_FILE);
        let source = spec.job_dir.join(spec.language.source_file());
        for placeholder in [&stdin, &source] {
            File::create(placeholder).map_err(|e| start(&placeholder.to_string_lossy(), &e))?;
        }
        let channel = Channel::create(&spec.job_dir).map_err(|e| start("control", &e))?;
        let control = channel.dir().expect("a new channel has its folder");
        let (argv, extra_env) = spec.command(control);
        let mut env = job::program_env(spec.language, &spec.work_dir, &spec.program_path);
        env.extend(extra_env);
        let launch = Launch {
            argv,
            env,
            cwd: spec.work_dir.clone(),
            stdin: Some(stdin),
            limits: ChildLimits::before_job(),
            timeout: Duration::ZERO,
            cpu_budget_ms: 0,
            max_output_bytes: 0,
        };
        let running = supervise::spawn(&launch).map_err(KernelError::Start)?;
        // From here on, an error drops the kernel, which kills it.
        let mut kernel = Kernel {
            language: spec.language,
            pid: running.pid,
            stdout: running.stdout,
            stderr: running.stderr,
            channel,
            ready: None,
            exited: None,
            shared: Arc::default(),
            handed_over: false,
        };
        for fd in [&kernel.stdout, &kernel.stderr].into_iter().flatten() {
            // Read without blocking while the kernel waits: its output is discarded.
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| start("pipe", &e))?;
        }
        kernel
            .channel
            .send(&ToKernel::Preload(&spec.preload))
            .map_err(|e| start("control", &e))?;
        kernel.check_alive()?;
        Ok(kernel)
    }

    pub fn language(&self) -> Language {
        self.language
    }

    /// The kernel's process id (the leader of its own process group), as `Child::id`.
    pub fn id(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Whether SIGINT ends a running snippet and keeps the state (known once ready).
    pub fn is_interruptible(&self) -> bool {
        self.ready == Some(true)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.is_some() && self.exited.is_none()
    }

    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            pid: self.pid,
            shared: self.shared.clone(),
        }
    }

    /// Forgets an interrupt made while no snippet ran.
    pub(crate) fn clear_interrupt(&self) {
        self.shared
            .interrupt_requested
            .store(false, Ordering::SeqCst);
    }

    /// What to wait on while the kernel idles between snippets: its channel and its output.
    pub(crate) fn idle_fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.channel.fd())
            .chain(
                [&self.stdout, &self.stderr]
                    .into_iter()
                    .flatten()
                    .map(|fd| fd.as_fd()),
            )
            .collect()
    }

    /// Between snippets: drops what the kernel (a thread a snippet left running) wrote, acts on
    /// its messages, and says whether it is still there.
    pub(crate) fn tend(&mut self) -> Result<(), KernelError> {
        self.discard_output();
        self.handle_messages(false)?;
        self.check_alive()
    }

    /// Kills what is left of the kernel's process group once it is gone (a process it started
    /// that outlived it). Only right after it was reaped: the group's id is not reused while a
    /// member lives, but may be once none does.
    pub(crate) fn kill_leftovers(&self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
    }

    /// Puts lasting limits on a kernel that serves snippets (see [`sandbox::lower_limits`]).
    pub(crate) fn limit(&self, limits: ChildLimits) -> std::io::Result<()> {
        let used_ms = proctree::process_cpu_ms(self.pid).unwrap_or(0);
        sandbox::lower_limits(self.pid, limits, used_ms).map(drop)
    }

    /// Waits until the kernel says it is ready (its preloading done), discarding its output.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), KernelError> {
        let deadline = Instant::now() + timeout;
        while self.ready.is_none() {
            self.check_alive()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(KernelError::NotReady(timeout));
            }
            self.idle(None, Some(deadline.min(now + LIVENESS)))?;
        }
        self.check_alive()
    }

    /// Waits until `input` is readable (the job is arriving), meanwhile discarding what the
    /// kernel writes, so that a noisy preload never blocks on a full pipe.
    pub(crate) fn idle_until_readable(&mut self, input: BorrowedFd<'_>) -> Result<(), KernelError> {
        while !self.idle(Some(input), None)? {}
        Ok(())
    }

    /// One-shot: makes the kernel the job's program. Whatever the preload wrote is discarded,
    /// the job's limits are put on the process (CPU counted from now), and `run` is sent; the
    /// clock starts as it is sent.
    pub(crate) fn hand_over(
        mut self,
        args: &[String],
        stdin: bool,
        limits: ChildLimits,
    ) -> Result<HandedOver, KernelError> {
        if self.ready.is_none() {
            return Err(KernelError::Protocol(
                "handed over before it was ready".into(),
            ));
        }
        self.check_alive()?;
        self.discard_output();
        let used_ms = proctree::process_cpu_ms(self.pid).ok_or(KernelError::Exited(Ended::Lost))?;
        let cpu_hard_secs = sandbox::lower_limits(self.pid, limits, used_ms)
            .map_err(|err| KernelError::Protocol(format!("cannot set its limits: {err}")))?;
        let clock = Clock {
            started: Instant::now(),
            cpu_baseline_ms: sandbox::children_usage().cpu_ms + used_ms,
        };
        self.channel.send(&ToKernel::Run { stdin, args })?;
        self.handed_over = true;
        Ok(HandedOver {
            running: Running {
                pid: self.pid,
                stdout: self.stdout.take(),
                stderr: self.stderr.take(),
            },
            clock,
            cpu_hard_limit_ms: cpu_hard_secs.saturating_mul(1000).saturating_sub(used_ms),
        })
    }

    /// Waits for the kernel's channel, its output, `input` (if any) or `until`, whichever
    /// first; discards the output and acts on the messages. Whether `input` is readable.
    fn idle(
        &mut self,
        input: Option<BorrowedFd<'_>>,
        until: Option<Instant>,
    ) -> Result<bool, KernelError> {
        let timeout = match until {
            Some(until) => poll_timeout(until.saturating_duration_since(Instant::now())),
            None => nix::poll::PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(self.channel.fd(), PollFlags::POLLIN)];
        fds.extend(input.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        fds.extend(
            [&self.stdout, &self.stderr]
                .into_iter()
                .flatten()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(KernelError::Protocol(format!("poll: {err}"))),
        }
        let input_ready = input.is_some() && fds[1].any().unwrap_or(false);
        drop(fds);
        self.discard_output();
        self.handle_messages(false)?;
        Ok(input_ready)
    }

    /// Acts on what the kernel said; `done` only belongs to a running snippet (`in_snippet`),
    /// whose end is returned.
    fn handle_messages(&mut self, in_snippet: bool) -> Result<Option<(i32, How)>, KernelError> {
        let mut done = None;
        for message in self.channel.receive().map_err(KernelError::Protocol)? {
            match message {
                FromKernel::Note(note) => eprintln!("ci-runner: kernel: {note}"),
                FromKernel::Ready { interruptible } if self.ready.is_none() => {
                    self.ready = Some(interruptible);
                    // Both FIFOs are open by now.
                    self.channel.remove_dir();
                }
                FromKernel::Done { status, how } if in_snippet && done.is_none() => {
                    done = Some((status, how));
                }
                other => return Err(KernelError::Protocol(format!("unexpected {other:?}"))),
            }
        }
        Ok(done)
    }

    /// Reads and drops whatever the kernel has written so far.
    fn discard_output(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        for slot in [&mut self.stdout, &mut self.stderr] {
            while let Some(fd) = slot {
                match read(&*fd, &mut buf) {
                    Ok(0) => *slot = None,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(_) => *slot = None,
                }
            }
        }
    }

    /// Reaps the kernel if it has exited; an error once it has.
    fn check_alive(&mut self) -> Result<(), KernelError> {
        if self.exited.is_none()
            && let Some((_, Some(ended))) = reap_one(self.pid.as_raw())
        {
            self.shared.reaped.store(true, Ordering::SeqCst);
            self.exited = Some(ended);
        }
        match self.exited {
            Some(ended) => Err(KernelError::Exited(ended)),
            None => Ok(()),
        }
    }

    /// Kills the kernel and everything in its process group, and reaps it.
    fn kill(&mut self) -> Ended {
        if let Some(ended) = self.exited {
            return ended;
        }
        let _ = killpg(self.pid, Signal::SIGKILL);
        let ended = loop {
            match nix::sys::wait::waitpid(self.pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break Ended::Exited(code),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                    break Ended::Signaled(signal as i32);
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break Ended::Lost,
            }
        };
        self.shared.reaped.store(true, Ordering::SeqCst);
        self.exited = Some(ended);
        ended
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if !self.handed_over {
            self.kill();
        }
    }
}

/// The one-shot path of a pool pod: hands the job to the kernel started before it, or says why
/// it cannot (the wrapper then starts a fresh interpreter, and the kernel is gone by then).
pub(crate) fn one_shot(
    kernel: Kernel,
    job: &runner_protocol::Job,
    launch: &Launch,
    ready_timeout: Duration,
) -> Result<HandedOver, KernelError> {
    let mut kernel = kernel;
    if job.language != kernel.language {
        return Err(KernelError::Start(format!(
            "the job is {} but the kernel {}",
            job.language.as_str(),
            kernel.language.as_str()
        )));
    }
    kernel.wait_ready(ready_timeout)?;
    kernel.hand_over(&job.args, job.stdin_bytes.is_some(), launch.limits)
}

/// What a kernel's placeholders leave in the job folder that a fresh program would not find:
/// the stdin file of a job without stdin, the source file of another language.
pub(crate) fn tidy_job_dir(job_dir: &Path, kernel: Language, job: &runner_protocol::Job) {
    if job.stdin_bytes.is_none() {
        let _ = std::fs::remove_file(job_dir.join(STDIN_FILE));
    }
    if job.language != kernel {
        let _ = std::fs::remove_file(job_dir.join(kernel.source_file()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(language: Language) -> KernelSpec {
        KernelSpec {
            language,
            preload: Vec::new(),
            kernels_dir: "/k".into(),
            job_dir: "/job".into(),
            work_dir: "/work".into(),
            program_path: "/usr/bin".into(),
        }
    }

    #[test]
    fn each_kernel_is_started_on_the_jobs_script_or_as_it() {
        let control = Path::new("/job/.c");
        let (argv, env) = spec(Language::Python).command(control);
        assert_eq!(argv, ["python3", "-u", "/job/main.py"]);
        assert_eq!(
            env,
            [
                (CONTROL_ENV.to_string(), "/job/.c".to_string()),
                ("PYTHONPATH".into(), "/k/python".into())
            ]
        );
        let (argv, _) = spec(Language::Node).command(control);
        assert_eq!(
            argv,
            ["node", "--require", "/k/node/kernel.js", "/job/main.js"]
        );
        let (argv, _) = spec(Language::Ruby).command(control);
        assert_eq!(argv, ["ruby", "/k/ruby/kernel.rb", "/job/main.rb"]);
        let (argv, env) = spec(Language::Php).command(control);
        assert_eq!(
            argv,
            [
                "php",
                "-d",
                "auto_prepend_file=/k/php/kernel.php",
                "/job/main.php"
            ]
        );
        assert_eq!(env.len(), 1);
    }
}
