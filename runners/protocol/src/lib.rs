//! The contract between the operator and the runner wrapper inside a pod.
//!
//! The operator hands the wrapper a [`Job`] (a JSON file in the pod's inputs Secret). The
//! wrapper owns the container's stdout and writes one [`Frame`] per line: the program's output
//! as it arrives, then the exit report, then each output file, then an end marker. The
//! operator reads that back from the container's log through the Kubernetes API and feeds it
//! to [`parse_record`], which treats every byte as untrusted: a program that managed to write
//! to the log, or a broken wrapper, must not be able to exceed the caps, name a file outside
//! the outputs folder, or make the operator believe a different result.
#![forbid(unsafe_code)]

mod job;
mod record;

pub use job::{InputFile, Job, JobLimits, Language};
pub use record::{
    Artifact, ExitReport, Frame, ParseError, RecordLimits, RunRecord, SkippedFile, encode_frame,
    parse_record, validate_relative_name,
};

/// Bytes of raw payload per stdout/stderr/file frame. Encoded as base64 inside JSON a frame
/// stays well under the 16 KiB line size at which container runtimes split log lines.
pub const CHUNK_BYTES: usize = 8 * 1024;

/// Version written in the start frame; the parser refuses others.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the inputs Secret is mounted in the runner container.
pub const JOB_DIR: &str = "/job";
/// The job description inside [`JOB_DIR`].
pub const JOB_FILE: &str = "job.json";
/// The program's working directory (an emptyDir with a size limit).
pub const WORK_DIR: &str = "/work";
/// Files the program leaves here are collected as artifacts.
pub const OUTPUTS_DIR: &str = "/work/outputs";
