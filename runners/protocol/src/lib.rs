//! The contract between the operator and the runner wrapper inside a pod.
//!
//! The operator attaches to the runner container and writes a [`Job`] to its stdin: one JSON
//! line, then the program's source, its stdin and each input file, as many bytes as the line
//! announced. The wrapper owns the container's stdout and writes one [`Frame`] per line: the
//! program's output as it arrives, then the exit report, then each output file, then an end
//! marker. The operator reads that back, live from the attach stream or afterwards from the
//! container's log, through a [`Decoder`], which treats every byte as untrusted: a program
//! that managed to write to the stream, or a broken wrapper, must not be able to exceed the
//! caps, name a file outside the outputs folder, or make the operator believe a different
//! result. The REST API decodes the same stream to show output live.
#![forbid(unsafe_code)]

mod container;
mod decode;
#[cfg(feature = "follow")]
mod follow;
mod frame;
mod job;
mod language;
pub mod limits;

pub use container::{CONTAINER_DATA_DIR, DATA_LINE_BYTES, Data, Op, data_lines, sync_line};
pub use decode::{Decoder, Event, ParseError, Record, parse_record};
#[cfg(feature = "follow")]
pub use follow::{Followed, Follower};
pub use frame::{
    ExitReport, Frame, SkipReason, SkippedFile, Stream, encode_frame, validate_relative_name,
};
pub use job::{InputFile, Job, JobError, MAX_JOB_HEADER_BYTES};
pub use language::Language;
pub use limits::EffectiveLimits;

/// Bytes of raw payload per stdout/stderr/file frame. Encoded as base64 inside JSON a frame
/// stays well under the 16 KiB line size at which container runtimes split log lines.
pub const CHUNK_BYTES: usize = 8 * 1024;

/// Version written in the start frame and the job line; each side refuses others.
pub const PROTOCOL_VERSION: u32 = 2;

/// The runner pod's one container: the job goes to its stdin, the record comes from its
/// stdout (the attach stream and the container log).
pub const RUNNER_CONTAINER: &str = "runner";

/// A record is never longer than this (2 x 1 MiB of output and 4 MiB of files, base64, with
/// framing): more of a container's log is never read.
pub const MAX_RECORD_BYTES: u64 = 12 * 1024 * 1024;

/// Where the wrapper writes the program's source and stdin (a small memory-backed volume).
pub const JOB_DIR: &str = "/job";
/// The program's working directory (a memory-backed volume of `disk_mb`).
pub const WORK_DIR: &str = "/work";
/// Files the program leaves here are collected as artifacts.
pub const OUTPUTS_DIR: &str = "/work/outputs";
