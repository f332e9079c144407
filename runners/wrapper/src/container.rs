//! Container mode (`CI_RUNNER_MODE=container`): instead of running one job, the wrapper serves
//! a container for as long as its stdin is open. Operations arrive on stdin, one JSON line each
//! ([`runner_protocol::Op`]): runs, in one interpreter per language that keeps its state between
//! runs, with the container's files in the data folder (`/mnt/data`, every program's working
//! folder); puts and deletes of those files; `sync` when a new reader attaches; `interrupt`.
//! The answers and the runs' records go to stdout ([`runner_protocol::Frame`]). The end of
//! stdin means the pod is being torn down: the run in progress is interrupted, the interpreters
//! are killed, and the wrapper exits 0.
//!
//! Two threads do the work: the server reads stdin ([`server`]), the runs' thread owns the
//! interpreters ([`worker`]), and both write through one [`transcript::Transcript`]. A third
//! only watches signals: SIGTERM ends the container at once (the interpreters die with the
//! wrapper: they are killed when the thread that started them ends), SIGCHLD wakes the runs'
//! thread to reap.
mod files;
mod input;
mod server;
mod snapshot;
mod transcript;
mod worker;

use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::thread;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::cgroup::Cgroup;
use crate::job;
use crate::sandbox::Signals;
use crate::settings::{ContainerSettings, Settings};
use server::{Server, Waker};
use transcript::Transcript;
use worker::{Setup, Worker};

/// Serves the container until stdin ends (then 0) or a signal asks it to stop.
pub(crate) fn serve(
    settings: &Settings,
    container: &ContainerSettings,
    signals: Signals,
) -> ExitCode {
    match start(settings, container, signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ci-runner: cannot serve the container: {err}");
            ExitCode::from(2)
        }
    }
}

fn start(settings: &Settings, container: &ContainerSettings, signals: Signals) -> io::Result<()> {
    // matplotlib's cache must be in /tmp before the Python interpreter imports it.
    job::seed_tmp(settings);
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let transcript = Transcript::new(stdout);
    let (wake_reader, wake_writer) = io::pipe()?;
    for fd in [wake_reader.as_fd(), wake_writer.as_fd()] {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    }
    let waker = Waker(Arc::new(wake_writer));
    let (runs, staged) = mpsc::channel();
    let setup = Setup {
        data_dir: container.data_dir.clone(),
        job_dir: settings.job_dir.clone(),
        kernels_dir: container.kernels_dir.clone(),
        program_path: settings.program_path.clone(),
        python_preload: container.python_preload.clone(),
        ready_timeout: container.ready_timeout,
        cgroup: settings.cgroup.as_deref().map(Cgroup::new),
    };
    let worker = Worker::new(setup, transcript.clone(), staged, wake_reader);
    // The interpreters are children of this thread: they are killed when it ends (their
    // parent-death signal), so it lives as long as they must.
    let worker = thread::Builder::new()
        .name("runs".into())
        .spawn(move || worker.serve())?;
    let child_waker = waker.clone();
    // Not joined: it ends the process itself when asked to stop, and otherwise lives as long.
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch_signals(&signals, &child_waker))?;
    Server::new(container.data_dir.clone(), transcript, runs, waker)
        .serve(BufReader::with_capacity(128 * 1024, io::stdin().lock()));
    worker
        .join()
        .map_err(|_| io::Error::other("the runs' thread panicked"))
}

/// SIGTERM, SIGINT or SIGHUP (the pod's deletion): the container ends now. SIGCHLD: the runs'
/// thread reaps.
fn watch_signals(signals: &Signals, waker: &Waker) {
    loop {
        let mut fds = [PollFd::new(signals.fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::NONE);
        let arrived = signals.drain();
        if arrived.stop {
            eprintln!("ci-runner: asked to stop: the container ends");
            std::process::exit(0);
        }
        if arrived.child {
            waker.wake();
        }
    }
}
