//! Collecting `/work/outputs`: regular files only, never through a link, within the job's caps
//! and a bounded walk. Every file left out is reported with the reason.
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use runner_protocol::{
    CHUNK_BYTES, EffectiveLimits, Frame, SkipReason, SkippedFile, validate_relative_name,
};
use sha2::{Digest, Sha256};

use crate::emit::Emitter;

/// Folders below `outputs` that are walked (a file's name has at most this many parts).
pub(crate) const MAX_DEPTH: usize = 8;
/// Directory entries looked at in all, whatever they are.
pub(crate) const MAX_ENTRIES: usize = 10_000;
/// Skipped frames written one by one; the rest are summed up in one.
const MAX_SKIPPED_FRAMES: usize = 100;

#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub max_files: u32,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl From<&EffectiveLimits> for Caps {
    fn from(limits: &EffectiveLimits) -> Self {
        Caps {
            max_files: limits.max_artifacts,
            max_file_bytes: limits.max_artifact_bytes,
            max_total_bytes: limits.max_artifact_total_bytes,
        }
    }
}

/// Writes a `file` frame and its `data` frames for each collectable file below `outputs`,
/// and a `skipped` frame for each entry left out.
pub fn outputs<W: Write>(outputs: &Path, caps: Caps, emitter: &mut Emitter<W>) -> io::Result<()> {
    let mut walk = Walk {
        emitter,
        tally: Tally::new(caps),
        entries: 0,
    };
    match Dir::open(outputs, dir_flags(), Mode::empty()) {
        Ok(dir) => walk.dir(dir, "", 0)?,
        Err(Errno::ENOENT) => {}
        Err(Errno::ELOOP | Errno::ENOTDIR) => walk.skip(
            "outputs",
            SkipReason::NotAFile,
            "the outputs folder is a symlink or not a folder: refused",
        )?,
        Err(err) => walk.skip(
            "outputs",
            SkipReason::Unreadable,
            &format!("cannot open the outputs folder: {err}"),
        )?,
    }
    walk.tally.finish(walk.emitter)
}

pub(crate) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

struct Walk<'a, W: Write> {
    emitter: &'a mut Emitter<W>,
    tally: Tally,
    entries: usize,
}

impl<W: Write> Walk<'_, W> {
    /// `prefix` is the folder's name relative to `outputs` ("" for `outputs` itself) and
    /// `depth` its number of parts.
    fn dir(&mut self, mut dir: Dir, prefix: &str, depth: usize) -> io::Result<()> {
        let mut names: Vec<CString> = Vec::new();
        let mut walk_stopped = false;
        for entry in dir.iter() {
            let Ok(entry) = entry else { break };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if self.entries >= MAX_ENTRIES {
                walk_stopped = true;
                break;
            }
            self.entries += 1;
            names.push(name.to_owned());
        }
        // Sorted, so the same outputs give the same record.
        names.sort();
        for name in &names {
            let Ok(text) = name.to_str() else {
                let lossy = name.to_string_lossy();
                self.skip(
                    &join(prefix, &lossy),
                    SkipReason::InvalidName,
                    "name is not valid UTF-8",
                )?;
                continue;
            };
            let rel = join(prefix, text);
            let stat = match fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(err) => {
                    self.skip(&rel, SkipReason::Unreadable, &format!("cannot stat: {err}"))?;
                    continue;
                }
            };
            match kind(&stat) {
                Kind::Dir if depth + 1 >= MAX_DEPTH => self.skip(
                    &rel,
                    SkipReason::NotWalked,
                    "folder nested too deep: not walked",
                )?,
                Kind::Dir => match Dir::openat(&dir, name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(sub) => self.dir(sub, &rel, depth + 1)?,
                    Err(err) => self.skip(
                        &rel,
                        SkipReason::Unreadable,
                        &format!("cannot open the folder: {err}"),
                    )?,
                },
                Kind::File => self.tally.file(&dir, name, &rel, &stat, self.emitter)?,
                Kind::Other(what) => {
                    self.skip(&rel, SkipReason::NotAFile, &format!("{what} refused"))?
                }
            }
        }
        if walk_stopped {
            let reason = format!("more than {MAX_ENTRIES} entries: the walk stopped at the limit");
            let name = if prefix.is_empty() { "outputs" } else { prefix };
            self.skip(name, SkipReason::NotWalked, &reason)?;
        }
        Ok(())
    }

    fn skip(&mut self, name: &str, reason: SkipReason, detail: &str) -> io::Result<()> {
        self.tally.skip(name, reason, detail, self.emitter)
    }
}

