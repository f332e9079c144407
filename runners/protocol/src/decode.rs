//! Reading a runner's record: an incremental decoder fed the stream as it arrives (the attach
//! stream, a followed log) or a whole log at once. Every byte is untrusted: caps are applied
//! by cutting and flagging, never trusted from the wrapper; names are checked; files must
//! match their declared size and checksum.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::{
    EffectiveLimits, ExitReport, Frame, PROTOCOL_VERSION, SkipReason, SkippedFile, Stream,
    validate_relative_name,
};

/// Lines longer than this are not frames (a data frame is about 11 KiB).
const MAX_LINE_BYTES: usize = 64 * 1024;
const MAX_DIAGNOSTIC_LINES: usize = 20;
const MAX_DIAGNOSTIC_CHARS: usize = 500;
const MAX_SKIPPED: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    /// Empty when the decoder was told not to keep file contents.
    pub content: Vec<u8>,
    pub bytes: u64,
    pub sha256: String,
}

/// What a record says, after validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub started: bool,
    /// Empty when the decoder was told not to keep output (it is in the events instead).
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
    /// Lines that were not frames (the wrapper's own diagnostics), capped.
    pub diagnostics: Vec<String>,
    /// A container's files the run removed, capped.
    pub removed: Vec<String>,
}

/// Something the record said, as it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Started,
    /// Output within the cap (what is over it is only counted).
    Output {
        stream: Stream,
        bytes: Vec<u8>,
    },
    Exit(ExitReport),
    /// An output file within the caps begins (only from a [`Decoder::streaming`]): its bytes
    /// follow as [`Event::FileData`], then [`Event::Artifact`] once all arrived and matched
    /// its checksum (or [`Event::Skipped`] if it was cut short).
    FileStart {
        name: String,
        bytes: u64,
    },
    FileData(Vec<u8>),
    /// An output file arrived whole and matched its checksum.
    Artifact {
        name: String,
        bytes: u64,
        sha256: String,
    },
    Skipped(SkippedFile),
    /// A container's file the run removed.
    Removed(String),
    End,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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

struct OpenFile {
    name: String,
    declared: u64,
    sha256: String,
    hasher: Sha256,
    received: u64,
    content: Vec<u8>,
    /// Over a cap or refused: read to keep the stream in step, then dropped.
    keep: bool,
}

/// Decodes a record fed in pieces of any size.
pub struct Decoder {
    limits: EffectiveLimits,
    keep_output: bool,
    keep_files: bool,
    stream_files: bool,
    line: Vec<u8>,
    /// Inside a line longer than any frame: dropped up to its newline.
    overlong: bool,
    rec: Record,
    open: Option<OpenFile>,
    admitted: [u64; 2],
    total_artifact_bytes: u64,
    failed: Option<ParseError>,
}

impl Decoder {
    /// A decoder that keeps everything in its [`Record`] (the operator's).
    pub fn new(limits: &EffectiveLimits) -> Self {
        Decoder {
            limits: limits.clone(),
            keep_output: true,
            keep_files: true,
            stream_files: false,
            line: Vec::new(),
            overlong: false,
            rec: Record::default(),
            open: None,
            admitted: [0, 0],
            total_artifact_bytes: 0,
            failed: None,
        }
    }

    /// A decoder that only reports events and keeps neither output nor file contents, so its
    /// memory stays small whatever the program prints (a live view).
    pub fn events_only(limits: &EffectiveLimits) -> Self {
        Decoder {
            keep_output: false,
            keep_files: false,
            ..Decoder::new(limits)
        }
    }

    /// A decoder that keeps the output but hands output files over as they arrive
    /// ([`Event::FileStart`], [`Event::FileData`]) instead of keeping them: what the operator
    /// streams to object storage, so files of any size cost it a fixed buffer.
    pub fn streaming(limits: &EffectiveLimits) -> Self {
        Decoder {
            keep_files: false,
            stream_files: true,
            ..Decoder::new(limits)
        }
    }

