use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::PROTOCOL_VERSION;

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
    /// The record is complete.
    End,
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
    /// The wrapper could not run the program at all (e.g. no interpreter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub name: String,
    pub reason: String,
}

/// Caps the operator applies while reading a record, whatever the wrapper claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimits {
    pub max_output_bytes: u64,
    pub max_artifacts: u32,
    pub max_artifact_bytes: u64,
    pub max_artifact_total_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub content: Vec<u8>,
    pub sha256: String,
}

/// What a record says, after validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRecord {
    pub started: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub exit: Option<ExitReport>,
    pub artifacts: Vec<Artifact>,
    pub skipped: Vec<SkippedFile>,
    /// Some output file was over a cap (count, size or total) and left out.
    pub artifact_limit_exceeded: bool,
    /// The end frame was seen: nothing was cut off.
    pub complete: bool,
    /// Lines that were not frames (the wrapper's own diagnostics on stderr), capped.
    pub diagnostics: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("runner record has version {0}, expected {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("runner record: {0} before the start frame")]
    BeforeStart(&'static str),
    #[error("runner record: a second {0} frame")]
    Repeated(&'static str),
    #[error("runner record: invalid base64 in a {0} frame")]
    Base64(&'static str),
    #[error("runner record: file data with no file open")]
    DataWithoutFile,
    #[error("runner record: file {name:?} has {got} bytes, more than the {declared} declared")]
    FileOverrun {
        name: String,
        declared: u64,
        got: u64,
    },
    #[error("runner record: file {0:?} does not match its sha256")]
    Checksum(String),
    #[error("runner record: frame after the end frame")]
    AfterEnd,
}

const MAX_DIAGNOSTIC_LINES: usize = 20;
const MAX_DIAGNOSTIC_CHARS: usize = 500;
const MAX_NAME_BYTES: usize = 255;
const MAX_NAME_DEPTH: usize = 8;

/// Checks an output file's path relative to the outputs folder: plain components only (no
/// `..`, `.`, empty or absolute parts), no control characters, bounded length and depth.
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

struct OpenFile {
    name: String,
    declared: u64,
    sha256: String,
    content: Vec<u8>,
    /// Over a cap: read to keep the stream in step, then dropped.
    keep: bool,
}

/// Parses and validates a runner's record (the container log). Non-frame lines are kept as
/// diagnostics; caps are applied by cutting and flagging, never trusted from the wrapper.
pub fn parse_record(log: &[u8], limits: RecordLimits) -> Result<RunRecord, ParseError> {
    let mut rec = RunRecord::default();
    let mut open: Option<OpenFile> = None;
    let mut total_artifact_bytes = 0u64;

    for line in log.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let frame = match serde_json::from_slice::<Frame>(line) {
            Ok(frame) => frame,
            Err(_) => {
                if rec.diagnostics.len() < MAX_DIAGNOSTIC_LINES {
                    let text = String::from_utf8_lossy(line);
                    rec.diagnostics
                        .push(text.chars().take(MAX_DIAGNOSTIC_CHARS).collect());
                }
                continue;
            }
        };
        if rec.complete {
            return Err(ParseError::AfterEnd);
        }
        if !rec.started && !matches!(frame, Frame::Start { .. }) {
            return Err(ParseError::BeforeStart(frame_name(&frame)));
        }
        // A file ends when its declared size has arrived; anything else with one still open
        // means it was cut short.
        if !matches!(frame, Frame::Data { .. })
            && let Some(file) = open.take()
        {
            finish_file(&mut rec, file, &mut total_artifact_bytes, limits)?;
        }
        match frame {
            Frame::Start { v } => {
                if rec.started {
                    return Err(ParseError::Repeated("start"));
                }
                if v != PROTOCOL_VERSION {
                    return Err(ParseError::Version(v));
                }
                rec.started = true;
            }
            Frame::Stdout { d } => {
                let chunk = B64.decode(d).map_err(|_| ParseError::Base64("stdout"))?;
                append_capped(
                    &mut rec.stdout,
                    &mut rec.stdout_truncated,
                    &chunk,
                    limits.max_output_bytes,
                );
            }
            Frame::Stderr { d } => {
                let chunk = B64.decode(d).map_err(|_| ParseError::Base64("stderr"))?;
                append_capped(
                    &mut rec.stderr,
                    &mut rec.stderr_truncated,
                    &chunk,
                    limits.max_output_bytes,
                );
            }
            Frame::Exit(report) => {
                if rec.exit.is_some() {
                    return Err(ParseError::Repeated("exit"));
                }
                rec.stdout_truncated |= report.stdout_truncated;
                rec.stderr_truncated |= report.stderr_truncated;
                rec.exit = Some(report);
            }
            Frame::File { name, size, sha256 } => {
                let mut keep = true;
                if let Err(reason) = validate_relative_name(&name) {
                    rec.skipped.push(SkippedFile {
                        name: name.clone(),
                        reason,
                    });
                    keep = false;
                } else if rec.artifacts.iter().any(|a| a.name == name) {
                    rec.skipped.push(SkippedFile {
                        name: name.clone(),
                        reason: "duplicate name".into(),
                    });
                    keep = false;
                } else if rec.artifacts.len() >= limits.max_artifacts as usize {
                    rec.skipped.push(SkippedFile {
                        name: name.clone(),
                        reason: "too many output files".into(),
                    });
                    rec.artifact_limit_exceeded = true;
                    keep = false;
                } else if size > limits.max_artifact_bytes {
                    rec.skipped.push(SkippedFile {
                        name: name.clone(),
                        reason: "file over the size limit".into(),
                    });
                    rec.artifact_limit_exceeded = true;
                    keep = false;
                } else if total_artifact_bytes + size > limits.max_artifact_total_bytes {
                    rec.skipped.push(SkippedFile {
                        name: name.clone(),
                        reason: "output files over the total size limit".into(),
                    });
                    rec.artifact_limit_exceeded = true;
                    keep = false;
                }
                let file = OpenFile {
                    name,
                    declared: size,
                    sha256,
                    content: Vec::new(),
                    keep,
                };
                if size == 0 {
                    finish_file(&mut rec, file, &mut total_artifact_bytes, limits)?;
                } else {
                    open = Some(file);
                }
            }
            Frame::Data { d } => {
                let Some(file) = open.as_mut() else {
                    return Err(ParseError::DataWithoutFile);
                };
                let chunk = B64.decode(d).map_err(|_| ParseError::Base64("data"))?;
                let got = file.content.len() as u64 + chunk.len() as u64;
                if got > file.declared {
                    return Err(ParseError::FileOverrun {
                        name: file.name.clone(),
                        declared: file.declared,
                        got,
                    });
                }
                file.content.extend_from_slice(&chunk);
                if got == file.declared {
                    let file = open.take().expect("checked above");
                    finish_file(&mut rec, file, &mut total_artifact_bytes, limits)?;
                }
            }
            Frame::Skipped(skipped) => {
                if skipped.reason.contains("limit") || skipped.reason.contains("too many") {
                    rec.artifact_limit_exceeded = true;
                }
                rec.skipped.push(SkippedFile {
                    name: skipped.name.chars().take(MAX_NAME_BYTES).collect(),
                    reason: skipped.reason.chars().take(200).collect(),
                });
            }
            Frame::End => rec.complete = true,
        }
    }
    if let Some(file) = open.take() {
        // Cut short (the pod was killed while writing it): keep nothing of it.
        rec.skipped.push(SkippedFile {
            name: file.name,
            reason: "record ended before the file was complete".into(),
        });
    }
    Ok(rec)
}

fn finish_file(
    rec: &mut RunRecord,
    file: OpenFile,
    total: &mut u64,
    _limits: RecordLimits,
) -> Result<(), ParseError> {
    if file.content.len() as u64 != file.declared {
        rec.skipped.push(SkippedFile {
            name: file.name,
            reason: "file was cut short".into(),
        });
        return Ok(());
    }
    if !file.keep {
        return Ok(());
    }
    let digest = hex::encode(Sha256::digest(&file.content));
    if !digest.eq_ignore_ascii_case(&file.sha256) {
        return Err(ParseError::Checksum(file.name));
    }
    *total += file.declared;
    rec.artifacts.push(Artifact {
        name: file.name,
        content: file.content,
        sha256: digest,
    });
    Ok(())
}

fn append_capped(buf: &mut Vec<u8>, truncated: &mut bool, chunk: &[u8], cap: u64) {
    let room = (cap as usize).saturating_sub(buf.len());
    if chunk.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Start { .. } => "start",
        Frame::Stdout { .. } => "stdout",
        Frame::Stderr { .. } => "stderr",
        Frame::Exit(_) => "exit",
        Frame::File { .. } => "file",
        Frame::Data { .. } => "data",
        Frame::Skipped(_) => "skipped",
        Frame::End => "end",
    }
}

/// Encodes frames the way the wrapper writes them: one JSON object a line.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut line = serde_json::to_vec(frame).expect("frames always serialize");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RecordLimits = RecordLimits {
        max_output_bytes: 10,
        max_artifacts: 2,
        max_artifact_bytes: 100,
        max_artifact_total_bytes: 150,
    };

    fn b64(s: &[u8]) -> String {
        B64.encode(s)
    }

    fn record(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(encode_frame).collect()
    }

    fn file(name: &str, content: &[u8]) -> Vec<Frame> {
        vec![
            Frame::File {
                name: name.into(),
                size: content.len() as u64,
                sha256: hex::encode(Sha256::digest(content)),
            },
            Frame::Data { d: b64(content) },
        ]
    }

    fn exit0() -> Frame {
        Frame::Exit(ExitReport {
            exit_code: Some(0),
            ..Default::default()
        })
    }

    #[test]
    fn a_complete_record_yields_output_exit_and_files() {
        let mut frames = vec![
            Frame::Start { v: 1 },
            Frame::Stdout { d: b64(b"2\n") },
            Frame::Stderr { d: b64(b"warn") },
            exit0(),
        ];
        frames.extend(file("plot.png", b"PNG"));
        frames.push(Frame::End);
        let rec = parse_record(&record(&frames), LIMITS).unwrap();
        assert!(rec.complete);
        assert_eq!(rec.stdout, b"2\n");
        assert_eq!(rec.stderr, b"warn");
        assert_eq!(rec.exit.unwrap().exit_code, Some(0));
        assert_eq!(rec.artifacts.len(), 1);
        assert_eq!(rec.artifacts[0].content, b"PNG");
    }

    #[test]
    fn output_over_the_cap_is_cut_and_flagged_even_if_the_wrapper_did_not() {
        let frames = [
            Frame::Start { v: 1 },
            Frame::Stdout {
                d: b64(b"0123456789abc"),
            },
            exit0(),
            Frame::End,
        ];
        let rec = parse_record(&record(&frames), LIMITS).unwrap();
        assert_eq!(rec.stdout, b"0123456789");
        assert!(rec.stdout_truncated);
    }

    #[test]
    fn non_frame_lines_are_diagnostics_not_output() {
        let mut log = b"wrapper: something odd\n".to_vec();
        log.extend(record(&[Frame::Start { v: 1 }, exit0(), Frame::End]));
        let rec = parse_record(&log, LIMITS).unwrap();
        assert_eq!(rec.diagnostics, vec!["wrapper: something odd"]);
        assert!(rec.stdout.is_empty());
    }

    #[test]
    fn escaping_or_absolute_names_are_refused() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./x",
            "x\n",
            "a\\b",
            "",
        ] {
            let mut frames = vec![Frame::Start { v: 1 }, exit0()];
            frames.extend(file(bad, b"x"));
            frames.push(Frame::End);
            let rec = parse_record(&record(&frames), LIMITS).unwrap();
            assert!(rec.artifacts.is_empty(), "{bad:?} was accepted");
            assert_eq!(rec.skipped.len(), 1, "{bad:?}");
        }
        assert!(validate_relative_name("charts/plot.png").is_ok());
    }

    #[test]
    fn artifact_caps_on_count_size_and_total_skip_and_flag() {
        let mut frames = vec![Frame::Start { v: 1 }, exit0()];
        frames.extend(file("big", &[0u8; 101]));
        frames.extend(file("a", &[1u8; 80]));
        frames.extend(file("b", &[2u8; 80])); // 160 > total 150
        frames.extend(file("c", &[3u8; 10]));
        frames.extend(file("d", &[4u8; 10])); // third kept file: over the count
        frames.push(Frame::End);
        let rec = parse_record(&record(&frames), LIMITS).unwrap();
        let kept: Vec<_> = rec.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(kept, ["a", "c"]);
        assert!(rec.artifact_limit_exceeded);
        assert_eq!(rec.skipped.len(), 3);
    }

    #[test]
    fn a_file_whose_bytes_do_not_match_its_checksum_is_an_error() {
        let frames = [
            Frame::Start { v: 1 },
            exit0(),
            Frame::File {
                name: "x".into(),
                size: 3,
                sha256: "00".repeat(32),
            },
            Frame::Data { d: b64(b"abc") },
            Frame::End,
        ];
        assert_eq!(
            parse_record(&record(&frames), LIMITS),
            Err(ParseError::Checksum("x".into()))
        );
    }

    #[test]
    fn more_data_than_declared_is_an_error() {
        let frames = [
            Frame::Start { v: 1 },
            Frame::File {
                name: "x".into(),
                size: 2,
                sha256: "00".repeat(32),
            },
            Frame::Data { d: b64(b"abc") },
        ];
        assert!(matches!(
            parse_record(&record(&frames), LIMITS),
            Err(ParseError::FileOverrun { .. })
        ));
    }

    #[test]
    fn a_record_cut_short_keeps_what_arrived_and_drops_the_partial_file() {
        let mut log = record(&[
            Frame::Start { v: 1 },
            Frame::Stdout { d: b64(b"tick") },
            Frame::File {
                name: "x".into(),
                size: 10,
                sha256: "00".repeat(32),
            },
            Frame::Data { d: b64(b"abc") },
        ]);
        log.extend_from_slice(b"{\"t\":\"data\",\"d\":\"tr"); // a line the kill cut in half
        let rec = parse_record(&log, LIMITS).unwrap();
        assert!(!rec.complete);
        assert!(rec.exit.is_none());
        assert_eq!(rec.stdout, b"tick");
        assert!(rec.artifacts.is_empty());
        assert_eq!(rec.skipped[0].name, "x");
    }

    #[test]
    fn frames_before_start_after_end_or_repeated_are_errors() {
        assert!(matches!(
            parse_record(&record(&[exit0()]), LIMITS),
            Err(ParseError::BeforeStart("exit"))
        ));
        let twice = record(&[Frame::Start { v: 1 }, exit0(), exit0()]);
        assert_eq!(
            parse_record(&twice, LIMITS),
            Err(ParseError::Repeated("exit"))
        );
        let after = record(&[
            Frame::Start { v: 1 },
            Frame::End,
            Frame::Stdout { d: b64(b"x") },
        ]);
        assert_eq!(parse_record(&after, LIMITS), Err(ParseError::AfterEnd));
        assert_eq!(
            parse_record(&record(&[Frame::Start { v: 9 }]), LIMITS),
            Err(ParseError::Version(9))
        );
    }
}
