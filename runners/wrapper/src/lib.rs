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

mod cgroup;
mod collect;
mod disk;
mod emit;
mod job;
mod proctree;
mod report;
mod sandbox;
mod settings;
mod supervise;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use runner_protocol::{ExitReport, Frame, PROTOCOL_VERSION};

pub use settings::Settings;

use crate::emit::Emitter;

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
    let stdout = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(err) => {
            eprintln!("ci-runner: no stdout: {err}");
            return ExitCode::from(2);
        }
    };
    let mut emitter = Emitter::new(BufWriter::with_capacity(64 * 1024, stdout));
    match run(&settings, &signals, &mut emitter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ci-runner: cannot write the record: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run<W: Write>(
    settings: &Settings,
    signals: &sandbox::Signals,
    emitter: &mut Emitter<W>,
) -> io::Result<()> {
    let job = match job::receive(&mut BufReader::new(io::stdin().lock()), settings) {
        Ok(job) => job,
        Err(err) => return not_started(emitter, err.message, err.cut_short),
    };
    let launch = job::launch(&job, settings);
    let cgroup = settings.cgroup.as_deref().map(cgroup::Cgroup::new);
    let oom_kills_before = cgroup.as_ref().and_then(|c| c.oom_kills());

    let outcome = match supervise::run(&launch, signals, settings.is_pid1, emitter) {
        Ok(outcome) => outcome,
        Err(supervise::Error::Spawn(err)) => return not_started(emitter, err, false),
        Err(supervise::Error::Record(err)) => return Err(err),
    };

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
        cpu_ms: usage.cpu_ms,
        cpu_hard_limit_ms: launch.limits.cpu_hard_secs.saturating_mul(1000),
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
