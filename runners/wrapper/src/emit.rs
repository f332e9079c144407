//! Writing the record: one JSON frame a line on the wrapper's stdout.
use std::io::{self, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use runner_protocol::{CHUNK_BYTES, Frame, encode_frame};

pub struct Emitter<W: Write> {
    out: W,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl<W: Write> Emitter<W> {
    pub fn new(out: W) -> Self {
        Emitter { out }
    }

    pub fn frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.out.write_all(&encode_frame(frame))
    }

    /// Program output, in frames of at most [`CHUNK_BYTES`].
    pub fn output(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(CHUNK_BYTES) {
            let d = B64.encode(chunk);
            self.frame(&match stream {
                Stream::Stdout => Frame::Stdout { d },
                Stream::Stderr => Frame::Stderr { d },
            })?;
        }
        Ok(())
    }

    /// The content of the file whose `file` frame was just written.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(CHUNK_BYTES) {
            self.frame(&Frame::Data {
                d: B64.encode(chunk),
            })?;
        }
        Ok(())
    }

    /// Hands what was written so far to the reader (the log is read live).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer back, with everything written so far.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One output stream: counts every byte the program wrote, lets through the first `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CappedStream {
    cap: u64,
    total: u64,
}

impl CappedStream {
    pub fn new(cap: u64) -> Self {
        CappedStream { cap, total: 0 }
    }

    /// The part of `chunk` still under the cap.
    pub fn admit<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let room = self.cap.saturating_sub(self.total);
        self.total = self.total.saturating_add(chunk.len() as u64);
        &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))]
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn truncated(&self) -> bool {
        self.total > self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_protocol::{EffectiveLimits, PROTOCOL_VERSION, parse_record};

    #[test]
    fn a_stream_lets_through_up_to_its_cap_and_counts_the_rest() {
        let mut s = CappedStream::new(5);
        assert_eq!(s.admit(b"abc"), b"abc");
        assert_eq!(s.admit(b"defg"), b"de");
        assert_eq!(s.admit(b"hij"), b"");
        assert_eq!(s.total(), 10);
        assert!(s.truncated());
        let mut exact = CappedStream::new(3);
        exact.admit(b"abc");
        assert!(!exact.truncated());
    }

    #[test]
    fn large_output_is_split_into_chunks_the_parser_reassembles() {
        let mut emitter = Emitter::new(Vec::new());
        let big = vec![7u8; CHUNK_BYTES * 2 + 10];
        emitter
            .frame(&Frame::Start {
                v: PROTOCOL_VERSION,
            })
            .unwrap();
        emitter.output(Stream::Stdout, &big).unwrap();
        let log = emitter.into_inner();
        assert_eq!(log.iter().filter(|b| **b == b'\n').count(), 4);
        let limits = EffectiveLimits {
            timeout_ms: 1000,
            memory_mb: 64,
            cpu_ms: 1000,
            cpu_millicores: 100,
            max_output_bytes: 1 << 20,
            max_artifacts: 0,
            max_artifact_bytes: 0,
            max_artifact_total_bytes: 0,
            max_processes: 8,
            disk_mb: 1,
        };
        assert_eq!(parse_record(&log, &limits).unwrap().stdout, big);
    }
}
