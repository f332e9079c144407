//! The frames of the record the wrapper writes: one JSON object a line.
use serde::{Deserialize, Serialize};

/// One line of the wrapper's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Frame {
    /// The program has been started (its clock runs from here).
    Start { v: u32 },
    /// A chunk of the program's stdout, base64.
    Stdout { d: String },
    /// A chunk of the program's stderr, base64.
    Stderr { d: String },
    /// How the program ended and what it used.
    Exit(ExitReport),
    /// An output file follows in `data` frames, `size` bytes in all.
    File {
        name: String,
        size: u64,
        sha256: String,
    },
    /// A chunk of the current file, base64.
    Data { d: String },
    /// An output file the wrapper refused to collect, and why.
    Skipped(SkippedFile),
    /// A container's file the run removed (its name under the container's folder).
    Removed { name: String },
    /// The record is complete.
    End,
    /// In a container's stream: the record of run `id` follows (`start` to `end`).
    Run { id: String },
    /// In a container's stream: the answer to a `sync` ([`crate::Op::Sync`]); `busy` names
    /// the run in progress, whose record is sent again from its beginning.
    Sync {
        nonce: String,
        #[serde(default)]
        busy: Option<String>,
    },
    /// In a container's stream: operation `id` ([`crate::Op`]) is done, or failed.
    Ack {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Frame {
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Start { .. } => "start",
            Frame::Stdout { .. } => "stdout",
            Frame::Stderr { .. } => "stderr",
            Frame::Exit(_) => "exit",
            Frame::File { .. } => "file",
            Frame::Data { .. } => "data",
            Frame::Skipped(_) => "skipped",
            Frame::Removed { .. } => "removed",
            Frame::End => "end",
            Frame::Run { .. } => "run",
            Frame::Sync { .. } => "sync",
            Frame::Ack { .. } => "ack",
        }
    }
}

/// The program's two output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// Set when the program exited by itself.
    pub exit_code: Option<i32>,
    /// Set when a signal ended it (9 after a timeout, an OOM kill or a cancel).
    pub signal: Option<i32>,
    /// The wall-clock limit ended it.
    pub timed_out: bool,
    /// The kernel's OOM killer ended it (the container's memory limit).
    pub oom_killed: bool,
    /// RLIMIT_CPU ended it (SIGXCPU or SIGKILL at the hard limit).
    pub cpu_limit_exceeded: bool,
    /// It tried to grow a file past RLIMIT_FSIZE (SIGXFSZ).
    pub file_size_exceeded: bool,
    /// `/work` or `/tmp` was full when it ended: its writes failed with ENOSPC.
    #[serde(default)]
    pub disk_full: bool,
    /// The wrapper was asked to stop (SIGTERM: cancel or pod deletion) and ended it.
    pub cancelled: bool,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_peak_bytes: u64,
    /// Bytes the program wrote to each stream, including any cut off.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The wrapper could not run the program at all (e.g. no interpreter, a broken job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Stdin ended before a whole job arrived (whoever was writing it went away): nothing
    /// ran, so the run may be handed to another pod.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_job: bool,
    /// The program ran in a kernel: an interpreter the wrapper started before the job, with
    /// modules already imported (`CI_RUNNER_KERNEL`), instead of a fresh one. Its clock and CPU
    /// count from the hand-over, not from the kernel's start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kernel: bool,
    /// In a container: the language's interpreter ended (out of memory, `os._exit`, a fatal
    /// error) or could not be interrupted at the timeout; it is started afresh for the next
    /// run (its state is gone, the files stay).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interpreter_lost: bool,
    /// In a container: a run of this id was handed over before (to an operator whose line
    /// broke before it read the run's end). It was not run again: a run runs at most once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_ran: bool,
}

/// Why an output file was left out. The kinds that are a cap the run went over fail it as
/// `artifact_limit_exceeded`; the others only drop the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// More files than `max_artifacts`.
    TooMany,
    /// Larger than `max_artifact_bytes`.
    TooLarge,
    /// Would take the total over `max_artifact_total_bytes`.
    TotalTooLarge,
    /// A link, a FIFO, a device: only regular files are collected.
    NotAFile,
    /// A name that is not a plain relative path (or not UTF-8).
    InvalidName,
    /// The same name twice.
    Duplicate,
    /// Nested deeper than the walk goes, or past the walk's entry budget.
    NotWalked,
    /// Could not be read, or changed while being read.
    Unreadable,
    /// The record ended before the file was complete.
    CutShort,
}

impl SkipReason {
    pub fn is_over_a_limit(self) -> bool {
        matches!(
            self,
            SkipReason::TooMany | SkipReason::TooLarge | SkipReason::TotalTooLarge
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub name: String,
    pub reason: SkipReason,
    /// Words for a person.
    #[serde(default)]
    pub detail: String,
}

const MAX_NAME_BYTES: usize = 255;
const MAX_NAME_DEPTH: usize = 8;

/// Checks a file's path relative to its folder: plain components only (no `..`, `.`, empty or
/// absolute parts), no control characters, bounded length and depth.
pub fn validate_relative_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("name must be 1 to {MAX_NAME_BYTES} bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err("name contains a control character or backslash".into());
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > MAX_NAME_DEPTH {
        return Err(format!("name is nested more than {MAX_NAME_DEPTH} deep"));
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err("name has an empty, '.' or '..' component, or is absolute".into());
    }
    Ok(())
}

/// Encodes a frame the way the wrapper writes it: one JSON object a line.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut line = serde_json::to_vec(frame).expect("frames always serialize");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_report_says_kernel_only_when_a_kernel_ran_the_program() {
        let fresh = encode_frame(&Frame::Exit(ExitReport::default()));
        assert!(!String::from_utf8_lossy(&fresh).contains("kernel"));
        let older: Frame = serde_json::from_str(
            r#"{"t":"exit","exit_code":0,"signal":null,"timed_out":false,"oom_killed":false,
                "cpu_limit_exceeded":false,"file_size_exceeded":false,"cancelled":false,
                "wall_ms":1,"cpu_ms":1,"memory_peak_bytes":1,"stdout_bytes":0,"stderr_bytes":0,
                "stdout_truncated":false,"stderr_truncated":false}"#,
        )
        .unwrap();
        assert!(matches!(
            older,
            Frame::Exit(ExitReport { kernel: false, .. })
        ));
        let warm = Frame::Exit(ExitReport {
            kernel: true,
            ..ExitReport::default()
        });
        let line = encode_frame(&warm);
        assert_eq!(
            serde_json::from_slice::<Frame>(&line[..line.len() - 1]).unwrap(),
            warm
        );
    }
}
