//! The job: what the operator writes to the runner container's stdin. One JSON line (the
//! header), then the program's source, its stdin and each input file, back to back, exactly as
//! many bytes as the header announces. Nothing delimits the payload but those lengths, so the
//! header is checked before a byte of it is read.
use serde::{Deserialize, Serialize};

use crate::{EffectiveLimits, Language, PROTOCOL_VERSION, validate_relative_name};

/// The header line is small; anything longer is not a job.
pub const MAX_JOB_HEADER_BYTES: usize = 64 * 1024;
/// The source and stdin go to the job folder (a 4 MiB memory-backed volume): 256 Ki
/// characters of either are at most 1 MiB of UTF-8.
pub const MAX_CODE_BYTES: u64 = 1024 * 1024;
pub const MAX_STDIN_BYTES: u64 = 1024 * 1024;
const MAX_FILES: usize = 64;
const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 4096;

/// An input file: the next `bytes` of the payload become `/work/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub name: String,
    pub bytes: u64,
}

/// What the wrapper runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub v: u32,
    pub language: Language,
    #[serde(default)]
    pub args: Vec<String>,
    pub limits: EffectiveLimits,
    /// Bytes of source that follow the header.
    pub code_bytes: u64,
    /// Bytes of stdin that follow the source; `None`: the program's stdin is empty.
    #[serde(default)]
    pub stdin_bytes: Option<u64>,
    #[serde(default)]
    pub files: Vec<InputFile>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("the job header is not valid: {0}")]
    Header(String),
    #[error("the job has version {0}, expected {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("the job is not valid: {0}")]
    Invalid(String),
}

impl Job {
    /// The header line, newline included.
    pub fn header_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a job always serializes");
        line.push(b'\n');
        line
    }

    /// Reads a header line (without its newline) and checks everything the payload's reader
    /// relies on: names, counts and sizes.
    pub fn parse_header(line: &[u8]) -> Result<Job, JobError> {
        if line.len() > MAX_JOB_HEADER_BYTES {
            return Err(JobError::Header(format!(
                "over {MAX_JOB_HEADER_BYTES} bytes"
            )));
        }
        let job: Job = serde_json::from_slice(line).map_err(|e| JobError::Header(e.to_string()))?;
        job.check()?;
        Ok(job)
    }

    /// Checks everything the payload's reader relies on (what [`Job::parse_header`] checks
    /// after parsing): for a job that arrives inside another message, such as a container's
    /// `run` operation.
    pub fn check(&self) -> Result<(), JobError> {
        let invalid = |m: String| Err(JobError::Invalid(m));
        if self.v != PROTOCOL_VERSION {
            return Err(JobError::Version(self.v));
        }
        if self.code_bytes > MAX_CODE_BYTES {
            return invalid(format!("the source is over {MAX_CODE_BYTES} bytes"));
        }
        if self.stdin_bytes.unwrap_or(0) > MAX_STDIN_BYTES {
            return invalid(format!("stdin is over {MAX_STDIN_BYTES} bytes"));
        }
        if self.args.len() > MAX_ARGS || self.args.iter().any(|a| a.len() > MAX_ARG_BYTES) {
            return invalid("too many or too long arguments".into());
        }
        if self.files.len() > MAX_FILES {
            return invalid(format!("more than {MAX_FILES} input files"));
        }
        let mut total = 0u64;
        for (i, f) in self.files.iter().enumerate() {
            validate_relative_name(&f.name).map_err(|reason| {
                JobError::Invalid(format!("input file {:?}: {reason}", f.name))
            })?;
            if f.name == "outputs" || f.name.starts_with("outputs/") {
                return invalid(format!("input file {:?} would be an output", f.name));
            }
            if self.files[..i].iter().any(|g| g.name == f.name) {
                return invalid(format!("input file {:?} is given twice", f.name));
            }
            total = total.saturating_add(f.bytes);
        }
        if total > self.limits.max_input_bytes() {
            return invalid(format!(
                "input files are {total} bytes, more than /work holds ({} MiB)",
                self.limits.disk_mb
            ));
        }
        Ok(())
    }

    /// Bytes that follow the header line.
    pub fn payload_bytes(&self) -> u64 {
        self.code_bytes
            + self.stdin_bytes.unwrap_or(0)
            + self.files.iter().map(|f| f.bytes).sum::<u64>()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn limits() -> EffectiveLimits {
        EffectiveLimits {
            timeout_ms: 1000,
            memory_mb: 128,
            cpu_ms: 1000,
            cpu_millicores: 500,
            max_output_bytes: 1024,
            max_artifacts: 2,
            max_artifact_bytes: 100,
            max_artifact_total_bytes: 150,
            max_processes: 32,
            disk_mb: 1,
        }
    }

    fn job() -> Job {
        Job {
            v: PROTOCOL_VERSION,
            language: Language::Python,
            args: vec!["a".into()],
            limits: limits(),
            code_bytes: 10,
            stdin_bytes: Some(3),
            files: vec![InputFile {
                name: "data/in.csv".into(),
                bytes: 7,
            }],
        }
    }

    #[test]
    fn a_header_round_trips_and_announces_its_payload() {
        let j = job();
        let line = j.header_line();
        assert_eq!(*line.last().unwrap(), b'\n');
        let back = Job::parse_header(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, j);
        assert_eq!(back.payload_bytes(), 20);
    }

    #[test]
    fn headers_that_would_let_the_payload_escape_or_overflow_are_refused() {
        type Change = Box<dyn Fn(&mut Job)>;
        let cases: Vec<Change> = vec![
            Box::new(|j| j.v = 1),
            Box::new(|j| j.files[0].name = "../x".into()),
            Box::new(|j| j.files[0].name = "/etc/passwd".into()),
            Box::new(|j| j.files[0].name = "outputs/forged.png".into()),
            Box::new(|j| j.files.push(j.files[0].clone())),
            Box::new(|j| j.files[0].bytes = 2 * 1024 * 1024),
            Box::new(|j| j.code_bytes = MAX_CODE_BYTES + 1),
            Box::new(|j| j.stdin_bytes = Some(MAX_STDIN_BYTES + 1)),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut j = job();
            change(&mut j);
            let line = j.header_line();
            assert!(
                Job::parse_header(&line[..line.len() - 1]).is_err(),
                "case {i} was accepted"
            );
        }
        assert!(Job::parse_header(b"not json").is_err());
        assert!(Job::parse_header(&vec![b' '; MAX_JOB_HEADER_BYTES + 1]).is_err());
    }
}
