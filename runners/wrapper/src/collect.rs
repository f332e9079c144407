//! Collecting `/work/outputs`: regular files only, never through a link, within the job's caps
//! and a bounded walk. Every file left out is reported with the reason.
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use runner_protocol::{EffectiveLimits, Frame, SkipReason, SkippedFile, validate_relative_name};
use sha2::{Digest, Sha256};

use crate::emit::Emitter;

/// Folders below `outputs` that are walked (a file's name has at most this many parts).
const MAX_DEPTH: usize = 8;
/// Directory entries looked at in all, whatever they are.
const MAX_ENTRIES: usize = 10_000;
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
        caps,
        files: 0,
        bytes: 0,
        entries: 0,
        skipped: 0,
        unreported: 0,
        unreported_reason: None,
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
    walk.finish()
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

struct Walk<'a, W: Write> {
    emitter: &'a mut Emitter<W>,
    caps: Caps,
    files: u32,
    bytes: u64,
    entries: usize,
    skipped: usize,
    unreported: usize,
    /// The reason of the unreported entries, a limit's first if any was over one.
    unreported_reason: Option<SkipReason>,
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
                Kind::File => self.file(&dir, name, &rel, &stat)?,
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

    fn file(&mut self, dir: &Dir, name: &CStr, rel: &str, seen: &FileStat) -> io::Result<()> {
        if let Err(reason) = validate_relative_name(rel) {
            return self.skip(
                rel,
                SkipReason::InvalidName,
                &format!("invalid name: {reason}"),
            );
        }
        if self.files >= self.caps.max_files {
            return self.skip(rel, SkipReason::TooMany, "too many output files");
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
            Err(Errno::ELOOP) => return self.skip(rel, SkipReason::NotAFile, "symlink refused"),
            Err(err) => {
                return self.skip(rel, SkipReason::Unreadable, &format!("cannot open: {err}"));
            }
        };
        let stat = fstat(&fd)?;
        if kind(&stat) != Kind::File || (stat.st_dev, stat.st_ino) != (seen.st_dev, seen.st_ino) {
            return self.skip(
                rel,
                SkipReason::Unreadable,
                "changed while being collected: refused",
            );
        }
        let size = stat.st_size.max(0) as u64;
        if size > self.caps.max_file_bytes {
            return self.skip(rel, SkipReason::TooLarge, "file over the size limit");
        }
        if self.bytes + size > self.caps.max_total_bytes {
            return self.skip(
                rel,
                SkipReason::TotalTooLarge,
                "output files over the total size limit",
            );
        }
        // Never more than the size found: a file still growing is cut at it.
        let mut content = Vec::with_capacity(size as usize);
        if let Err(err) = File::from(fd).take(size).read_to_end(&mut content) {
            return self.skip(rel, SkipReason::Unreadable, &format!("cannot read: {err}"));
        }
        self.files += 1;
        self.bytes += content.len() as u64;
        self.emitter.frame(&Frame::File {
            name: rel.to_string(),
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(&content)),
        })?;
        self.emitter.data(&content)?;
        self.emitter.flush()
    }

    /// Reasons that are a cap the run went over are reported by the operator as
    /// `artifact_limit_exceeded`.
    fn skip(&mut self, name: &str, reason: SkipReason, detail: &str) -> io::Result<()> {
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
        self.emitter.frame(&Frame::Skipped(SkippedFile {
            name: name.to_string(),
            reason,
            detail: detail.to_string(),
        }))
    }

    fn finish(self) -> io::Result<()> {
        if self.unreported == 0 {
            return Ok(());
        }
        let reason = self.unreported_reason.unwrap_or(SkipReason::NotWalked);
        self.emitter.frame(&Frame::Skipped(SkippedFile {
            name: "...".into(),
            reason,
            detail: format!("{} more entries left out", self.unreported),
        }))
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other(&'static str),
}

fn kind(stat: &FileStat) -> Kind {
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