/// The output files sent so far against the caps, and the files left out: the one-shot
/// collection of `outputs` and a container's changed files apply the same rules.
pub(crate) struct Tally {
    caps: Caps,
    files: u32,
    bytes: u64,
    skipped: usize,
    unreported: usize,
    /// The reason of the unreported entries, a limit's first if any was over one.
    unreported_reason: Option<SkipReason>,
}

impl Tally {
    pub(crate) fn new(caps: Caps) -> Self {
        Tally {
            caps,
            files: 0,
            bytes: 0,
            skipped: 0,
            unreported: 0,
            unreported_reason: None,
        }
    }

    /// Sends the regular file `name` of `dir` (found as `seen`, named `rel` in the record)
    /// within the caps, or says why not. Never follows a link or blocks on a FIFO.
    pub(crate) fn file<W: Write>(
        &mut self,
        dir: &impl AsFd,
        name: &CStr,
        rel: &str,
        seen: &FileStat,
        emitter: &mut Emitter<W>,
    ) -> io::Result<()> {
        if let Err(reason) = validate_relative_name(rel) {
            let detail = format!("invalid name: {reason}");
            return self.skip(rel, SkipReason::InvalidName, &detail, emitter);
        }
        if self.files >= self.caps.max_files {
            return self.skip(rel, SkipReason::TooMany, "too many output files", emitter);
        }
        // O_NOFOLLOW: a link swapped in since the stat is refused, not followed. O_NONBLOCK:
        // a FIFO swapped in does not block the open.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                return self.skip(rel, SkipReason::NotAFile, "symlink refused", emitter);
            }
            Err(err) => {
                let detail = format!("cannot open: {err}");
                return self.skip(rel, SkipReason::Unreadable, &detail, emitter);
            }
        };
        let stat = match fstat(&fd) {
            Ok(stat) => stat,
            Err(err) => {
                let detail = format!("cannot stat: {err}");
                return self.skip(rel, SkipReason::Unreadable, &detail, emitter);
            }
        };
        if kind(&stat) != Kind::File || (stat.st_dev, stat.st_ino) != (seen.st_dev, seen.st_ino) {
            let detail = "changed while being collected: refused";
            return self.skip(rel, SkipReason::Unreadable, detail, emitter);
        }
        let size = stat.st_size.max(0) as u64;
        if size > self.caps.max_file_bytes {
            return self.skip(
                rel,
                SkipReason::TooLarge,
                "file over the size limit",
                emitter,
            );
        }
        if self.bytes + size > self.caps.max_total_bytes {
            let detail = "output files over the total size limit";
            return self.skip(rel, SkipReason::TotalTooLarge, detail, emitter);
        }
        match stream(&File::from(fd), size, rel, emitter)? {
            Streamed::Whole(sent) => {
                self.files += 1;
                self.bytes += sent;
            }
            Streamed::NotStarted(detail) => {
                self.skip(rel, SkipReason::Unreadable, &detail, emitter)?;
            }
            Streamed::CutShort(detail) => {
                self.bytes += size;
                self.skip(rel, SkipReason::Unreadable, &detail, emitter)?;
            }
        }
        emitter.flush()
    }

    /// Reasons that are a cap the run went over are reported by the operator as
    /// `artifact_limit_exceeded`.
    pub(crate) fn skip<W: Write>(
        &mut self,
        name: &str,
        reason: SkipReason,
        detail: &str,
        emitter: &mut Emitter<W>,
    ) -> io::Result<()> {
        if self.skipped >= MAX_SKIPPED_FRAMES {
            self.unreported += 1;
            if !self
                .unreported_reason
                .is_some_and(SkipReason::is_over_a_limit)
            {
                self.unreported_reason = Some(reason);
            }
            return Ok(());
        }
        self.skipped += 1;
        emitter.frame(&Frame::Skipped(SkippedFile {
            name: name.to_string(),
            reason,
            detail: detail.to_string(),
        }))
    }

    /// Sums up the entries left out past the skipped frames written one by one.
    pub(crate) fn finish<W: Write>(self, emitter: &mut Emitter<W>) -> io::Result<()> {
        if self.unreported == 0 {
            return Ok(());
        }
        let reason = self.unreported_reason.unwrap_or(SkipReason::NotWalked);
        emitter.frame(&Frame::Skipped(SkippedFile {
            name: "...".into(),
            reason,
            detail: format!("{} more entries left out", self.unreported),
        }))
    }
}

