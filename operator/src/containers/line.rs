//! A container's line: the attach session this process holds to a container's pod. It
//! writes operations ([`runner_protocol::Op`], one line each, payloads in data lines) and
//! reads the container's stream a line at a time. A line begins with `sync`, which makes
//! the container drop whatever a dead writer left half written and say which run (if any)
//! is in progress.
use futures::io::AsyncReadExt;
use runner_protocol::{Frame, Op, data_lines, sync_line};
use tokio::io::AsyncWriteExt;
use tokio::time::{Duration, Instant};

use crate::streams::{Attached, Reader, Writer};

/// Lines longer than this are not frames: dropped up to their newline.
const MAX_LINE: usize = 128 * 1024;
/// How long a container may take to answer `sync`.
const SYNC_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("the container's stream ended")]
    Ended,
    #[error("writing to the container: {0}")]
    Write(#[from] std::io::Error),
    #[error("the container did not answer in time")]
    Silent,
}

pub struct Line {
    /// The pod it is attached to.
    pub pod: String,
    stdin: Writer,
    stdout: Reader,
    pending: Vec<u8>,
    buf: Vec<u8>,
    _session: Attached,
}

/// A line of the container's stream: a frame, or text that is not one (a diagnostic).
pub enum Read {
    Frame(Frame, Vec<u8>),
    Other,
}

impl Line {
    /// Opens the line on an attach session and syncs it; returns the line and the run the
    /// container has in progress (whose record it sends again, from `run`).
    pub async fn open(
        mut session: Attached,
        pod: String,
    ) -> Result<(Line, Option<String>), LineError> {
        let (Some(stdin), Some(stdout)) = (session.stdin.take(), session.stdout.take()) else {
            return Err(LineError::Ended);
        };
        let mut line = Line {
            pod,
            stdin,
            stdout,
            pending: Vec::new(),
            buf: vec![0; 64 * 1024],
            _session: session,
        };
        let nonce = format!("{:016x}", rand::random::<u64>());
        line.stdin.write_all(&sync_line(&nonce)).await?;
        line.stdin.flush().await?;
        let deadline = Instant::now() + SYNC_WAIT;
        loop {
            let read = tokio::time::timeout_at(deadline, line.next())
                .await
                .map_err(|_| LineError::Silent)??;
            if let Read::Frame(Frame::Sync { nonce: n, busy }, _) = read
                && n == nonce
            {
                return Ok((line, busy));
            }
        }
    }

    /// Writes an operation, and its payload as data lines.
    pub async fn send(&mut self, op: &Op, payload: Option<&[u8]>) -> Result<(), LineError> {
        self.stdin.write_all(&op.line()).await?;
        for data in payload.into_iter().flat_map(data_lines) {
            self.stdin.write_all(&data).await?;
        }
        self.stdin.flush().await?;
        Ok(())
    }

    /// Writes raw lines (data lines of a streamed payload).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), LineError> {
        self.stdin.write_all(bytes).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), LineError> {
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next line of the container's stream.
    pub async fn next(&mut self) -> Result<Read, LineError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(match serde_json::from_slice::<Frame>(&line) {
                    Ok(frame) => Read::Frame(frame, line),
                    Err(_) => Read::Other,
                });
            }
            if self.pending.len() > MAX_LINE {
                // Not a frame: drop it up to its newline.
                self.pending.clear();
            }
            let n = self.stdout.read(&mut self.buf).await.unwrap_or(0);
            if n == 0 {
                return Err(LineError::Ended);
            }
            self.pending.extend_from_slice(&self.buf[..n]);
        }
    }
}