    /// The record as far as it has been read.
    pub fn record(&self) -> &Record {
        &self.rec
    }

    /// Feeds the next bytes; returns what they completed.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut events = Vec::new();
        while !bytes.is_empty() {
            let (piece, rest, ended) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.overlong {
                if self.line.len() + piece.len() > MAX_LINE_BYTES {
                    self.overlong = true;
                    let mut head = std::mem::take(&mut self.line);
                    head.extend_from_slice(&piece[..piece.len().min(MAX_DIAGNOSTIC_CHARS * 4)]);
                    let head = String::from_utf8_lossy(&head).into_owned();
                    self.diagnostic(&head);
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            if ended {
                if !self.overlong {
                    let line = std::mem::take(&mut self.line);
                    if let Err(e) = self.line_done(&line, &mut events) {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                }
                self.overlong = false;
            }
        }
        Ok(events)
    }

    /// The end of the stream: a last line without its newline is read, a file cut short is
    /// dropped, and the record is returned.
    pub fn finish(mut self) -> Result<Record, ParseError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.overlong && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut Vec::new())?;
        }
        if let Some(file) = self.open.take() {
            self.skip(
                file.name,
                SkipReason::CutShort,
                "the record ended before the file was complete",
                &mut Vec::new(),
            );
        }
        Ok(self.rec)
    }

    fn diagnostic(&mut self, text: &str) {
        if self.rec.diagnostics.len() < MAX_DIAGNOSTIC_LINES && !text.trim().is_empty() {
            self.rec
                .diagnostics
                .push(text.chars().take(MAX_DIAGNOSTIC_CHARS).collect());
        }
    }

    fn skip(&mut self, name: String, reason: SkipReason, detail: &str, events: &mut Vec<Event>) {
        if reason.is_over_a_limit() {
            self.rec.artifact_limit_exceeded = true;
        }
        if self.rec.skipped.len() >= MAX_SKIPPED {
            return;
        }
        let skipped = SkippedFile {
            name: name.chars().take(255).collect(),
            reason,
            detail: detail.chars().take(200).collect(),
        };
        events.push(Event::Skipped(skipped.clone()));
        self.rec.skipped.push(skipped);
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<Event>) -> Result<(), ParseError> {
        if line.is_empty() {
            return Ok(());
        }
        let frame = match serde_json::from_slice::<Frame>(line) {
            Ok(frame) => frame,
            Err(_) => {
                let text = String::from_utf8_lossy(line).into_owned();
                self.diagnostic(&text);
                return Ok(());
            }
        };
        // A container's stream frames its records; the frames between them are not theirs.
        if matches!(
            frame,
            Frame::Run { .. } | Frame::Sync { .. } | Frame::Ack { .. }
        ) {
            return Ok(());
        }
        if self.rec.complete {
            return Err(ParseError::AfterEnd);
        }
        if !self.rec.started && !matches!(frame, Frame::Start { .. }) {
            return Err(ParseError::BeforeStart(frame.name()));
        }
        // A file ends when its declared size has arrived; any other frame with one still open
        // means it was cut short.
        if !matches!(frame, Frame::Data { .. })
            && let Some(file) = self.open.take()
        {
            self.file_done(file, events)?;
        }
        match frame {
            Frame::Start { v } => {
                if self.rec.started {
                    return Err(ParseError::Repeated("start"));
                }
                if v != PROTOCOL_VERSION {
                    return Err(ParseError::Version(v));
                }
                self.rec.started = true;
                events.push(Event::Started);
            }
            Frame::Stdout { d } => self.output(Stream::Stdout, &d, events)?,
            Frame::Stderr { d } => self.output(Stream::Stderr, &d, events)?,
            Frame::Exit(report) => {
                if self.rec.exit.is_some() {
                    return Err(ParseError::Repeated("exit"));
                }
                self.rec.stdout_truncated |= report.stdout_truncated;
                self.rec.stderr_truncated |= report.stderr_truncated;
                events.push(Event::Exit(report.clone()));
                self.rec.exit = Some(report);
            }
            Frame::File { name, size, sha256 } => {
                let refusal = if let Err(reason) = validate_relative_name(&name) {
                    Some((SkipReason::InvalidName, reason))
                } else if self.rec.artifacts.iter().any(|a| a.name == name) {
                    Some((SkipReason::Duplicate, "duplicate name".to_string()))
                } else if self.rec.artifacts.len() >= self.limits.max_artifacts as usize {
                    Some((SkipReason::TooMany, "too many output files".to_string()))
                } else if size > self.limits.max_artifact_bytes {
                    Some((SkipReason::TooLarge, "file over the size limit".to_string()))
                } else if self.total_artifact_bytes.saturating_add(size)
                    > self.limits.max_artifact_total_bytes
                {
                    Some((
                        SkipReason::TotalTooLarge,
                        "output files over the total size limit".to_string(),
                    ))
                } else {
                    None
                };
                let keep = refusal.is_none();
                if let Some((reason, detail)) = refusal {
                    self.skip(name.clone(), reason, &detail, events);
                } else if self.stream_files {
                    events.push(Event::FileStart {
                        name: name.clone(),
                        bytes: size,
                    });
                }
                let file = OpenFile {
                    name,
                    declared: size,
                    sha256,
                    hasher: Sha256::new(),
                    received: 0,
                    content: Vec::new(),
                    keep,
                };
                if size == 0 {
                    self.file_done(file, events)?;
                } else {
                    self.open = Some(file);
                }
            }
            Frame::Data { d } => {
                let Some(file) = self.open.as_mut() else {
                    return Err(ParseError::DataWithoutFile);
                };
                let chunk = B64.decode(d).map_err(|_| ParseError::Base64("data"))?;
                let got = file.received + chunk.len() as u64;
                if got > file.declared {
                    return Err(ParseError::FileOverrun {
                        name: file.name.clone(),
                        declared: file.declared,
                        got,
                    });
                }
                file.received = got;
                if file.keep {
                    file.hasher.update(&chunk);
                    if self.keep_files {
                        file.content.extend_from_slice(&chunk);
                    }
                }
                if file.keep && self.stream_files {
                    events.push(Event::FileData(chunk));
                }
                if got == file.declared {
                    let file = self.open.take().expect("checked above");
                    self.file_done(file, events)?;
                }
            }
            Frame::Skipped(skipped) => {
                self.skip(skipped.name, skipped.reason, &skipped.detail, events);
            }
            Frame::Removed { name } => {
                if validate_relative_name(&name).is_ok() && self.rec.removed.len() < MAX_SKIPPED {
                    events.push(Event::Removed(name.clone()));
                    self.rec.removed.push(name);
                }
            }
            Frame::Run { .. } | Frame::Sync { .. } | Frame::Ack { .. } => {}
            Frame::End => {
                self.rec.complete = true;
                events.push(Event::End);
            }
        }
        Ok(())
    }

    fn output(
        &mut self,
        stream: Stream,
        d: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), ParseError> {
        let chunk = B64
            .decode(d)
            .map_err(|_| ParseError::Base64(stream.as_str()))?;
        let i = stream as usize;
        let room = self
            .limits
            .max_output_bytes
            .saturating_sub(self.admitted[i]);
        let take = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take < chunk.len() {
            match stream {
                Stream::Stdout => self.rec.stdout_truncated = true,
                Stream::Stderr => self.rec.stderr_truncated = true,
            }
        }
        if take == 0 {
            return Ok(());
        }
        self.admitted[i] += take as u64;
        let admitted = &chunk[..take];
        if self.keep_output {
            match stream {
                Stream::Stdout => self.rec.stdout.extend_from_slice(admitted),
                Stream::Stderr => self.rec.stderr.extend_from_slice(admitted),
            }
        }
        events.push(Event::Output {
            stream,
            bytes: admitted.to_vec(),
        });
        Ok(())
    }

    fn file_done(&mut self, file: OpenFile, events: &mut Vec<Event>) -> Result<(), ParseError> {
        if file.received != file.declared {
            self.skip(
                file.name,
                SkipReason::CutShort,
                "the file was cut short",
                events,
            );
            return Ok(());
        }
        if !file.keep {
            return Ok(());
        }
        let digest = hex::encode(file.hasher.finalize());
        if !digest.eq_ignore_ascii_case(&file.sha256) {
            return Err(ParseError::Checksum(file.name));
        }
        self.total_artifact_bytes += file.declared;
        events.push(Event::Artifact {
            name: file.name.clone(),
            bytes: file.declared,
            sha256: digest.clone(),
        });
        self.rec.artifacts.push(Artifact {
            name: file.name,
            content: file.content,
            bytes: file.declared,
            sha256: digest,
        });
        Ok(())
    }
}

