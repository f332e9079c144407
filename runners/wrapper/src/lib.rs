//! `ci-runner`: the entrypoint of a runner container.
//!
//! It waits for its job on stdin (the operator attaches and writes it; a pod of the warm pool
//! waits there until it is claimed), writes the input files into `/work`, runs the
//! interpreter under limits, streams the program's output as framed lines on its own
//! stdout (the container log the operator reads back), reports how the program ended and what
//! it used, collects `/work/outputs`, and ends the record. The frames are those of
//! [`runner_protocol`]; the operator validates them as untrusted input.
//!
//! The wrapper is normally PID 1 of the container: it reaps every orphan and, once the program
//! is over, kills everything left in the container.
//!
//! A pool pod may ask for a kernel (`CI_RUNNER_KERNEL`, see [`kernel`]): the interpreter is
//! started, with its modules imported, before the job arrives, and the job's program runs in it.
//!
//! A container's pod (`CI_RUNNER_MODE=container`) makes it a long-lived server instead: runs,
//! file operations and new readers arrive on stdin for as long as it is open, and the programs
//! run in one interpreter per language that keeps its state between runs (see `container.rs`).

mod cgroup;
mod collect;
mod container;
mod disk;
mod emit;
mod job;
pub mod kernel;
mod proctree;
mod report;
mod sandbox;
mod settings;
mod supervise;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use runner_protocol::{ExitReport, Frame, Job, PROTOCOL_VERSION};

pub use emit::Emitter;
pub use kernel::{Kernel, KernelError, KernelSpec};
pub use settings::{ContainerSettings, KernelSettings, Settings, default_preload};

use crate::kernel::HandedOver;
use crate::supervise::{Clock, Launch, Running};

/// Runs the job described by the environment (see [`Settings::from_env`]) and writes the
/// record to stdout. Exits 0 whenever a complete record was written, whatever the program did.
pub fn main() -> ExitCode {
    let settings = Settings::from_env();
    let signals = match sandbox::harden_self() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("ci-runner: cannot set up the process: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(container) = &settings.container {
        return container::serve(&settings, container, signals);
    }
    let stdout = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(err) => {
            eprintln!("ci-runner: no stdout: {err}");
            return ExitCode::from(2);
        }
    };
    let mut emitter = Emitter::new(BufWriter::with_capacity(64 * 1024, stdout));
    match run(&settings, &signals, &mut emitter) {
        Ok(()) => {
            until_read(READER_WAIT);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ci-runner: cannot write the record: {err}");
            ExitCode::FAILURE
        }
    }
}

/// How long a finished record waits for its reader before the wrapper exits anyway.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the reader of the record is done with it: its attach session ends (the pod's
/// stdin is `stdinOnce`, so that closes stdin) or it writes anything, or `wait` passes. The
/// container's exit ends its attach streams, and bytes still on their way to the reader
/// were lost with them (a 100 MiB output file cut short under load); the log keeps them, but
/// is rotated long before that size. A reader that follows the log instead (after a leader
/// change) has no session: stdin closed with the last one, and the wait is over at once.
fn until_read(wait: std::time::Duration) {
    use nix::poll::{PollFd, PollFlags, poll};
    let stdin = io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, supervise::poll_timeout(wait));
}

