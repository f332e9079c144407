//! Reading the container's stdin: one JSON line per operation or piece of data, as
//! [`runner_protocol::Op`] and [`runner_protocol::Data`] define them. Whatever a line holds,
//! reading it never fails the server: a line that is not one of those is [`Incoming::Bad`].
use std::io::{self, BufRead};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use runner_protocol::{DATA_LINE_BYTES, Data, MAX_JOB_HEADER_BYTES, Op};

/// The longest line read: a `run` holds a job header, a data line 64 KiB of base64.
pub(crate) const MAX_LINE_BYTES: usize = 2 * MAX_JOB_HEADER_BYTES + 1024;

/// One line of stdin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Op(Op),
    /// A piece of the current operation's payload.
    Data(Vec<u8>),
    /// An empty line (a new session begins with one).
    Blank,
    /// Not an operation; `id` and `op` when it names them.
    Bad {
        id: Option<String>,
        op: Option<String>,
        why: String,
    },
}

/// Reads lines of at most `max` bytes; a longer one is read to its end and reported by length.
pub(crate) struct Lines<R> {
    reader: R,
    max: usize,
}

/// A line without its newline, or how long one was that is too long to keep.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    Text(Vec<u8>),
    TooLong(usize),
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(reader: R, max: usize) -> Self {
        Lines { reader, max }
    }

    /// The next line, blocking until it is whole; `None` at the end of the input. A last line
    /// without a newline counts as a line.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut length = 0usize;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if buf.is_empty() {
                return Ok((length > 0).then(|| self.finished(line, length)));
            }
            let (piece, ended) = match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (&buf[..at], true),
                None => (buf, false),
            };
            length += piece.len();
            if length <= self.max {
                line.extend_from_slice(piece);
            }
            let used = piece.len() + usize::from(ended);
            self.reader.consume(used);
            if ended {
                return Ok(Some(self.finished(line, length)));
            }
        }
    }

    fn finished(&self, line: Vec<u8>, length: usize) -> Line {
        if length > self.max {
            Line::TooLong(length)
        } else {
            Line::Text(line)
        }
    }
}

/// What a line says.
pub(crate) fn parse(line: &[u8]) -> Incoming {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Incoming::Blank;
    }
    // Data lines are the many: tried first when they look like one.
    if line.starts_with(b"{\"d\"")
        && let Ok(data) = serde_json::from_slice::<Data>(line)
    {
        return data_line(&data);
    }
    match serde_json::from_slice::<Op>(line) {
        Ok(op) => Incoming::Op(op),
        Err(err) => match serde_json::from_slice::<Data>(line) {
            Ok(data) => data_line(&data),
            Err(_) => {
                let (id, op) = named(line);
                Incoming::Bad {
                    id,
                    op,
                    why: format!("not an operation: {err}"),
                }
            }
        },
    }
}

fn data_line(data: &Data) -> Incoming {
    match B64.decode(&data.d) {
        Ok(bytes) if bytes.len() <= DATA_LINE_BYTES => Incoming::Data(bytes),
        Ok(bytes) => Incoming::Bad {
            id: None,
            op: None,
            why: format!(
                "a data line of {} bytes, more than {DATA_LINE_BYTES}",
                bytes.len()
            ),
        },
        Err(err) => Incoming::Bad {
            id: None,
            op: None,
            why: format!("a data line that is not base64: {err}"),
        },
    }
}

/// The `id` and `op` of a line that is a JSON object with them as strings, however wrong the
/// rest.
fn named(line: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
        return (None, None);
    };
    let text = |key: &str| Some(value.get(key)?.as_str()?.to_string());
    (text("id"), text("op"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = Lines::new(io::BufReader::with_capacity(4, input), max);
        std::iter::from_fn(|| reader.next_line().unwrap()).collect()
    }

    #[test]
    fn lines_are_read_whole_and_an_overlong_one_only_counted() {
        assert_eq!(
            lines(b"ab\n\nabcdefgh\nxyz", 5),
            [
                Line::Text(b"ab".to_vec()),
                Line::Text(Vec::new()),
                Line::TooLong(8),
                Line::Text(b"xyz".to_vec()),
            ]
        );
        assert!(lines(b"", 5).is_empty());
    }

    #[test]
    fn operations_data_and_blank_lines_are_told_apart() {
        let op = Op::Delete {
            id: "d1".into(),
            path: "a.txt".into(),
        };
        let line = op.line();
        assert_eq!(parse(&line[..line.len() - 1]), Incoming::Op(op));
        let data: Vec<Vec<u8>> = runner_protocol::data_lines(b"hello").collect();
        assert_eq!(
            parse(&data[0][..data[0].len() - 1]),
            Incoming::Data(b"hello".to_vec())
        );
        assert_eq!(parse(b""), Incoming::Blank);
        assert_eq!(parse(b"  "), Incoming::Blank);
    }

    #[test]
    fn a_wrong_line_is_bad_and_keeps_its_id_when_it_has_one() {
        let Incoming::Bad { id, op, why } = parse(br#"{"op":"explode","id":"x1"}"#) else {
            panic!("accepted");
        };
        assert_eq!(id.as_deref(), Some("x1"));
        assert_eq!(op.as_deref(), Some("explode"));
        assert!(why.contains("explode"), "{why}");
        let Incoming::Bad { id, .. } = parse(br#"{"op":"put","id":"p1","path":"a"}"#) else {
            panic!("accepted");
        };
        assert_eq!(id.as_deref(), Some("p1"));
        assert!(matches!(parse(b"garbage"), Incoming::Bad { id: None, .. }));
        assert!(matches!(
            parse(br#"{"d":"!!"}"#),
            Incoming::Bad { id: None, .. }
        ));
    }
}