/// What became of a file being sent.
enum Streamed {
    /// Sent whole, this many bytes.
    Whole(u64),
    /// Not sent: it could not be read (nothing of it is in the record).
    NotStarted(String),
    /// Its `file` frame went out but it changed or failed while being read: its last data
    /// frame was held back, so the reader sees it cut short.
    CutShort(String),
}

/// Sends at most `size` bytes of `file` as a `file` frame and its `data` frames, holding no
/// more than a frame's worth in memory. The checksum goes before the data, so the file is read
/// twice: once for the checksum, once for the frames, the last of which is held back until the
/// second read has matched the first. A file that changed in between (a process still writing
/// it, in a container) ends cut short, never with data that does not match its checksum,
/// which would make the reader refuse the whole record.
fn stream<W: Write>(
    file: &File,
    size: u64,
    rel: &str,
    emitter: &mut Emitter<W>,
) -> io::Result<Streamed> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let (length, checksum) = match read_through(file, size, &mut buf, |_| Ok(())) {
        Ok(read) => read,
        Err(Failed::Writing(err)) => return Err(err),
        Err(Failed::Reading(err)) => {
            return Ok(Streamed::NotStarted(format!("cannot read: {err}")));
        }
    };
    emitter.frame(&Frame::File {
        name: rel.to_string(),
        size: length,
        sha256: checksum.clone(),
    })?;
    let mut held: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
    let second = read_through(file, length, &mut buf, |chunk| {
        if !held.is_empty() {
            emitter.data(&held)?;
        }
        held.clear();
        held.extend_from_slice(chunk);
        Ok(())
    });
    match second {
        Ok((again, same)) if again == length && same == checksum => {
            emitter.data(&held)?;
            Ok(Streamed::Whole(length))
        }
        Ok(_) => Ok(Streamed::CutShort(
            "changed while being collected: cut short".into(),
        )),
        Err(Failed::Reading(err)) => Ok(Streamed::CutShort(format!("cannot read: {err}"))),
        Err(Failed::Writing(err)) => Err(err),
    }
}

/// Why a read through a file stopped: the file, or the record it was being written to.
enum Failed {
    Reading(io::Error),
    Writing(io::Error),
}

/// Reads up to `limit` bytes of `file` from its start, handing each chunk to `each` (which
/// writes the record); how many were read, and their sha256.
fn read_through(
    file: &File,
    limit: u64,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(u64, String), Failed> {
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    while at < limit {
        let want = usize::try_from(limit - at).map_or(buf.len(), |left| left.min(buf.len()));
        let n = match file.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Failed::Reading(err)),
        };
        hasher.update(&buf[..n]);
        each(&buf[..n]).map_err(Failed::Writing)?;
        at += n as u64;
    }
    Ok((at, hex::encode(hasher.finalize())))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Other(&'static str),
}