/// Decodes a whole record at once (a finished container's log).
pub fn parse_record(log: &[u8], limits: &EffectiveLimits) -> Result<Record, ParseError> {
    let mut decoder = Decoder::new(limits);
    decoder.push(log)?;
    decoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_frame;

    fn limits() -> EffectiveLimits {
        EffectiveLimits {
            timeout_ms: 1000,
            memory_mb: 128,
            cpu_ms: 1000,
            cpu_millicores: 500,
            max_output_bytes: 10,
            max_artifacts: 2,
            max_artifact_bytes: 100,
            max_artifact_total_bytes: 150,
            max_processes: 32,
            disk_mb: 1,
        }
    }

    fn b64(s: &[u8]) -> String {
        B64.encode(s)
    }

    fn record(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(encode_frame).collect()
    }

    fn start() -> Frame {
        Frame::Start {
            v: PROTOCOL_VERSION,
        }
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

    fn parse(log: &[u8]) -> Result<Record, ParseError> {
        parse_record(log, &limits())
    }

    #[test]
    fn a_complete_record_yields_output_exit_and_files() {
        let mut frames = vec![
            start(),
            Frame::Stdout { d: b64(b"2\n") },
            Frame::Stderr { d: b64(b"warn") },
            exit0(),
        ];
        frames.extend(file("plot.png", b"PNG"));
        frames.push(Frame::End);
        let rec = parse(&record(&frames)).unwrap();
        assert!(rec.complete);
        assert_eq!(rec.stdout, b"2\n");
        assert_eq!(rec.stderr, b"warn");
        assert_eq!(rec.exit.unwrap().exit_code, Some(0));
        assert_eq!(rec.artifacts.len(), 1);
        assert_eq!(rec.artifacts[0].content, b"PNG");
    }

    #[test]
    fn a_streaming_decoder_hands_files_over_in_pieces_and_keeps_none() {
        let mut frames = vec![start(), Frame::Stdout { d: b64(b"out") }, exit0()];
        frames.push(Frame::File {
            name: "big.bin".into(),
            size: 6,
            sha256: hex::encode(Sha256::digest(b"abcdef")),
        });
        frames.push(Frame::Data { d: b64(b"abc") });
        frames.push(Frame::Data { d: b64(b"def") });
        frames.extend(file("over.bin", &[0u8; 101]));
        frames.push(Frame::End);
        let mut d = Decoder::streaming(&limits());
        let events = d.push(&record(&frames)).unwrap();
        let files: Vec<&Event> = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::FileStart { .. } | Event::FileData(_) | Event::Artifact { .. }
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                &Event::FileStart {
                    name: "big.bin".into(),
                    bytes: 6
                },
                &Event::FileData(b"abc".to_vec()),
                &Event::FileData(b"def".to_vec()),
                &Event::Artifact {
                    name: "big.bin".into(),
                    bytes: 6,
                    sha256: hex::encode(Sha256::digest(b"abcdef")),
                },
            ],
            "a file over the caps is skipped, never started"
        );
        let rec = d.finish().unwrap();
        assert_eq!(rec.stdout, b"out");
        assert!(rec.artifacts[0].content.is_empty(), "nothing kept");
        assert!(rec.artifact_limit_exceeded);
    }

    #[test]
    fn fed_a_byte_at_a_time_it_decodes_the_same_record_and_events_in_order() {
        let mut frames = vec![
            start(),
            Frame::Stdout { d: b64(b"one ") },
            Frame::Stderr { d: b64(b"e") },
            Frame::Stdout { d: b64(b"two") },
            exit0(),
        ];
        frames.extend(file("a.txt", b"abc"));
        frames.push(Frame::End);
        let log = record(&frames);
        let mut d = Decoder::new(&limits());
        let mut events = Vec::new();
        for b in &log {
            events.extend(d.push(std::slice::from_ref(b)).unwrap());
        }
        let rec = d.finish().unwrap();
        assert_eq!(rec, parse(&log).unwrap());
        let outputs: Vec<(Stream, Vec<u8>)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Output { stream, bytes } => Some((*stream, bytes.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            outputs,
            [
                (Stream::Stdout, b"one ".to_vec()),
                (Stream::Stderr, b"e".to_vec()),
                (Stream::Stdout, b"two".to_vec())
            ]
        );
        assert_eq!(events.first(), Some(&Event::Started));
        assert_eq!(events.last(), Some(&Event::End));
    }

    #[test]
    fn an_events_only_decoder_keeps_no_output_or_file_bytes() {
        let mut frames = vec![start(), Frame::Stdout { d: b64(b"hello") }, exit0()];
        frames.extend(file("a.txt", b"abc"));
        let mut d = Decoder::events_only(&limits());
        let events = d.push(&record(&frames)).unwrap();
        assert!(events.contains(&Event::Output {
            stream: Stream::Stdout,
            bytes: b"hello".to_vec()
        }));
        let rec = d.finish().unwrap();
        assert!(rec.stdout.is_empty());
        assert_eq!(rec.artifacts[0].bytes, 3);
        assert!(rec.artifacts[0].content.is_empty());
    }

    #[test]
    fn output_over_the_cap_is_cut_and_flagged_even_if_the_wrapper_did_not() {
        let frames = [
            start(),
            Frame::Stdout {
                d: b64(b"0123456789abc"),
            },
            Frame::Stdout { d: b64(b"more") },
            exit0(),
            Frame::End,
        ];
        let rec = parse(&record(&frames)).unwrap();
        assert_eq!(rec.stdout, b"0123456789");
        assert!(rec.stdout_truncated);
    }

    #[test]
    fn non_frame_lines_are_diagnostics_not_output_and_overlong_lines_are_cut() {
        let mut log = b"wrapper: something odd\n".to_vec();
        log.extend(vec![b'x'; MAX_LINE_BYTES * 3]);
        log.push(b'\n');
        log.extend(record(&[start(), exit0(), Frame::End]));
        let rec = parse(&log).unwrap();
        assert_eq!(rec.diagnostics[0], "wrapper: something odd");
        assert_eq!(rec.diagnostics.len(), 2);
        assert!(rec.diagnostics[1].len() <= MAX_DIAGNOSTIC_CHARS);
        assert!(rec.stdout.is_empty() && rec.complete);
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
            let mut frames = vec![start(), exit0()];
            frames.extend(file(bad, b"x"));
            frames.push(Frame::End);
            let rec = parse(&record(&frames)).unwrap();
            assert!(rec.artifacts.is_empty(), "{bad:?} was accepted");
            assert_eq!(rec.skipped.len(), 1, "{bad:?}");
            assert_eq!(rec.skipped[0].reason, SkipReason::InvalidName);
            assert!(!rec.artifact_limit_exceeded);
        }
        assert!(validate_relative_name("charts/plot.png").is_ok());
    }

    #[test]
    fn artifact_caps_on_count_size_and_total_skip_and_flag() {
        let mut frames = vec![start(), exit0()];
        frames.extend(file("big", &[0u8; 101]));
        frames.extend(file("a", &[1u8; 80]));
        frames.extend(file("b", &[2u8; 80])); // 160 > total 150
        frames.extend(file("c", &[3u8; 10]));
        frames.extend(file("d", &[4u8; 10])); // third kept file: over the count
        frames.push(Frame::End);
        let rec = parse(&record(&frames)).unwrap();
        let kept: Vec<_> = rec.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(kept, ["a", "c"]);
        assert!(rec.artifact_limit_exceeded);
        let reasons: Vec<_> = rec.skipped.iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                SkipReason::TooLarge,
                SkipReason::TotalTooLarge,
                SkipReason::TooMany
            ]
        );
    }

    #[test]
    fn only_the_wrappers_limit_kinds_fail_the_run() {
        let skipped = |reason| {
            Frame::Skipped(SkippedFile {
                name: "x".into(),
                reason,
                detail: "limit limit limit".into(),
            })
        };
        let rec = parse(&record(&[start(), skipped(SkipReason::NotAFile)])).unwrap();
        assert!(!rec.artifact_limit_exceeded, "words are not a reason");
        let rec = parse(&record(&[start(), skipped(SkipReason::TooMany)])).unwrap();
        assert!(rec.artifact_limit_exceeded);
    }

    #[test]
    fn a_file_whose_bytes_do_not_match_its_checksum_is_an_error() {
        let frames = [
            start(),
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
            parse(&record(&frames)),
            Err(ParseError::Checksum("x".into()))
        );
    }

    #[test]
    fn more_data_than_declared_is_an_error_and_it_sticks() {
        let frames = [
            start(),
            Frame::File {
                name: "x".into(),
                size: 2,
                sha256: "00".repeat(32),
            },
            Frame::Data { d: b64(b"abc") },
        ];
        let mut d = Decoder::new(&limits());
        assert!(matches!(
            d.push(&record(&frames)),
            Err(ParseError::FileOverrun { .. })
        ));
        assert!(d.push(b"\n").is_err());
    }

    #[test]
    fn a_record_cut_short_keeps_what_arrived_and_drops_the_partial_file() {
        let mut log = record(&[
            start(),
            Frame::Stdout { d: b64(b"tick") },
            Frame::File {
                name: "x".into(),
                size: 10,
                sha256: "00".repeat(32),
            },
            Frame::Data { d: b64(b"abc") },
        ]);
        log.extend_from_slice(b"{\"t\":\"data\",\"d\":\"tr"); // a line the kill cut in half
        let rec = parse(&log).unwrap();
        assert!(!rec.complete);
        assert!(rec.exit.is_none());
        assert_eq!(rec.stdout, b"tick");
        assert!(rec.artifacts.is_empty());
        assert_eq!(rec.skipped[0].name, "x");
        assert_eq!(rec.skipped[0].reason, SkipReason::CutShort);
    }

    #[test]
    fn frames_before_start_after_end_or_repeated_are_errors() {
        assert!(matches!(
            parse(&record(&[exit0()])),
            Err(ParseError::BeforeStart("exit"))
        ));
        let twice = record(&[start(), exit0(), exit0()]);
        assert_eq!(parse(&twice), Err(ParseError::Repeated("exit")));
        let after = record(&[start(), Frame::End, Frame::Stdout { d: b64(b"x") }]);
        assert_eq!(parse(&after), Err(ParseError::AfterEnd));
        assert_eq!(
            parse(&record(&[Frame::Start { v: 9 }])),
            Err(ParseError::Version(9))
        );
    }
}