fn run<W: Write>(
    settings: &Settings,
    signals: &sandbox::Signals,
    emitter: &mut Emitter<W>,
) -> io::Result<()> {
    let kernel = standby_kernel(settings);
    let job = match job::receive(
        &mut BufReader::new(io::stdin().lock()),
        settings,
        kernel.is_none(),
    ) {
        Ok(job) => job,
        Err(err) => return not_started(emitter, err.message, err.cut_short),
    };
    let launch = job::launch(&job, settings);
    let cgroup = settings.cgroup.as_deref().map(cgroup::Cgroup::new);
    let oom_kills_before = cgroup.as_ref().and_then(|c| c.oom_kills());

    let started = match start_program(kernel, &job, &launch, settings) {
        Ok(started) => started,
        Err(err) => return not_started(emitter, err, false),
    };
    let outcome = supervise::watch(
        started.running,
        started.clock,
        &launch,
        signals,
        settings.is_pid1,
        emitter,
    )?;

    let usage = sandbox::children_usage();
    let disk_full = [
        settings.work_dir.as_path(),
        std::path::Path::new(settings::PROGRAM_TMP),
    ]
    .into_iter()
    .any(disk::nearly_full);
    let oom_kills_after = cgroup.as_ref().and_then(|c| c.oom_kills());
    let facts = report::Facts {
        ended: outcome.ended,
        stop: outcome.stop,
        wall: outcome.wall,
        cpu_ms: usage.cpu_ms.saturating_sub(started.clock.cpu_baseline_ms),
        cpu_hard_limit_ms: started.cpu_hard_limit_ms,
        memory_peak_bytes: cgroup
            .as_ref()
            .and_then(|c| c.memory_peak())
            .unwrap_or(usage.max_rss_bytes),
        oom_kills_rose: match (oom_kills_before, oom_kills_after) {
            (Some(before), Some(after)) => after > before,
            _ => false,
        },
        disk_full,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        kernel: started.kernel,
    };
    emitter.frame(&Frame::Exit(report::exit_report(&facts)))?;
    emitter.flush()?;

    collect::outputs(
        &settings.work_dir.join("outputs"),
        collect::Caps::from(&job.limits),
        emitter,
    )?;
    emitter.frame(&Frame::End)?;
    emitter.flush()
}

/// The pod's kernel, started and preloading while the wrapper waits for the job, or `None`
/// (none asked for, or it could not start: said on stderr, and the job runs fresh).
fn standby_kernel(settings: &Settings) -> Option<Kernel> {
    let wanted = settings.kernel.as_ref()?;
    // matplotlib's cache must be in /tmp before the kernel imports it.
    job::seed_tmp(settings);
    let started = wanted
        .language()
        .map_err(KernelError::Start)
        .and_then(|language| {
            let spec = KernelSpec::new(
                language,
                wanted.preload(language),
                &wanted.kernels_dir,
                settings,
            );
            let mut kernel = Kernel::start(&spec)?;
            kernel.idle_until_readable(io::stdin().as_fd())?;
            Ok(kernel)
        });
    started
        .inspect_err(|err| eprintln!("ci-runner: no kernel for the job: {err}"))
        .ok()
}

/// The program as it was started, and what its report counts from.
struct Started {
    running: Running,
    clock: Clock,
    cpu_hard_limit_ms: u64,
    kernel: bool,
}

/// Hands the job to the kernel, or starts a fresh interpreter when there is none or it cannot
/// take the job (said on stderr, never in the program's output).
fn start_program(
    kernel: Option<Kernel>,
    job: &Job,
    launch: &Launch,
    settings: &Settings,
) -> Result<Started, String> {
    if let Some(language) = settings.kernel.as_ref().and_then(|k| k.language().ok()) {
        // Whether or not the kernel takes the job, it left its placeholders.
        kernel::tidy_job_dir(&settings.job_dir, language, job);
    }
    if let Some(kernel) = kernel {
        let ready_timeout = settings.kernel.as_ref().map(|k| k.ready_timeout);
        match kernel::one_shot(kernel, job, launch, ready_timeout.unwrap_or_default()) {
            Ok(HandedOver {
                running,
                clock,
                cpu_hard_limit_ms,
            }) => {
                return Ok(Started {
                    running,
                    clock,
                    cpu_hard_limit_ms,
                    kernel: true,
                });
            }
            Err(err) => eprintln!("ci-runner: {err}; starting a fresh interpreter"),
        }
    }
    let running = supervise::spawn(launch)?;
    Ok(Started {
        running,
        // After the kernel was reaped: its CPU is not the program's.
        clock: Clock::now(),
        cpu_hard_limit_ms: launch.limits.cpu_hard_secs.saturating_mul(1000),
        kernel: false,
    })
}

/// The program never ran: a record that says why, so the operator can report it (or, when
/// the job never arrived whole, hand it to another pod).
fn not_started<W: Write>(emitter: &mut Emitter<W>, error: String, no_job: bool) -> io::Result<()> {
    eprintln!("ci-runner: {error}");
    emitter.frame(&Frame::Start {
        v: PROTOCOL_VERSION,
    })?;
    emitter.frame(&Frame::Exit(ExitReport {
        error: Some(error),
        no_job,
        ..ExitReport::default()
    }))?;
    emitter.frame(&Frame::End)?;
    emitter.flush()
}