pub(crate) fn kind(stat: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFLNK => Kind::Other("symlink"),
        SFlag::S_IFIFO => Kind::Other("fifo"),
        SFlag::S_IFSOCK => Kind::Other("socket"),
        SFlag::S_IFCHR | SFlag::S_IFBLK => Kind::Other("device"),
        _ => Kind::Other("unknown file type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_protocol::{EffectiveLimits, PROTOCOL_VERSION, Record, parse_record};

    const CAPS: Caps = Caps {
        max_files: 10,
        max_file_bytes: 100,
        max_total_bytes: 1000,
    };

    /// Collects `dir` and parses the frames the way the operator will.
    fn collect(dir: &Path, caps: Caps) -> Record {
        let mut emitter = Emitter::new(Vec::new());
        emitter
            .frame(&Frame::Start {
                v: PROTOCOL_VERSION,
            })
            .unwrap();
        outputs(dir, caps, &mut emitter).unwrap();
        let limits = EffectiveLimits {
            timeout_ms: 1000,
            memory_mb: 64,
            cpu_ms: 1000,
            cpu_millicores: 100,
            max_output_bytes: 0,
            max_artifacts: caps.max_files,
            max_artifact_bytes: caps.max_file_bytes,
            max_artifact_total_bytes: caps.max_total_bytes,
            max_processes: 8,
            disk_mb: 1,
        };
        parse_record(&emitter.into_inner(), &limits).unwrap()
    }

    #[test]
    fn files_in_nested_folders_are_collected_with_relative_names_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/deep.txt"), "deep").unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("empty"), "").unwrap();
        let rec = collect(dir.path(), CAPS);
        let names: Vec<_> = rec.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b/c/deep.txt", "empty"]);
        assert_eq!(rec.artifacts[1].content, b"deep");
        assert!(rec.skipped.is_empty());
    }

    #[test]
    fn a_missing_outputs_folder_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rec = collect(&dir.path().join("outputs"), CAPS);
        assert!(rec.artifacts.is_empty() && rec.skipped.is_empty());
    }

    #[test]
    fn an_outputs_folder_that_is_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::fs::write(dir.path().join("elsewhere/secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("outputs"))
            .unwrap();
        let rec = collect(&dir.path().join("outputs"), CAPS);
        assert!(rec.artifacts.is_empty());
        assert_eq!(rec.skipped.len(), 1);
        assert!(!rec.artifact_limit_exceeded);
    }

    #[test]
    fn a_symlinked_subfolder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let rec = collect(dir.path(), CAPS);
        assert!(rec.artifacts.is_empty());
        assert_eq!(rec.skipped[0].reason, SkipReason::NotAFile);
        assert_eq!(rec.skipped[0].detail, "symlink refused");
    }

    #[test]
    fn folders_deeper_than_the_name_depth_are_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("1/2/3/4/5/6/7/8");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("x"), "x").unwrap();
        std::fs::write(dir.path().join("1/2/3/4/5/6/7/ok"), "ok").unwrap();
        let rec = collect(dir.path(), CAPS);
        assert_eq!(rec.artifacts.len(), 1);
        assert_eq!(rec.artifacts[0].name, "1/2/3/4/5/6/7/ok");
        assert_eq!(rec.skipped[0].name, "1/2/3/4/5/6/7/8");
    }

    #[test]
    fn size_and_total_caps_skip_files_as_over_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 60]).unwrap();
        std::fs::write(dir.path().join("b"), [0u8; 101]).unwrap();
        std::fs::write(dir.path().join("c"), [0u8; 60]).unwrap();
        let caps = Caps {
            max_total_bytes: 100,
            ..CAPS
        };
        let rec = collect(dir.path(), caps);
        let names: Vec<_> = rec.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(rec.skipped.len(), 2);
        assert!(rec.skipped.iter().all(|s| s.reason.is_over_a_limit()));
        assert!(rec.artifact_limit_exceeded);
    }

    #[test]
    fn skipped_frames_beyond_a_hundred_are_summed_up_in_one() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..150 {
            std::fs::write(dir.path().join(format!("f{i:03}")), "x").unwrap();
        }
        let caps = Caps {
            max_files: 0,
            ..CAPS
        };
        let rec = collect(dir.path(), caps);
        assert_eq!(rec.skipped.len(), MAX_SKIPPED_FRAMES + 1);
        let last = rec.skipped.last().unwrap();
        assert!(last.detail.starts_with("50 more"), "{last:?}");
        assert_eq!(last.reason, SkipReason::TooMany);
        assert!(rec.artifact_limit_exceeded);
    }
}
