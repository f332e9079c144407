//! Following a runner's stream as it arrives: the attach stream the operator reads while the
//! program runs, or the container log it (and the REST API's live view) reads otherwise. One
//! follower for both readers, so both apply the same validating [`Decoder`] the same way:
//! events come out as soon as the bytes that complete them are in, the stream is read only as
//! fast as events are taken, and it ends at the end frame, at the stream's end, or at the
//! first byte the decoder refuses.
use std::collections::VecDeque;

use futures::io::{AsyncRead, AsyncReadExt};

use crate::{Decoder, Event, ParseError, Record};

/// Bytes read from the stream at a time.
const READ_BYTES: usize = 64 * 1024;

/// What following a stream came to.
#[derive(Debug)]
pub struct Followed {
    pub record: Result<Record, ParseError>,
    /// The end frame arrived: nothing of the record is missing.
    pub complete: bool,
}

pub struct Follower<R> {
    reader: R,
    decoder: Decoder,
    buf: Vec<u8>,
    pending: VecDeque<Event>,
    /// Nothing more will be read: the end frame came, the stream ended, or it was refused.
    stopped: bool,
    complete: bool,
    /// Why reading the stream failed, if it did.
    broken: Option<String>,
}

impl<R: AsyncRead + Unpin> Follower<R> {
    pub fn new(reader: R, decoder: Decoder) -> Self {
        Follower {
            reader,
            decoder,
            buf: vec![0; READ_BYTES],
            pending: VecDeque::new(),
            stopped: false,
            complete: false,
            broken: None,
        }
    }

    /// The next event, or `None` once the stream has ended. A read error ends the stream like
    /// its end does (the record says what is missing); a refused byte ends it too, and
    /// [`Follower::finish`] then returns the refusal.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.stopped {
                return None;
            }
            let n = match self.reader.read(&mut self.buf).await {
                Ok(0) => {
                    self.stopped = true;
                    continue;
                }
                Err(e) => {
                    self.broken = Some(e.to_string());
                    self.stopped = true;
                    continue;
                }
                Ok(n) => n,
            };
            match self.decoder.push(&self.buf[..n]) {
                Ok(events) => {
                    if events.contains(&Event::End) {
                        self.stopped = true;
                        self.complete = true;
                    }
                    self.pending.extend(events);
                }
                Err(_) => self.stopped = true,
            }
        }
    }

    /// Takes every event up to the end of the stream.
    pub async fn to_end(&mut self) {
        while self.next().await.is_some() {}
    }

    /// Whether the end frame has arrived.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The error reading the stream ended on, if it ended on one.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The record as far as it was read.
    pub fn record(&self) -> &Record {
        self.decoder.record()
    }

    pub fn finish(self) -> Followed {
        Followed {
            record: self.decoder.finish(),
            complete: self.complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExitReport, Frame, PROTOCOL_VERSION, Stream, encode_frame};
    use futures::executor::block_on;

    fn limits() -> crate::EffectiveLimits {
        crate::job::tests::limits()
    }

    fn record(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(encode_frame).collect()
    }

    fn out(stream: Stream, text: &str) -> Frame {
        use base64::Engine;
        let d = base64::engine::general_purpose::STANDARD.encode(text);
        match stream {
            Stream::Stdout => Frame::Stdout { d },
            Stream::Stderr => Frame::Stderr { d },
        }
    }

    /// A reader that hands out its bytes a few at a time, as a network stream does.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn events_arrive_in_order_and_the_end_frame_completes_the_record() {
        let bytes = record(&[
            Frame::Start {
                v: PROTOCOL_VERSION,
            },
            out(Stream::Stdout, "hello "),
            out(Stream::Stderr, "oops"),
            out(Stream::Stdout, "world"),
            Frame::Exit(ExitReport {
                exit_code: Some(0),
                ..Default::default()
            }),
            Frame::End,
        ]);
        let mut f = Follower::new(Trickle(bytes, 7), Decoder::new(&limits()));
        let mut events = Vec::new();
        block_on(async {
            while let Some(e) = f.next().await {
                events.push(e);
            }
        });
        assert_eq!(events.first(), Some(&Event::Started));
        assert_eq!(events.last(), Some(&Event::End));
        let done = f.finish();
        assert!(done.complete);
        let rec = done.record.unwrap();
        assert_eq!(rec.stdout, b"hello world");
        assert_eq!(rec.stderr, b"oops");
    }

    #[test]
    fn a_stream_cut_short_is_incomplete_and_keeps_what_arrived() {
        let bytes = record(&[
            Frame::Start {
                v: PROTOCOL_VERSION,
            },
            out(Stream::Stdout, "partial"),
        ]);
        let mut f = Follower::new(Trickle(bytes, 1000), Decoder::new(&limits()));
        block_on(f.to_end());
        let done = f.finish();
        assert!(!done.complete);
        assert_eq!(done.record.unwrap().stdout, b"partial");
    }

    #[test]
    fn a_refused_frame_stops_the_stream_and_is_the_result() {
        let mut bytes = record(&[Frame::Start {
            v: PROTOCOL_VERSION,
        }]);
        bytes.extend(record(&[Frame::Start {
            v: PROTOCOL_VERSION,
        }]));
        bytes.extend(record(&[out(Stream::Stdout, "never read")]));
        let mut f = Follower::new(Trickle(bytes, 1000), Decoder::new(&limits()));
        block_on(f.to_end());
        assert!(matches!(
            f.finish().record,
            Err(ParseError::Repeated("start"))
        ));
    }
}
