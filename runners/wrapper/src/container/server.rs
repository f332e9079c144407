//! The server's thread: it reads the operations from stdin, one line at a time, for as long as
//! stdin is open. Puts, deletes and the staging of a run's payload happen here; the run itself
//! on the runs' thread, which writes its record meanwhile, while this thread still answers a
//! `sync` (the record of the run in progress sent again) and an `interrupt`. Nothing a line
//! holds stops the server: a wrong line is answered (`ack` with an error when it names an
//! operation; a run is always answered with a record, whose exit says why it did not run) or
//! said on stderr, and the next line is read. An operation that comes while a run is in
//! progress (only `sync` and `interrupt` may) gets an `ack` with an error, never a record,
//! which would cut into the record of the run in progress.
use std::collections::VecDeque;
use std::io::{BufRead, PipeWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use runner_protocol::{ExitReport, Frame, Job, Op};

use super::files::Part;
use super::input::{Incoming, Line, Lines, MAX_LINE_BYTES, parse};
use super::transcript::Transcript;
use super::worker::Staged;

/// Wakes the runs' thread (a run was handed over, a child exited, the server is done).
#[derive(Clone)]
pub(crate) struct Waker(pub(crate) Arc<PipeWriter>);

impl Waker {
    pub(crate) fn wake(&self) {
        // A full pipe has a wake-up in it already.
        let _ = (&*self.0).write(&[1]);
    }
}

pub(crate) struct Server {
    data_dir: PathBuf,
    transcript: Arc<Transcript>,
    runs: Sender<Staged>,
    waker: Waker,
    /// The operation whose data lines are arriving.
    receiving: Option<Receiving>,
    /// Data lines with no operation to take them are being dropped (said once per series).
    dropping: bool,
    /// The ids of the last runs handed over, newest last: one asked for again is refused,
    /// not run twice (an operator that took over may not know that its predecessor's run
    /// ended).
    ran: VecDeque<String>,
}

/// How many run ids a container remembers.
const RAN_KEPT: usize = 256;

enum Receiving {
    Put(Upload),
    Run(Staging),
}

struct Upload {
    id: String,
    part: Part,
    left: u64,
}

/// A run's payload (source, stdin, input files, in that order) as it arrives.
struct Staging {
    id: String,
    job: Job,
    source: Vec<u8>,
    stdin: Vec<u8>,
    inputs: Vec<Part>,
    received: u64,
}

/// Where the next payload bytes of a run go.
enum Piece {
    Source,
    Stdin,
    Input(usize),
}

impl Server {
    pub(crate) fn new(
        data_dir: PathBuf,
        transcript: Arc<Transcript>,
        runs: Sender<Staged>,
        waker: Waker,
    ) -> Self {
        Server {
            data_dir,
            transcript,
            runs,
            waker,
            receiving: None,
            dropping: false,
            ran: VecDeque::new(),
        }
    }

    /// Serves until `input` ends (the pod is being torn down): then the run in progress, if
    /// any, is interrupted, and the runs' thread told to finish.
    pub(crate) fn serve(mut self, input: impl BufRead) {
        let mut lines = Lines::new(input, MAX_LINE_BYTES);
        loop {
            let incoming = match lines.next_line() {
                Ok(Some(Line::Text(line))) => parse(&line),
                Ok(Some(Line::TooLong(length))) => Incoming::Bad {
                    id: None,
                    op: None,
                    why: format!("a line of {length} bytes, longer than any operation"),
                },
                Ok(None) => break,
                Err(err) => {
                    eprintln!("ci-runner: cannot read stdin: {err}");
                    break;
                }
            };
            self.line(incoming);
        }
        if let Some(partial) = self.receiving.take() {
            partial.abandon();
        }
        if let Some(busy) = self.transcript.busy() {
            self.transcript.interrupt(&busy);
        }
        drop(self.runs);
        self.waker.wake();
    }

    fn line(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Blank => {}
            Incoming::Data(bytes) => self.data(&bytes),
            Incoming::Op(Op::Sync { nonce }) => {
                // A new reader: whatever the old one was sending is abandoned, unanswered.
                if let Some(partial) = self.receiving.take() {
                    partial.abandon();
                }
                self.dropping = false;
                self.transcript.sync(nonce);
            }
            Incoming::Op(op) => {
                self.cut_short("another operation");
                self.dropping = false;
                self.op(op);
            }
            Incoming::Bad { id, op, why } => {
                self.cut_short("a line that is not data");
                match (id, op.as_deref()) {
                    (Some(id), Some("run")) if self.transcript.busy().is_none() => {
                        self.refuse_run(&id, why, false);
                    }
                    (Some(id), _) => self.ack(id, Some(why)),
                    (None, _) => eprintln!("ci-runner: {why}; ignored"),
                }
            }
        }
    }

    fn op(&mut self, op: Op) {
        let busy = self.transcript.busy();
        match op {
            Op::Sync { nonce } => self.transcript.sync(nonce),
            Op::Interrupt { id } => {
                if !self.transcript.interrupt(&id) {
                    self.ack(id.clone(), Some(format!("no run {id:?} is in progress")));
                }
            }
            Op::Put { id, .. } | Op::Delete { id, .. } | Op::Run { id, .. } if busy.is_some() => {
                let busy = busy.unwrap_or_default();
                let why = format!("run {busy:?} is in progress: one operation at a time");
                self.ack(id, Some(why));
            }
            Op::Put { id, path, bytes } => match Part::create(&self.data_dir, &path) {
                Ok(part) => self.receive(Receiving::Put(Upload {
                    id,
                    part,
                    left: bytes,
                })),
                Err(why) => self.ack(id, Some(why)),
            },
            Op::Delete { id, path } => {
                let deleted = super::files::delete(&self.data_dir, &path);
                self.ack(id, deleted.err());
            }
            Op::Run { id, .. } if self.ran.contains(&id) => {
                let why = format!("run {id:?} was handed over before: it is not run again");
                // In the pod's log too, where a reader of it looks for why a run was refused.
                eprintln!("ci-runner: {why}");
                self.transcript.refuse(
                    &id,
                    ExitReport {
                        error: Some(why),
                        already_ran: true,
                        ..ExitReport::default()
                    },
                );
            }
            Op::Run { id, job } => match Staging::new(&self.data_dir, id.clone(), job) {
                Ok(staging) => self.receive(Receiving::Run(staging)),
                Err(why) => self.refuse_run(&id, why, false),
            },
        }
    }

    /// Waits for the operation's data, or completes it at once when it has none.
    fn receive(&mut self, receiving: Receiving) {
        if receiving.left() == 0 {
            self.complete(receiving);
        } else {
            self.receiving = Some(receiving);
        }
    }

    fn data(&mut self, bytes: &[u8]) {
        let Some(receiving) = self.receiving.as_mut() else {
            if !self.dropping {
                eprintln!("ci-runner: data with no operation to take it: dropped");
                self.dropping = true;
            }
            return;
        };
        let taken = receiving.take(bytes);
        match (taken, self.receiving.take()) {
            (Ok(()), Some(receiving)) if receiving.left() == 0 => self.complete(receiving),
            (Ok(()), receiving) => self.receiving = receiving,
            (Err(why), Some(receiving)) => self.fail(receiving, why, false),
            (Err(_), None) => {}
        }
    }

    /// The operation being received ends before its data: it is dropped and answered.
    fn cut_short(&mut self, by: &str) {
        if let Some(partial) = self.receiving.take() {
            let why = format!("cut short by {by} before all its data arrived; nothing was done");
            self.fail(partial, why, true);
        }
    }

    /// Drops an operation that cannot be carried out, and says why: an `ack` for a put, a
    /// record for a run (`cut_short`: its job never arrived whole).
    fn fail(&mut self, receiving: Receiving, why: String, cut_short: bool) {
        let id = receiving.id().to_string();
        let is_run = matches!(receiving, Receiving::Run(_));
        receiving.abandon();
        if is_run {
            self.refuse_run(&id, why, cut_short);
        } else {
            self.ack(id, Some(why));
        }
    }

    /// A run that does not run is answered as every run is, with a record: its exit says why
    /// (the operator reads a run's answer from its `run` frame to its `end`).
    fn refuse_run(&self, id: &str, why: String, cut_short: bool) {
        eprintln!("ci-runner: run {id:?} refused: {why}");
        self.transcript.refuse(
            id,
            ExitReport {
                error: Some(why),
                no_job: cut_short,
                ..ExitReport::default()
            },
        );
    }

    fn complete(&mut self, receiving: Receiving) {
        match receiving {
            Receiving::Put(upload) => {
                let written = upload.part.commit();
                self.ack(upload.id, written.err());
            }
            Receiving::Run(staging) => {
                let id = staging.id.clone();
                match staging.into_staged() {
                    Ok(staged) => {
                        if self.ran.len() == RAN_KEPT {
                            self.ran.pop_front();
                        }
                        self.ran.push_back(id.clone());
                        self.transcript.begin(&id);
                        if self.runs.send(staged).is_err() {
                            eprintln!("ci-runner: the runs' thread is gone");
                        }
                        self.waker.wake();
                    }
                    Err(why) => self.refuse_run(&id, why, false),
                }
            }
        }
    }

    fn ack(&self, id: String, error: Option<String>) {
        self.transcript.answer(&Frame::Ack { id, error });
    }
}

