//! The wrapper binary run as the container would run it, on the host: a job folder and a work
//! folder in a temporary directory, the record parsed by the operator's parser. Shared by the
//! test files; not every one uses every helper.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use runner_protocol::{
    EffectiveLimits, ExitReport, InputFile, Job, Language, PROTOCOL_VERSION, Record, SkippedFile,
    parse_record,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub struct Fixture {
    pub dir: TempDir,
    pub job: Job,
    pub payload: Vec<u8>,
    pub env: Vec<(&'static str, String)>,
}

pub struct Finished {
    pub log: Vec<u8>,
    pub record: Record,
    pub exit: ExitReport,
    pub elapsed: Duration,
    pub dir: TempDir,
    /// What the wrapper said on its own stderr (diagnostics, never the program's output).
    pub diagnostics: String,
}

impl Finished {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.record.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.record.stderr).into_owned()
    }
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
    pub fn artifact(&self, name: &str) -> Option<&[u8]> {
        let a = self.record.artifacts.iter().find(|a| a.name == name)?;
        Some(&a.content)
    }
    pub fn skipped(&self, name: &str) -> Option<&SkippedFile> {
        self.record.skipped.iter().find(|s| s.name == name)
    }
}

pub fn python(code: &str) -> Fixture {
    program(Language::Python, code)
}

/// The kernel drivers of this checkout (read when the tests run: a build directory may be
/// shared between checkouts).
pub fn kernels_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../kernels")
}

pub fn program(language: Language, code: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("job")).unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    Fixture {
        dir,
        job: Job {
            v: PROTOCOL_VERSION,
            language,
            args: Vec::new(),
            limits: EffectiveLimits {
                timeout_ms: 20_000,
                memory_mb: 512,
                cpu_ms: 20_000,
                cpu_millicores: 1000,
                max_output_bytes: 1 << 20,
                max_artifacts: 10,
                max_artifact_bytes: 1 << 20,
                max_artifact_total_bytes: 4 << 20,
                max_processes: 256,
                disk_mb: 16,
            },
            code_bytes: code.len() as u64,
            stdin_bytes: None,
            files: Vec::new(),
        },
        payload: code.as_bytes().to_vec(),
        env: Vec::new(),
    }
}

impl Fixture {
    pub fn limits(mut self, set: impl FnOnce(&mut EffectiveLimits)) -> Self {
        set(&mut self.job.limits);
        self
    }

    /// Stdin follows the source in the payload; give it before any input file.
    pub fn stdin(mut self, text: &str) -> Self {
        assert!(self.job.files.is_empty());
        self.payload.extend_from_slice(text.as_bytes());
        self.job.stdin_bytes = Some(text.len() as u64);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.job.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn input(mut self, name: &str, content: &str) -> Self {
        self.payload.extend_from_slice(content.as_bytes());
        self.job.files.push(InputFile {
            name: name.into(),
            bytes: content.len() as u64,
        });
        self
    }

    pub fn env(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.env.push((name, value.into()));
        self
    }

    /// Runs the job in a kernel of its language, started before the job with `preload`.
    pub fn kernel(self, preload: &[&str]) -> Self {
        self.kernel_from(&kernels_dir(), preload)
    }

    /// The same, with the drivers in `dir`.
    pub fn kernel_from(self, dir: &Path, preload: &[&str]) -> Self {
        let language = self.job.language.as_str();
        self.env("CI_RUNNER_KERNEL", language)
            .env("CI_RUNNER_KERNELS_DIR", dir.to_str().unwrap())
            .env("CI_RUNNER_PRELOAD", preload.join(","))
    }

    /// What the operator writes to the wrapper's stdin.
    pub fn job_bytes(&self) -> Vec<u8> {
        let mut bytes = self.job.header_line();
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ci-runner"));
        command
            .env("CI_RUNNER_JOB_DIR", self.dir.path().join("job"))
            .env("CI_RUNNER_WORK_DIR", self.dir.path().join("work"))
            .env_remove("CI_RUNNER_CGROUP_DIR")
            .env_remove("CI_RUNNER_PATH")
            .env_remove("CI_RUNNER_KERNEL")
            .env_remove("CI_RUNNER_PRELOAD")
            .env_remove("CI_RUNNER_KERNELS_DIR")
            .env_remove("CI_RUNNER_KERNEL_READY_MS")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the wrapper and hands it `input` on stdin (from a thread, so a large input
    /// never blocks on a full pipe), keeping stdin open as the attach stream does until the
    /// record's end frame has been read, as the operator does (the wrapper waits for that
    /// before it exits). The child's stdout is what the wrapper wrote, read through a relay
    /// that watches for the end frame.
    pub fn spawn_with(&self, input: Vec<u8>) -> std::process::Child {
        let mut child = self.command().spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (read, done) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
            let _ = done.recv_timeout(Duration::from_secs(30));
            drop(stdin);
        });
        let stdout = child.stdout.take().unwrap();
        let (relayed, mut relay) = std::io::pipe().unwrap();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout);
            let mut line = Vec::new();
            let mut read = Some(read);
            while std::io::BufRead::read_until(&mut lines, b'\n', &mut line).unwrap_or(0) > 0 {
                if relay.write_all(&line).is_err() {
                    break;
                }
                let frame = serde_json::from_slice::<runner_protocol::Frame>(&line);
                if matches!(frame, Ok(runner_protocol::Frame::End)) {
                    // The reader has the whole record: its session ends.
                    drop(read.take());
                }
                line.clear();
            }
        });
        child.stdout = Some(std::process::ChildStdout::from(std::os::fd::OwnedFd::from(
            relayed,
        )));
        child
    }

    pub fn spawn(&self) -> std::process::Child {
        self.spawn_with(self.job_bytes())
    }

    pub fn run(self) -> Finished {
        let started = Instant::now();
        let output = self.spawn().wait_with_output().unwrap();
        self.finish(output, started.elapsed())
    }

    pub fn finish(self, output: Output, elapsed: Duration) -> Finished {
        assert!(output.status.success(), "wrapper failed: {output:?}");
        let record = parse_record(&output.stdout, &self.job.limits).unwrap();
        assert!(record.complete, "record not complete: {record:?}");
        assert!(record.diagnostics.is_empty(), "{:?}", record.diagnostics);
        Finished {
            log: output.stdout,
            exit: record.exit.clone().expect("an exit frame"),
            record,
            elapsed,
            dir: self.dir,
            diagnostics: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn is_gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
