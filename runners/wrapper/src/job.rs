//! The job: read from the wrapper's stdin (the operator attaches and writes it), its source
//! and stdin written to the job folder, its input files to the work folder, and the command
//! line and environment the program is started with.
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, mkdirat};
use runner_protocol::{Job, Language, MAX_JOB_HEADER_BYTES};

use crate::sandbox::ChildLimits;
use crate::settings::{PROGRAM_TMP, Settings};
use crate::supervise::Launch;

/// Where the program's stdin is written in the job folder.
pub const STDIN_FILE: &str = "stdin";

/// Why no job could be run.
#[derive(Debug)]
pub struct NotReceived {
    pub message: String,
    /// Stdin ended before the whole job was in: whoever wrote it went away, and the job may
    /// be handed to another pod (nothing ran).
    pub cut_short: bool,
}

impl From<String> for NotReceived {
    fn from(message: String) -> Self {
        NotReceived {
            message,
            cut_short: false,
        }
    }
}

fn cut_short(message: String) -> NotReceived {
    NotReceived {
        message,
        cut_short: true,
    }
}

/// An error receiving part of the job: the stream ending early is a job cut short.
fn receiving(what: &str) -> impl Fn(io::Error) -> NotReceived + '_ {
    move |err| NotReceived {
        cut_short: err.kind() == io::ErrorKind::UnexpectedEof,
        message: format!("cannot receive {what}: {err}"),
    }
}

/// Reads the job header from `input` (blocking until the operator sends it), then its
/// payload: the source and stdin into the job folder, the input files into the work folder,
/// and (with `seed`) the image's seed into the program's `/tmp`. Nothing under the work folder
/// is followed if it is a symbolic link.
pub fn receive(
    input: &mut impl BufRead,
    settings: &Settings,
    seed: bool,
) -> Result<Job, NotReceived> {
    let mut line = Vec::new();
    input
        .by_ref()
        .take(MAX_JOB_HEADER_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|err| cut_short(format!("cannot read the job: {err}")))?;
    if line.last() != Some(&b'\n') {
        return Err(match line.len() {
            0 => cut_short("no job arrived on stdin".to_string()),
            n if n > MAX_JOB_HEADER_BYTES => "the job header is too long".to_string().into(),
            _ => cut_short("the job header was cut short".to_string()),
        });
    }
    line.pop();
    let job = Job::parse_header(&line).map_err(|err| NotReceived::from(err.to_string()))?;

    let source = settings.job_dir.join(job.language.source_file());
    copy_exact(input, job.code_bytes, &mut create(&source)?).map_err(receiving("the source"))?;
    if let Some(bytes) = job.stdin_bytes {
        copy_exact(
            input,
            bytes,
            &mut create(&settings.job_dir.join(STDIN_FILE))?,
        )
        .map_err(receiving("stdin"))?;
    }
    let work = open(
        &settings.work_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| format!("cannot open {}: {err}", settings.work_dir.display()))?;
    for file in &job.files {
        let what = format!("input file {:?}", file.name);
        receive_input(input, file.bytes, &work, &file.name).map_err(receiving(&what))?;
    }
    match mkdirat(&work, "outputs", Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(err) => return Err(format!("cannot create the outputs folder: {err}").into()),
    }
    if seed {
        seed_tmp(settings);
    }
    Ok(job)
}

/// Copies the image's seed folder into the program's `/tmp`: a kernel needs it before it
/// imports anything, a fresh program before it starts.
pub fn seed_tmp(settings: &Settings) {
    if let Err(err) = copy_tree(&settings.tmp_seed, Path::new(PROGRAM_TMP)) {
        // Only a cache (e.g. matplotlib's fonts): the program still runs, slower.
        eprintln!("ci-runner: cannot seed {PROGRAM_TMP}: {err}");
    }
}

fn create(path: &Path) -> Result<File, String> {
    File::create(path).map_err(|err| format!("cannot create {}: {err}", path.display()))
}

/// Copies exactly `bytes` from `input`; fewer is an error (the stream was cut).
fn copy_exact(input: &mut impl Read, bytes: u64, out: &mut impl Write) -> io::Result<()> {
    let copied = io::copy(&mut input.by_ref().take(bytes), out)?;
    if copied != bytes {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the job was cut short ({copied} of {bytes} bytes)"),
        ));
    }
    out.flush()
}

fn receive_input(input: &mut impl Read, bytes: u64, work: &OwnedFd, name: &str) -> io::Result<()> {
    let (parents, leaf) = name.rsplit_once('/').unwrap_or(("", name));
    let mut dir = None::<OwnedFd>;
    for part in parents.split('/').filter(|p| !p.is_empty()) {
        let at = dir.as_ref().unwrap_or(work);
        match mkdirat(at, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => return Err(err.into()),
        }
        let next = openat(at, part, dir_flags(), Mode::empty())?;
        dir = Some(next);
    }
    let target = openat(
        dir.as_ref().unwrap_or(work),
        leaf,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    copy_exact(input, bytes, &mut File::from(target))
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Copies the image's seed folder (trusted content) into the program's empty `/tmp`.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    std::fs::create_dir_all(to)?;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// How the program is started: the interpreter on the source, the job's arguments, and a
/// minimal environment (nothing of the platform's own).
pub fn launch(job: &Job, settings: &Settings) -> Launch {
    let source = settings.job_dir.join(job.language.source_file());
    let mut argv = job.language.command(&source.to_string_lossy());
    argv.extend(job.args.iter().cloned());
    Launch {
        argv,
        env: program_env(job.language, &settings.work_dir, &settings.program_path),
        cwd: settings.work_dir.clone(),
        stdin: job.stdin_bytes.map(|_| settings.job_dir.join(STDIN_FILE)),
        limits: ChildLimits::for_job(&job.limits),
        timeout: Duration::from_millis(job.limits.timeout_ms),
        cpu_budget_ms: job.limits.cpu_ms,
        max_output_bytes: job.limits.max_output_bytes,
    }
}

/// The program's whole environment (nothing of the platform's own), which a kernel of the
/// language gets too.
pub fn program_env(language: Language, work_dir: &Path, path: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH", path.to_string()),
        ("HOME", work_dir.to_string_lossy().into_owned()),
        ("LANG", "C.UTF-8".into()),
        ("TMPDIR", PROGRAM_TMP.into()),
    ];
    if language == Language::Python {
        env.extend([
            // No display: plots go to files.
            ("MPLBACKEND", "Agg".into()),
            // The root filesystem is read-only and HOME is the user's folder: matplotlib keeps
            // its config and font cache in /tmp, where the image's prebuilt cache is seeded.
            ("MPLCONFIGDIR", format!("{PROGRAM_TMP}/matplotlib")),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ]);
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_the_work_folder_is_not_followed_when_receiving() {
        let dir = tempfile::tempdir().unwrap();
        let work_dir = dir.path().join("work");
        let outside = dir.path().join("outside");
        for d in [&work_dir, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::os::unix::fs::symlink(&outside, work_dir.join("sub")).unwrap();
        let work = open(&work_dir, dir_flags(), Mode::empty()).unwrap();
        assert!(receive_input(&mut &b"data"[..], 4, &work, "sub/x").is_err());
        assert!(!outside.join("x").exists());
        receive_input(&mut &b"data"[..], 4, &work, "real/x").unwrap();
        assert_eq!(std::fs::read(work_dir.join("real/x")).unwrap(), b"data");
    }

    #[test]
    fn an_input_cut_short_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let work = open(dir.path(), dir_flags(), Mode::empty()).unwrap();
        let err = receive_input(&mut &b"da"[..], 4, &work, "x").unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
