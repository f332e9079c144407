//! The runs' thread: it owns the container's interpreters, one per language, started on the
//! first run of the language and kept, with their state, until one is lost. A run writes its
//! program to the job folder, lists the data folder, runs the program in its interpreter (a
//! limit or an `interrupt` interrupts it; one that does not stop, or dies, is lost), lists the
//! folder again and sends what changed. Between runs it drains and drops whatever the
//! interpreters write (a thread a program left running), so none of it reaches a record, and
//! reaps the orphans the container collects.
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, PipeReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use runner_protocol::{
    EffectiveLimits, ExitReport, Frame, Job, Language, PROTOCOL_VERSION, SkipReason,
    validate_relative_name,
};

use super::files;
use super::snapshot::{Changes, Snapshot};
use super::transcript::{Transcript, is_restart};
use crate::cgroup::Cgroup;
use crate::collect::{Caps, Kind, Tally, kind};
use crate::emit::Emitter;
use crate::job::STDIN_FILE;
use crate::kernel::{INTERRUPT_GRACE, Kernel, KernelSpec, SnippetEnd};
use crate::sandbox::ChildLimits;
use crate::settings::PROGRAM_TMP;
use crate::supervise::reap_one;
use crate::{disk, proctree};

/// Removed frames in one record, at most (the reader keeps fewer).
const MAX_REMOVED_FRAMES: usize = 1000;

/// A run whose payload has arrived whole: its input files are in place.
pub(crate) struct Staged {
    pub(crate) job: Job,
    pub(crate) source: Vec<u8>,
    pub(crate) stdin: Vec<u8>,
}

/// Where runs happen and what their interpreters are started with.
pub(crate) struct Setup {
    pub(crate) data_dir: PathBuf,
    pub(crate) job_dir: PathBuf,
    pub(crate) kernels_dir: PathBuf,
    pub(crate) program_path: String,
    pub(crate) python_preload: Vec<String>,
    pub(crate) ready_timeout: Duration,
    pub(crate) cgroup: Option<Cgroup>,
}

pub(crate) struct Worker {
    setup: Setup,
    transcript: Arc<Transcript>,
    kernels: HashMap<Language, Kernel>,
    runs: Receiver<Staged>,
    wake: PipeReader,
}

impl Worker {
    pub(crate) fn new(
        setup: Setup,
        transcript: Arc<Transcript>,
        runs: Receiver<Staged>,
        wake: PipeReader,
    ) -> Self {
        Worker {
            setup,
            transcript,
            kernels: HashMap::new(),
            runs,
            wake,
        }
    }

