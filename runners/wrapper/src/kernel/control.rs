//! The control channel between the wrapper and a kernel, as `runners/kernels/README.md` sets it
//! out: two FIFOs in a folder of the job folder, named to the kernel by `CI_RUNNER_KERNEL_CONTROL`,
//! one message a line, any text in hex. What the kernel says is untrusted (in a session the
//! snippets run in it): a line that is not a message is an error, never a guess.
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use nix::unistd::{mkfifo, read};

/// The variable that names the channel's folder to the kernel.
pub const CONTROL_ENV: &str = "CI_RUNNER_KERNEL_CONTROL";
/// The channel's folder, in the job folder (removed once the kernel is ready).
const CONTROL_DIR: &str = ".ci-runner-kernel";
/// A line from the kernel longer than this is not a message.
const MAX_LINE: usize = 64 * 1024;

/// What the wrapper tells a kernel.
#[derive(Clone, Copy, Debug)]
pub enum ToKernel<'a> {
    /// Always first: what to import before saying `ready`.
    Preload(&'a [String]),
    /// One-shot: become the job's program, with these arguments; `stdin`: fd 0 holds the job's.
    Run { stdin: bool, args: &'a [String] },
    /// Session: run this file in the persistent namespace.
    Snippet(&'a Path),
}

/// What a kernel tells the wrapper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromKernel {
    Ready { interruptible: bool },
    Note(String),
    Done { status: i32, how: How },
}

/// How a snippet ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// It ran to its end.
    Ok,
    /// It asked to exit (`sys.exit`, `process.exit`, `exit`); the kernel lives on.
    Exit,
    /// An uncaught exception, printed as a script's would be.
    Error,
    /// SIGINT ended it; the state from before it is kept.
    Interrupted,
}

impl ToKernel<'_> {
    pub fn line(&self) -> Vec<u8> {
        let hex = |s: &[u8]| hex::encode(s);
        let mut words: Vec<String> = match self {
            ToKernel::Preload(names) => std::iter::once("preload".to_string())
                .chain(names.iter().map(|n| hex(n.as_bytes())))
                .collect(),
            ToKernel::Run { stdin, args } => ["run", if *stdin { "file" } else { "null" }]
                .map(String::from)
                .into_iter()
                .chain(args.iter().map(|a| hex(a.as_bytes())))
                .collect(),
            ToKernel::Snippet(path) => {
                vec!["snippet".into(), hex(path.as_os_str().as_encoded_bytes())]
            }
        };
        words.last_mut().expect("a verb").push('\n');
        words.join(" ").into_bytes()
    }
}

