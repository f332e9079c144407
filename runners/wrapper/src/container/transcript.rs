//! The container's stdout. Two threads write to it: the server answers operations (`sync`,
//! `ack`) while the run's thread writes the record of the run in progress. Every frame goes out
//! as one whole line under one lock, so the two never interleave inside a line, and the record
//! keeps what a reader who syncs in the middle of a run needs to get it whole:
//!
//! - its head (`run`, `start`, the output, `exit`), kept in memory: the output is capped by the
//!   run's `max_output_bytes` per stream and gathered into frames at most every 20 ms, so the
//!   head is at most about 4/3 of twice that cap plus a frame's framing per 20 ms of the run;
//! - its files, never kept: every `sync` starts a new round, and a file frame of an older round
//!   is refused ([`Restart`]), so the run's thread sends the files again from the first, read
//!   from disk again.
use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use runner_protocol::{ExitReport, Frame, PROTOCOL_VERSION, encode_frame};

use crate::kernel::Interrupter;

/// The one writer of the container's stdout.
pub(crate) struct Transcript {
    inner: Mutex<Inner>,
}

struct Inner {
    out: Box<dyn Write + Send>,
    run: Option<Current>,
    /// Counts the syncs: a run's files are sent in the round they began in.
    round: u64,
    /// A write to stdout failed (said once on stderr).
    broken: bool,
}

/// The run in progress.
struct Current {
    id: String,
    /// Its record up to the exit frame, sent again to a reader that syncs.
    head: Vec<u8>,
    /// Past its exit frame: its files are being sent.
    in_files: bool,
    /// Interrupts its program, once it runs.
    interrupter: Option<Interrupter>,
    /// An interrupt came before its program ran.
    cancelled: bool,
}

/// A reader synced while a run's files were being sent: they must be sent again from the
/// first (the record's head has been sent again already).
#[derive(Debug)]
pub(crate) struct Restart;

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reader synced: the files are sent again from the first")
    }
}

impl std::error::Error for Restart {}

/// Whether `err` is a [`Restart`].
pub(crate) fn is_restart(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Restart>())
}

