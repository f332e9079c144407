//! A container pod's log holds the record of every run the container ran, one after
//! another, each after a `run` frame naming the run (and `ack`s of file operations between
//! them): the lines of one run's record, cut out of it as the log arrives, so the live view
//! of a run in a container follows that run only and never shows another's output.
//!
//! The slice starts after the `run` frame with the run's UID and stops after that record's
//! `end` frame, or at the next `run` or `sync` frame: a record sent again after a new
//! session (`sync`) is not followed, it is read from storage once the run has finished.
//! Only lines short enough to be such a frame are parsed; a longer one (output, a file's
//! data) is passed on or dropped as it arrives, so the slice holds at most one short line.
use futures::io::{AsyncRead, AsyncReadExt};
use futures::{StreamExt, TryStreamExt, stream};
use runner_protocol::Frame;

/// Longer than any `run`, `sync` or `end` frame (a `run` frame carries a UID).
const SHORT_LINE: usize = 512;
/// Bytes read from the log at a time.
const READ_BYTES: usize = 64 * 1024;

/// Where the slice is in the log.
pub struct RunSlice {
    uid: String,
    inside: bool,
    done: bool,
    /// The current line so far, while it is short enough to be a frame that matters.
    head: Vec<u8>,
    /// The current line is longer than that: passed on (inside) or dropped up to its end.
    long: bool,
}

impl RunSlice {
    pub fn new(uid: &str) -> Self {
        RunSlice {
            uid: uid.to_string(),
            inside: false,
            done: false,
            head: Vec::new(),
            long: false,
        }
    }

    /// Whether the run's record has ended (nothing more of the log is the run's).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reads the next bytes of the log; appends to `out` those of the run's record.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while !bytes.is_empty() && !self.done {
            let (piece, ended, rest) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], true, &bytes[i + 1..]),
                None => (bytes, false, &[][..]),
            };
            bytes = rest;
            if !self.long && self.head.len() + piece.len() > SHORT_LINE {
                self.long = true;
                let head = std::mem::take(&mut self.head);
                self.pass(&head, out);
            }
            if self.long {
                self.pass(piece, out);
                if ended {
                    self.pass(b"\n", out);
                    self.long = false;
                }
                continue;
            }
            self.head.extend_from_slice(piece);
            if ended {
                let line = std::mem::take(&mut self.head);
                self.line_done(&line, out);
            }
        }
    }

    fn pass(&self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.inside {
            out.extend_from_slice(bytes);
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let frame = serde_json::from_slice::<Frame>(line).ok();
        if !self.inside {
            self.inside = matches!(frame, Some(Frame::Run { id }) if id == self.uid);
            return;
        }
        match frame {
            Some(Frame::Run { .. } | Frame::Sync { .. }) => self.done = true,
            frame => {
                out.extend_from_slice(line);
                out.push(b'\n');
                self.done = matches!(frame, Some(Frame::End));
            }
        }
    }
}

/// The run's record out of a container's log, as a reader that ends where the record does.
pub fn only_run<R>(log: R, uid: &str) -> impl AsyncRead + Unpin + Send + 'static
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let start = (log, RunSlice::new(uid), vec![0u8; READ_BYTES]);
    let chunks = stream::unfold(start, |(mut log, mut slice, mut buf)| async move {
        loop {
            if slice.is_done() {
                return None;
            }
            // A read error ends the log as its end does (what is missing is replayed).
            let n = match log.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            let mut out = Vec::new();
            slice.push(&buf[..n], &mut out);
            if !out.is_empty() {
                return Some((Ok::<_, std::io::Error>(out), (log, slice, buf)));
            }
        }
    });
    chunks.boxed().into_async_read()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use runner_protocol::{ExitReport, PROTOCOL_VERSION, encode_frame};

    fn out(text: &str) -> Frame {
        Frame::Stdout {
            d: base64::engine::general_purpose::STANDARD.encode(text),
        }
    }

    fn record(uid: &str, text: &str) -> Vec<Frame> {
        vec![
            Frame::Run { id: uid.into() },
            Frame::Start {
                v: PROTOCOL_VERSION,
            },
            out(text),
            Frame::Exit(ExitReport {
                exit_code: Some(0),
                ..Default::default()
            }),
            Frame::End,
        ]
    }

    fn log(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(encode_frame).collect()
    }

    fn frames_of(bytes: &[u8]) -> Vec<Frame> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// What the slice passes on when the log arrives `step` bytes at a time.
    fn sliced(uid: &str, log: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut slice = RunSlice::new(uid);
        let mut passed = Vec::new();
        for piece in log.chunks(step) {
            slice.push(piece, &mut passed);
        }
        (passed, slice.is_done())
    }

    fn a_container_log() -> Vec<u8> {
        let mut frames = vec![Frame::Ack {
            id: "fileop-1".into(),
            error: None,
        }];
        frames.extend(record("uid-a", "from a"));
        frames.extend(record("uid-b", "from b"));
        frames.push(Frame::Ack {
            id: "fileop-2".into(),
            error: None,
        });
        frames.extend(record("uid-c", "from c"));
        log(&frames)
    }

    #[test]
    fn only_the_runs_own_record_is_passed_on_however_the_log_arrives() {
        let whole = a_container_log();
        let want: Vec<Frame> = record("uid-b", "from b")[1..].to_vec();
        for step in [1, 7, 100, whole.len()] {
            let (passed, done) = sliced("uid-b", &whole, step);
            assert_eq!(frames_of(&passed), want, "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn a_run_not_in_the_log_yet_gets_nothing_and_is_not_done() {
        let (passed, done) = sliced("uid-z", &a_container_log(), 13);
        assert!(passed.is_empty());
        assert!(!done);
    }

    #[test]
    fn a_record_sent_again_after_a_sync_is_not_followed_twice() {
        let mut frames = record("uid-a", "first time")[..3].to_vec();
        frames.push(Frame::Sync {
            nonce: "n".into(),
            busy: Some("uid-a".into()),
        });
        frames.extend(record("uid-a", "first time"));
        let (passed, done) = sliced("uid-a", &log(&frames), 5);
        assert_eq!(frames_of(&passed), record("uid-a", "first time")[1..3]);
        assert!(done);
    }

    #[test]
    fn long_lines_pass_whole_inside_and_are_dropped_outside() {
        let big = "x".repeat(3 * SHORT_LINE);
        let mut frames = record("uid-a", &big);
        frames.extend(record("uid-b", &big));
        let (passed, _) = sliced("uid-b", &log(&frames), 97);
        assert_eq!(frames_of(&passed), record("uid-b", &big)[1..]);
    }

    #[tokio::test]
    async fn the_reader_ends_where_the_record_does() {
        let mut reader = only_run(futures::io::Cursor::new(a_container_log()), "uid-a");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(frames_of(&got), record("uid-a", "from a")[1..]);
    }
}