    /// Runs what arrives until the server hangs up; the interpreters are killed on the way out.
    pub(crate) fn serve(mut self) {
        loop {
            match self.runs.try_recv() {
                Ok(staged) => {
                    if let Err(err) = self.run(staged) {
                        eprintln!("ci-runner: the run's record could not be written: {err}");
                    }
                    self.reap_orphans();
                }
                Err(TryRecvError::Empty) => self.idle(),
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Waits for a run, meanwhile dropping what the interpreters write and noticing one that
    /// ends (a program's thread that called `os._exit`, the OOM killer).
    fn idle(&mut self) {
        let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
        for kernel in self.kernels.values() {
            let theirs = kernel.idle_fds();
            fds.extend(
                theirs
                    .into_iter()
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
            );
        }
        let _ = poll(&mut fds, PollTimeout::NONE);
        drop(fds);
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        let mut lost = Vec::new();
        for (language, kernel) in &mut self.kernels {
            if let Err(err) = kernel.tend() {
                eprintln!(
                    "ci-runner: the {} interpreter ended between runs ({err}); the next run of \
                     the language starts a fresh one",
                    name(*language)
                );
                kernel.kill_leftovers();
                lost.push(*language);
            }
        }
        for language in lost {
            self.kernels.remove(&language);
        }
        self.reap_orphans();
    }

    /// Reaps the container's exited processes, but not an interpreter: its own supervision
    /// reaps it, and must see how it ended.
    fn reap_orphans(&self) {
        let kernels: Vec<u32> = self.kernels.values().map(Kernel::id).collect();
        for pid in proctree::exited_children() {
            if !kernels.contains(&pid.unsigned_abs()) {
                let _ = reap_one(pid);
            }
        }
    }

    /// Writes the record of one run, from `start` to `end` (the server wrote its `run`).
    fn run(&mut self, staged: Staged) -> io::Result<()> {
        let Staged { job, source, stdin } = staged;
        let language = job.language;
        let mut head = Emitter::new(self.transcript.writer(None));
        let script = self
            .kernel_for(language, &job.limits)
            .and_then(|()| self.stage(language, &source, &stdin));
        let script = match script {
            Ok(script) => script,
            Err(error) => {
                eprintln!("ci-runner: {error}");
                head.frame(&Frame::Start {
                    v: PROTOCOL_VERSION,
                })?;
                head.frame(&Frame::Exit(ExitReport {
                    error: Some(error),
                    ..ExitReport::default()
                }))?;
                return self.send_files(&Changes::default(), &job.limits);
            }
        };
        let before = Snapshot::take(&self.setup.data_dir);
        let kernel = self.kernels.get_mut(&language).expect("started above");
        if self.transcript.arm(kernel.interrupter()) {
            let setup = &self.setup;
            let interruptible = kernel.is_interruptible();
            let oom_kills = setup.cgroup.as_ref().and_then(Cgroup::oom_kills);
            let outcome =
                kernel.run_snippet_with(&script, &job.limits, &mut head, |end, report| {
                    setup.account(language, interruptible, oom_kills, end, report);
                });
            self.transcript.disarm(|| kernel.clear_interrupt());
            let gone = match outcome {
                Ok(outcome) => matches!(outcome.end, SnippetEnd::KernelGone { .. }),
                Err(err) => {
                    // The program may still be running: its interpreter goes.
                    eprintln!("ci-runner: the run's record broke off: {err}");
                    true
                }
            };
            if gone {
                kernel.kill_leftovers();
                self.kernels.remove(&language);
            }
        } else {
            cancelled_before_it_ran(&mut head)?;
        }
        let changes = before.changes(&Snapshot::take(&self.setup.data_dir));
        self.send_files(&changes, &job.limits)
    }

    /// Makes sure the language's interpreter is there, starting one if not.
    fn kernel_for(&mut self, language: Language, limits: &EffectiveLimits) -> Result<(), String> {
        if let Some(kernel) = self.kernels.get_mut(&language) {
            match kernel.tend() {
                Ok(()) => return Ok(()),
                Err(err) => {
                    eprintln!(
                        "ci-runner: the {} interpreter ended ({err})",
                        name(language)
                    );
                    kernel.kill_leftovers();
                    self.kernels.remove(&language);
                }
            }
        }
        let kernel = self
            .setup
            .start_kernel(language, limits)
            .map_err(|err| format!("cannot start the {} interpreter: {err}", name(language)))?;
        self.kernels.insert(language, kernel);
        Ok(())
    }

    /// Writes the program and its stdin to the job folder; the program's path.
    fn stage(&self, language: Language, source: &[u8], stdin: &[u8]) -> Result<PathBuf, String> {
        let job_dir = &self.setup.job_dir;
        let script = job_dir.join(language.source_file());
        std::fs::write(&script, source)
            .map_err(|err| format!("cannot write {}: {err}", script.display()))?;
        // Every interpreter holds this file open as its fd 0 and rewinds it before a program
        // runs: it is written in place, never replaced.
        let path = job_dir.join(STDIN_FILE);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|mut file| {
                file.set_len(0)?;
                file.write_all(stdin)
            })
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(script)
    }

    /// Sends the run's files and its `end`; all over again from the first file whenever a
    /// reader syncs meanwhile.
    fn send_files(&self, changes: &Changes, limits: &EffectiveLimits) -> io::Result<()> {
        loop {
            let round = self.transcript.begin_files();
            let mut emitter = Emitter::new(self.transcript.writer(Some(round)));
            match send_changes(&self.setup.data_dir, changes, limits, &mut emitter) {
                Err(err) if is_restart(&err) => continue,
                Err(err) => eprintln!("ci-runner: the run's files could not all be sent: {err}"),
                Ok(()) => {}
            }
            match self.transcript.end(round) {
                Err(err) if is_restart(&err) => continue,
                ended => return ended,
            }
        }
    }
}

impl Setup {
    /// Starts an interpreter for `language` in the container's sandbox, ready for programs,
    /// with the limits of the run that starts it for its whole life (an unprivileged process
    /// cannot raise them again). Its CPU is not limited by RLIMIT_CPU, which would kill it: a
    /// run's CPU budget interrupts the run instead.
    fn start_kernel(&self, language: Language, limits: &EffectiveLimits) -> Result<Kernel, String> {
        let preload = match language {
            Language::Python => self.python_preload.clone(),
            Language::Node | Language::Ruby | Language::Php => Vec::new(),
        };
        let spec = KernelSpec {
            language,
            preload,
            kernels_dir: self.kernels_dir.clone(),
            job_dir: self.job_dir.clone(),
            work_dir: self.data_dir.clone(),
            program_path: self.program_path.clone(),
        };
        let mut kernel = Kernel::start(&spec).map_err(|err| err.to_string())?;
        kernel
            .wait_ready(self.ready_timeout)
            .map_err(|err| err.to_string())?;
        let lasting = ChildLimits {
            cpu_soft_secs: u64::MAX,
            cpu_hard_secs: u64::MAX,
            ..ChildLimits::for_job(limits)
        };
        kernel
            .limit(lasting)
            .map_err(|err| format!("cannot set its limits: {err}"))?;
        Ok(kernel)
    }

    /// What the exit report says that only the container knows: that the interpreter was
    /// lost and why, an OOM kill, a full disk.
    fn account(
        &self,
        language: Language,
        interruptible: bool,
        oom_kills_before: Option<u64>,
        end: &SnippetEnd,
        report: &mut ExitReport,
    ) {
        if let SnippetEnd::KernelGone { why } = end {
            let stopped = report.timed_out || report.cancelled || report.cpu_limit_exceeded;
            let oom_kills = self.cgroup.as_ref().and_then(Cgroup::oom_kills);
            let oom_rose = matches!((oom_kills_before, oom_kills), (Some(b), Some(a)) if a > b);
            report.oom_killed = oom_rose && !stopped && report.signal == Some(9);
            report.error = Some(lost(language, why, interruptible, report));
        }
        let volumes = [self.data_dir.as_path(), Path::new(PROGRAM_TMP)];
        report.disk_full =
            report.exit_code != Some(0) && volumes.into_iter().any(disk::nearly_full);
    }
}

/// Why a run's interpreter is gone, for a person.
fn lost(language: Language, why: &str, interruptible: bool, report: &ExitReport) -> String {
    let stopped = report.timed_out || report.cancelled || report.cpu_limit_exceeded;
    let cause = if why.contains("protocol") {
        why.to_string()
    } else if stopped && !interruptible {
        "it cannot be interrupted, so it was killed".to_string()
    } else if stopped {
        format!(
            "it did not stop within {} s of the interrupt and was killed",
            INTERRUPT_GRACE.as_secs()
        )
    } else if report.oom_killed {
        "it ran out of memory and was killed".to_string()
    } else if let Some(code) = report.exit_code {
        format!("it exited with status {code}")
    } else if let Some(signal) = report.signal {
        format!("it was killed by signal {signal}")
    } else {
        why.to_string()
    };
    let name = name(language);
    format!(
        "the {name} interpreter is gone ({cause}): its state is lost, and the next {name} run \
         starts a fresh one with the files as they are"
    )
}

fn name(language: Language) -> &'static str {
    match language {
        Language::Python => "Python",
        Language::Node => "Node.js",
        Language::Ruby => "Ruby",
        Language::Php => "PHP",
    }
}

/// The record of a run interrupted before its program ran.
fn cancelled_before_it_ran<W: Write>(head: &mut Emitter<W>) -> io::Result<()> {
    head.frame(&Frame::Start {
        v: PROTOCOL_VERSION,
    })?;
    head.frame(&Frame::Exit(ExitReport {
        cancelled: true,
        kernel: true,
        ..ExitReport::default()
    }))
}

/// The files a run created or changed, as `file` and `data` frames under their path in the
/// data folder, within the caps and refusals of the one-shot collection; then what it removed.
fn send_changes<W: Write>(
    data_dir: &Path,
    changes: &Changes,
    limits: &EffectiveLimits,
    emitter: &mut Emitter<W>,
) -> io::Result<()> {
    let mut tally = Tally::new(Caps::from(limits));
    for path in &changes.changed {
        let Ok(rel) = std::str::from_utf8(path) else {
            let lossy = String::from_utf8_lossy(path);
            tally.skip(
                &lossy,
                SkipReason::InvalidName,
                "name is not valid UTF-8",
                emitter,
            )?;
            continue;
        };
        if let Err(why) = validate_relative_name(rel) {
            let detail = format!("invalid name: {why}");
            tally.skip(rel, SkipReason::InvalidName, &detail, emitter)?;
            continue;
        }
        // Gone again since the listing: nothing to send (and nothing to say it was removed).
        let Some((dir, leaf, stat)) = files::stat(data_dir, rel) else {
            continue;
        };
        match kind(&stat) {
            Kind::File => tally.file(&dir, &leaf, rel, &stat, emitter)?,
            Kind::Dir => {}
            Kind::Other(what) => {
                tally.skip(
                    rel,
                    SkipReason::NotAFile,
                    &format!("{what} refused"),
                    emitter,
                )?;
            }
        }
    }
    if changes.incomplete {
        let detail = "the folder has too many entries: some were not looked at";
        tally.skip("...", SkipReason::NotWalked, detail, emitter)?;
    }
    tally.finish(emitter)?;
    for name in changes.removed.iter().take(MAX_REMOVED_FRAMES) {
        emitter.frame(&Frame::Removed { name: name.clone() })?;
    }
    emitter.flush()
}