impl Transcript {
    pub(crate) fn new(out: impl Write + Send + 'static) -> Arc<Self> {
        Arc::new(Transcript {
            inner: Mutex::new(Inner {
                out: Box::new(out),
                run: None,
                round: 0,
                broken: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A thread that panicked holding the lock left whole lines behind: go on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a frame that belongs to no record (an `ack`).
    pub(crate) fn answer(&self, frame: &Frame) {
        self.lock().write(&encode_frame(frame));
    }

    /// A new reader: says which run is in progress, if one is, and sends its record again
    /// from its beginning; its files, if they were being sent, start again from the first.
    pub(crate) fn sync(&self, nonce: String) {
        let mut inner = self.lock();
        inner.round += 1;
        let busy = inner.run.as_ref().map(|run| run.id.clone());
        inner.write(&encode_frame(&Frame::Sync { nonce, busy }));
        if let Some(head) = inner.run.as_ref().map(|run| run.head.clone()) {
            inner.write(&head);
        }
    }

    /// The run in progress, if any.
    pub(crate) fn busy(&self) -> Option<String> {
        self.lock().run.as_ref().map(|run| run.id.clone())
    }

    /// Run `id` begins: its `run` frame goes out, and it is in progress until [`Transcript::end`].
    pub(crate) fn begin(&self, id: &str) {
        let line = encode_frame(&Frame::Run { id: id.to_string() });
        let mut inner = self.lock();
        inner.write(&line);
        inner.run = Some(Current {
            id: id.to_string(),
            head: line,
            in_files: false,
            interrupter: None,
            cancelled: false,
        });
    }

    /// The whole record of run `id`, which does not run: `run`, `start`, an exit that says
    /// why, `end` (the operator reads every run's answer as a record).
    pub(crate) fn refuse(&self, id: &str, exit: ExitReport) {
        let frames = [
            Frame::Run { id: id.to_string() },
            Frame::Start {
                v: PROTOCOL_VERSION,
            },
            Frame::Exit(exit),
            Frame::End,
        ];
        let lines: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
        self.lock().write(&lines);
    }

    /// The run's files are next; the round they are sent in.
    pub(crate) fn begin_files(&self) -> u64 {
        let mut inner = self.lock();
        if let Some(run) = inner.run.as_mut() {
            run.in_files = true;
        }
        inner.round
    }

    /// Ends the run in progress with its `end` frame, unless a reader synced since `round`
    /// began (then its files must be sent again).
    pub(crate) fn end(&self, round: u64) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.round != round {
            return Err(io::Error::other(Restart));
        }
        inner.write(&encode_frame(&Frame::End));
        inner.run = None;
        Ok(())
    }

    /// Lets `interrupter` interrupt the run's program; `false` when an interrupt came first
    /// (the program must not run).
    pub(crate) fn arm(&self, interrupter: Interrupter) -> bool {
        let mut inner = self.lock();
        match inner.run.as_mut() {
            Some(run) if !run.cancelled => {
                run.interrupter = Some(interrupter);
                true
            }
            _ => false,
        }
    }

    /// The program is over: no interrupt reaches its interpreter any more, and `forget`
    /// (which clears one made too late) runs before another can be made.
    pub(crate) fn disarm(&self, forget: impl FnOnce()) {
        let mut inner = self.lock();
        if let Some(run) = inner.run.as_mut() {
            run.interrupter = None;
        }
        forget();
    }

    /// Interrupts run `id` if it is the one in progress (before its program runs, it will not
    /// run; past its exit, nothing is left to interrupt); `false` when it is not.
    pub(crate) fn interrupt(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let Some(run) = inner.run.as_mut().filter(|run| run.id == id) else {
            return false;
        };
        match &run.interrupter {
            Some(interrupter) => interrupter.interrupt(),
            None if !run.in_files => run.cancelled = true,
            None => {}
        }
        true
    }

    /// A writer for the run's record: the head, or the files of `round`.
    pub(crate) fn writer(self: &Arc<Self>, round: Option<u64>) -> RecordWriter {
        RecordWriter {
            transcript: self.clone(),
            round,
            pending: Vec::new(),
        }
    }

    fn record_line(&self, line: &[u8], round: Option<u64>) -> io::Result<()> {
        let mut inner = self.lock();
        match round {
            Some(round) if round != inner.round => return Err(io::Error::other(Restart)),
            Some(_) => {}
            None => {
                if let Some(run) = inner.run.as_mut().filter(|run| !run.in_files) {
                    run.head.extend_from_slice(line);
                }
            }
        }
        inner.write(line);
        Ok(())
    }
}

impl Inner {
    fn write(&mut self, line: &[u8]) {
        let written = self.out.write_all(line).and_then(|()| self.out.flush());
        if let Err(err) = written
            && !self.broken
        {
            self.broken = true;
            eprintln!("ci-runner: cannot write to stdout: {err}");
        }
    }
}

/// Writes a run's frames to the [`Transcript`], a whole line at a time.
pub(crate) struct RecordWriter {
    transcript: Arc<Transcript>,
    round: Option<u64>,
    pending: Vec<u8>,
}

impl Write for RecordWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        while let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=at).collect();
            self.transcript.record_line(&line, self.round)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdout the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn take(&self) -> Vec<Frame> {
            let bytes = std::mem::take(&mut *self.0.lock().unwrap());
            bytes
                .split(|b| *b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice(line).unwrap())
                .collect()
        }
    }

    fn start() -> Frame {
        Frame::Start {
            v: PROTOCOL_VERSION,
        }
    }

    fn file(name: &str) -> Frame {
        Frame::File {
            name: name.into(),
            size: 0,
            sha256: String::new(),
        }
    }

    #[test]
    fn a_sync_sends_the_head_of_the_run_in_progress_again_and_restarts_its_files() {
        let out = Shared::default();
        let transcript = Transcript::new(out.clone());
        transcript.begin("r1");
        let mut head = transcript.writer(None);
        head.write_all(&encode_frame(&start())).unwrap();
        // Half a line is not out yet, so a sync cannot cut into it.
        let exit = encode_frame(&Frame::Exit(Default::default()));
        head.write_all(&exit[..5]).unwrap();
        transcript.sync("n1".into());
        head.write_all(&exit[5..]).unwrap();
        let round = transcript.begin_files();
        let mut files = transcript.writer(Some(round));
        files.write_all(&encode_frame(&file("a"))).unwrap();
        transcript.sync("n2".into());
        let refused = files.write_all(&encode_frame(&file("b"))).unwrap_err();
        assert!(is_restart(&refused));
        assert!(is_restart(&transcript.end(round).unwrap_err()));
        let round = transcript.begin_files();
        transcript
            .writer(Some(round))
            .write_all(&encode_frame(&file("a")))
            .unwrap();
        transcript.end(round).unwrap();
        let run = Frame::Run { id: "r1".into() };
        let exit = Frame::Exit(Default::default());
        let busy = |nonce: &str| Frame::Sync {
            nonce: nonce.into(),
            busy: Some("r1".into()),
        };
        assert_eq!(
            out.take(),
            [
                run.clone(),
                start(),
                busy("n1"),
                run.clone(),
                start(),
                exit.clone(),
                file("a"),
                busy("n2"),
                run,
                start(),
                exit,
                file("a"),
                Frame::End,
            ]
        );
        transcript.sync("n3".into());
        assert_eq!(
            out.take(),
            [Frame::Sync {
                nonce: "n3".into(),
                busy: None
            }]
        );
    }

    #[test]
    fn an_interrupt_before_the_program_runs_keeps_it_from_running() {
        let transcript = Transcript::new(Shared::default());
        assert!(!transcript.interrupt("r1"));
        transcript.begin("r1");
        assert!(!transcript.interrupt("r2"));
        assert!(transcript.interrupt("r1"));
        assert_eq!(transcript.busy().as_deref(), Some("r1"));
    }
}