impl Receiving {
    fn id(&self) -> &str {
        match self {
            Receiving::Put(upload) => &upload.id,
            Receiving::Run(staging) => &staging.id,
        }
    }

    fn left(&self) -> u64 {
        match self {
            Receiving::Put(upload) => upload.left,
            Receiving::Run(staging) => staging.job.payload_bytes() - staging.received,
        }
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), String> {
        let left = self.left();
        if bytes.len() as u64 > left {
            return Err(format!(
                "more data than announced ({} bytes with {left} left); nothing was done",
                bytes.len()
            ));
        }
        match self {
            Receiving::Put(upload) => {
                upload.part.write(bytes)?;
                upload.left -= bytes.len() as u64;
                Ok(())
            }
            Receiving::Run(staging) => staging.take(bytes),
        }
    }

    fn abandon(self) {
        match self {
            Receiving::Put(upload) => upload.part.abandon(),
            Receiving::Run(staging) => staging.inputs.into_iter().for_each(Part::abandon),
        }
    }
}

impl Staging {
    /// Checks the job as the one-shot path does, and opens its input files under the data
    /// folder (refusing names that would leave it).
    fn new(data_dir: &std::path::Path, id: String, job: Job) -> Result<Staging, String> {
        job.check().map_err(|err| err.to_string())?;
        let mut inputs = Vec::with_capacity(job.files.len());
        for file in &job.files {
            match Part::create(data_dir, &file.name) {
                Ok(part) => inputs.push(part),
                Err(why) => {
                    inputs.into_iter().for_each(Part::abandon);
                    return Err(why);
                }
            }
        }
        Ok(Staging {
            id,
            source: Vec::with_capacity(job.code_bytes.min(64 * 1024) as usize),
            stdin: Vec::new(),
            job,
            inputs,
            received: 0,
        })
    }

