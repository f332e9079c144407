//! The job: reading `job.json`, staging the inputs into the work folder, and the command line
//! and environment the program is started with.
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, mkdirat};
use runner_protocol::{JOB_FILE, Job, Language, validate_relative_name};

use crate::sandbox::ChildLimits;
use crate::settings::{PROGRAM_TMP, Settings};
use crate::supervise::Launch;

/// `job.json` comes from a Secret, so it is small; anything bigger is not a job.
const MAX_JOB_BYTES: u64 = 1 << 20;

pub fn load(job_dir: &Path) -> Result<Job, String> {
    let path = job_dir.join(JOB_FILE);
    let mut text = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_JOB_BYTES + 1).read_to_end(&mut text))
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if text.len() as u64 > MAX_JOB_BYTES {
        return Err(format!("{} is over {MAX_JOB_BYTES} bytes", path.display()));
    }
    let job: Job = serde_json::from_slice(&text)
        .map_err(|err| format!("{} is not a job: {err}", path.display()))?;
    check_key(&job.source_key)?;
    if let Some(key) = &job.stdin_key {
        check_key(key)?;
    }
    for file in &job.files {
        check_key(&file.secret_key)?;
        validate_relative_name(&file.name)
            .map_err(|reason| format!("input file {:?}: {reason}", file.name))?;
    }
    Ok(job)
}

/// A key of the inputs Secret: a plain file name in the job folder. Names starting with `..`
/// are the kubelet's own (`..data`), never a key.
fn check_key(key: &str) -> Result<(), String> {
    if key.contains('/') || key.starts_with("..") || validate_relative_name(key).is_err() {
        return Err(format!("invalid inputs key {key:?}"));
    }
    Ok(())
}

/// Copies the input files into the work folder, creates `outputs`, and seeds `/tmp`.
/// Nothing under the work folder is followed if it is a symbolic link.
pub fn stage_inputs(job: &Job, settings: &Settings) -> Result<(), String> {
    let work = open(
        &settings.work_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| format!("cannot open {}: {err}", settings.work_dir.display()))?;
    for file in &job.files {
        copy_input(&settings.job_dir.join(&file.secret_key), &work, &file.name)
            .map_err(|err| format!("cannot stage input file {:?}: {err}", file.name))?;
    }
    match mkdirat(&work, "outputs", Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(err) => return Err(format!("cannot create the outputs folder: {err}")),
    }
    if let Err(err) = copy_tree(&settings.tmp_seed, Path::new(PROGRAM_TMP)) {
        // Only a cache (e.g. matplotlib's fonts): the program still runs, slower.
        eprintln!("ci-runner: cannot seed {PROGRAM_TMP}: {err}");
    }
    Ok(())
}

fn copy_input(source: &Path, work: &OwnedFd, name: &str) -> io::Result<()> {
    // The Secret's keys are links into its current version (`..data/<key>`): follow those.
    let mut source = File::open(source)?;
    if !source.metadata()?.is_file() {
        return Err(io::Error::other("the input is not a regular file"));
    }
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
    io::copy(&mut source, &mut File::from(target))?;
    Ok(())
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
    let source = settings.job_dir.join(&job.source_key);
    let mut argv = job.language.command(&source.to_string_lossy());
    argv.extend(job.args.iter().cloned());
    let mut env = vec![
        ("PATH", settings.program_path.clone()),
        ("HOME", settings.work_dir.to_string_lossy().into_owned()),
        ("LANG", "C.UTF-8".into()),
        ("TMPDIR", PROGRAM_TMP.into()),
    ];
    if job.language == Language::Python {
        env.extend([
            // No display: plots go to files.
            ("MPLBACKEND", "Agg".into()),
            // The root filesystem is read-only and HOME is the user's folder: matplotlib keeps
            // its config and font cache in /tmp, where the image's prebuilt cache is seeded.
            ("MPLCONFIGDIR", format!("{PROGRAM_TMP}/matplotlib")),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ]);
    }
    Launch {
        argv,
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        cwd: settings.work_dir.clone(),
        stdin: job.stdin_key.as_ref().map(|key| settings.job_dir.join(key)),
        limits: ChildLimits::for_job(&job.limits),
        timeout: Duration::from_millis(job.limits.timeout_ms),
        cpu_budget_ms: job.limits.cpu_ms,
        max_output_bytes: job.limits.max_output_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_keys_must_be_plain_names_in_the_job_folder() {
        for bad in ["../etc/passwd", "..data", "a/b", "", "/abs", "x\n"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_key("main.py").is_ok());
        assert!(check_key("file-0").is_ok());
    }

    #[test]
    fn a_symlink_in_the_work_folder_is_not_followed_when_staging() {
        let dir = tempfile::tempdir().unwrap();
        let job_dir = dir.path().join("job");
        let work_dir = dir.path().join("work");
        let outside = dir.path().join("outside");
        for d in [&job_dir, &work_dir, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(job_dir.join("k"), "data").unwrap();
        std::os::unix::fs::symlink(&outside, work_dir.join("sub")).unwrap();
        let work = open(&work_dir, dir_flags(), Mode::empty()).unwrap();
        assert!(copy_input(&job_dir.join("k"), &work, "sub/x").is_err());
        assert!(!outside.join("x").exists());
        copy_input(&job_dir.join("k"), &work, "real/x").unwrap();
        assert_eq!(std::fs::read(work_dir.join("real/x")).unwrap(), b"data");
    }
}
