//! A container's stream: the operations the operator writes to a container pod's stdin, one
//! JSON line each. Unlike a one-shot pod's stdin, a container's stays open across attach
//! sessions (a new leader attaches again), so the stream must survive a writer that died
//! mid-operation: every line is self-contained (data travels base64 in `{"d": ...}` lines),
//! and a new session begins with `sync`, which discards whatever partial operation came
//! before it. The container answers on its stdout (the record frames of [`crate::Frame`],
//! plus `run`, `sync` and `ack`).
//!
//! One operation at a time: the operator waits for a run's `end` or an operation's `ack`
//! before it writes the next (an `interrupt` may come while a run goes).
use serde::{Deserialize, Serialize};

use crate::Job;

/// Bytes of payload per data line, at most.
pub const DATA_LINE_BYTES: usize = 48 * 1024;

/// Where a container keeps its files (the programs' working folder).
pub const CONTAINER_DATA_DIR: &str = "/mnt/data";

/// An operation for a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A new session: discard any partial operation; answer `sync` (and send the record of
    /// the run in progress again, if one is).
    Sync { nonce: String },
    /// Run a program in the container's interpreter of its language (its state kept between
    /// runs): the job's payload follows in data lines; its input files go into the
    /// container's folder. The record follows `run`, from `start` to `end`, with the files
    /// the run created or changed in the folder as its output files, and `removed` for those
    /// it removed.
    Run { id: String, job: Job },
    /// Write a file into the container's folder: `bytes` follow in data lines; `ack` after.
    Put {
        id: String,
        path: String,
        bytes: u64,
    },
    /// Remove a file from the container's folder; `ack` after.
    Delete { id: String, path: String },
    /// Interrupt the run in progress (it ends as cancelled; the interpreter's state stays).
    Interrupt { id: String },
}

/// A piece of an operation's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    pub d: String,
}

impl Op {
    /// The line that carries the operation, newline included.
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("an operation serializes");
        line.push(b'\n');
        line
    }
}

/// The data lines that carry `bytes`.
pub fn data_lines(bytes: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    use base64::Engine;
    bytes.chunks(DATA_LINE_BYTES).map(|chunk| {
        let data = Data {
            d: base64::engine::general_purpose::STANDARD.encode(chunk),
        };
        let mut line = serde_json::to_vec(&data).expect("data serializes");
        line.push(b'\n');
        line
    })
}

/// The start of a new session: a newline ends any line a dead writer left half written.
pub fn sync_line(nonce: &str) -> Vec<u8> {
    let mut line = vec![b'\n'];
    line.extend(
        Op::Sync {
            nonce: nonce.to_string(),
        }
        .line(),
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_one_line_each_and_read_back() {
        let op = Op::Put {
            id: "op-1".into(),
            path: "data/in.csv".into(),
            bytes: 3,
        };
        let line = op.line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let back: Op = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, op);
        let sync = sync_line("n1");
        assert!(sync.starts_with(b"\n{\"op\":\"sync\""));
    }

    #[test]
    fn data_lines_carry_the_bytes_in_pieces() {
        use base64::Engine;
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let lines: Vec<Vec<u8>> = data_lines(&bytes).collect();
        assert_eq!(lines.len(), 3);
        let mut back = Vec::new();
        for line in lines {
            let data: Data = serde_json::from_slice(&line).unwrap();
            back.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(data.d)
                    .unwrap(),
            );
        }
        assert_eq!(back, bytes);
    }
}