    fn take(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let (piece, room) = self.next_piece();
            if room == 0 {
                return Err("more data than its job announces".into());
            }
            let n = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
            let (now, rest) = bytes.split_at(n);
            match piece {
                Piece::Source => self.source.extend_from_slice(now),
                Piece::Stdin => self.stdin.extend_from_slice(now),
                Piece::Input(i) => self.inputs[i].write(now)?,
            }
            self.received += n as u64;
            bytes = rest;
        }
        Ok(())
    }

    /// Where the next byte goes, and how many more that piece takes (some, since the payload
    /// is not complete).
    fn next_piece(&self) -> (Piece, u64) {
        let sizes = [
            (Piece::Source, self.job.code_bytes),
            (Piece::Stdin, self.job.stdin_bytes.unwrap_or(0)),
        ]
        .into_iter()
        .chain(
            self.job
                .files
                .iter()
                .enumerate()
                .map(|(i, f)| (Piece::Input(i), f.bytes)),
        );
        let mut at = self.received;
        for (piece, size) in sizes {
            if at < size {
                return (piece, size - at);
            }
            at -= size;
        }
        (Piece::Source, 0)
    }

    /// The whole payload is in: the input files go in place.
    fn into_staged(self) -> Result<Staged, String> {
        let mut inputs = self.inputs.into_iter();
        while let Some(part) = inputs.next() {
            if let Err(why) = part.commit() {
                inputs.for_each(Part::abandon);
                return Err(why);
            }
        }
        Ok(Staged {
            job: self.job,
            source: self.source,
            stdin: self.stdin,
        })
    }
}