/// Reads one line the kernel wrote (without its newline).
pub fn parse(line: &[u8]) -> Result<FromKernel, String> {
    let text = std::str::from_utf8(line).map_err(|_| "a line that is not text".to_string())?;
    let words: Vec<&str> = text.split(' ').collect();
    let bad = || format!("not a kernel message: {:?}", truncated(text));
    match words[..] {
        ["ready", ref flags @ ..] => Ok(FromKernel::Ready {
            interruptible: flags.contains(&"interruptible"),
        }),
        ["note", word] => {
            let bytes = hex::decode(word).map_err(|_| bad())?;
            Ok(FromKernel::Note(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        }
        ["done", status, how] => Ok(FromKernel::Done {
            status: status.parse().map_err(|_| bad())?,
            how: match how {
                "ok" => How::Ok,
                "exit" => How::Exit,
                "error" => How::Error,
                "interrupted" => How::Interrupted,
                _ => return Err(bad()),
            },
        }),
        _ => Err(bad()),
    }
}

fn truncated(text: &str) -> &str {
    let end = (0..=text.len().min(80))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..end]
}

/// The wrapper's ends of the two FIFOs.
pub struct Channel {
    /// The folder, until the kernel has opened both FIFOs.
    dir: Option<PathBuf>,
    to_kernel: File,
    from_kernel: OwnedFd,
    pending: Vec<u8>,
}

impl Channel {
    /// Makes the folder and its FIFOs in `job_dir` and opens the wrapper's ends. Each is opened
    /// read-write, so neither open waits for the kernel and neither end ever reads an end of
    /// file: the kernel's death is seen on its process, not here.
    pub fn create(job_dir: &Path) -> io::Result<Channel> {
        let dir = job_dir.join(CONTROL_DIR);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        fs::create_dir(&dir)?;
        let owner_only = Mode::from_bits_truncate(0o600);
        mkfifo(&dir.join("in"), owner_only)?;
        mkfifo(&dir.join("out"), owner_only)?;
        let to_kernel = open(
            &dir.join("in"),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let from_kernel = open(
            &dir.join("out"),
            OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        Ok(Channel {
            dir: Some(dir),
            to_kernel: File::from(to_kernel),
            from_kernel,
            pending: Vec::new(),
        })
    }

    /// The folder the kernel is told of.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Removes the folder: once the kernel has opened both FIFOs, nothing needs their names, and
    /// a program must find the job folder as a fresh one does.
    pub fn remove_dir(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }

    pub fn send(&mut self, message: &ToKernel) -> io::Result<()> {
        self.to_kernel.write_all(&message.line())
    }

    /// For poll: readable when the kernel has written.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.from_kernel.as_fd()
    }

    /// Every whole message the kernel has written so far; never blocks.
    pub fn receive(&mut self) -> Result<Vec<FromKernel>, String> {
        let mut buf = [0u8; 4096];
        loop {
            match read(&self.from_kernel, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => {}
                Err(err) => return Err(format!("reading the kernel's channel: {err}")),
            }
        }
        let mut messages = Vec::new();
        while let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=at).collect();
            messages.push(parse(&line[..at])?);
        }
        if self.pending.len() > MAX_LINE {
            return Err("the kernel wrote a line too long to be a message".into());
        }
        Ok(messages)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.remove_dir();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_to_a_kernel_are_one_line_with_every_text_in_hex() {
        let names = ["numpy".to_string(), "a b\n".to_string()];
        assert_eq!(
            ToKernel::Preload(&names).line(),
            b"preload 6e756d7079 6120620a\n"
        );
        assert_eq!(ToKernel::Preload(&[]).line(), b"preload\n");
        let args = ["-x".to_string(), String::new()];
        assert_eq!(
            ToKernel::Run {
                stdin: false,
                args: &args
            }
            .line(),
            b"run null 2d78 \n"
        );
        assert_eq!(
            ToKernel::Snippet(Path::new("/w/s.py")).line(),
            b"snippet 2f772f732e7079\n"
        );
    }

    #[test]
    fn what_a_kernel_says_is_read_strictly() {
        assert_eq!(
            parse(b"ready interruptible"),
            Ok(FromKernel::Ready {
                interruptible: true
            })
        );
        assert_eq!(
            parse(b"ready"),
            Ok(FromKernel::Ready {
                interruptible: false
            })
        );
        assert_eq!(
            parse(b"done 130 interrupted"),
            Ok(FromKernel::Done {
                status: 130,
                how: How::Interrupted
            })
        );
        assert_eq!(parse(b"note 6f6b"), Ok(FromKernel::Note("ok".into())));
        for bad in [
            &b"done 1"[..],
            b"done x ok",
            b"done 0 maybe",
            b"note zz",
            b"hello",
            b"",
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_channel_reads_whole_lines_and_its_folder_goes_away() {
        let job = tempfile::tempdir().unwrap();
        let mut channel = Channel::create(job.path()).unwrap();
        let dir = channel.dir().unwrap().to_path_buf();
        let mut out = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("out"))
            .unwrap();
        out.write_all(b"note 6f6b\nready int").unwrap();
        assert_eq!(channel.receive().unwrap(), [FromKernel::Note("ok".into())]);
        out.write_all(b"erruptible\n").unwrap();
        assert_eq!(
            channel.receive().unwrap(),
            [FromKernel::Ready {
                interruptible: true
            }]
        );
        channel.remove_dir();
        assert!(!dir.exists());
        out.write_all(b"nonsense\n").unwrap();
        assert!(channel.receive().is_err());
    }
}
