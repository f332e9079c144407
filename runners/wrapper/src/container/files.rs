//! A container's files under its data folder, as the operations name them: a plain relative
//! path, whose folders are opened one at a time without following a link, so no path reaches
//! outside the folder whatever a program put there. A file is written under a temporary name
//! and renamed into place once whole, so a write cut short leaves nothing behind.
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat, renameat};
use nix::sys::stat::{FileStat, Mode, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use runner_protocol::validate_relative_name;

use crate::collect::dir_flags;

/// Temporary names of files being written: `.ci-runner-part-<n>` beside their target.
const PART_PREFIX: &str = ".ci-runner-part-";
static PARTS: AtomicU64 = AtomicU64::new(0);

/// The folder that holds `rel`, opened, and the last part of `rel`. With `create`, missing
/// folders are made. Refuses a path that is not plain and relative, or that goes through a
/// link or a file.
pub(crate) fn open_parent(
    data_dir: &Path,
    rel: &str,
    create: bool,
) -> Result<(OwnedFd, CString), String> {
    validate_relative_name(rel).map_err(|why| format!("path {rel:?} refused: {why}"))?;
    let mut dir = open(data_dir, dir_flags(), Mode::empty())
        .map_err(|err| format!("cannot open {}: {err}", data_dir.display()))?;
    let (parents, leaf) = rel.rsplit_once('/').unwrap_or(("", rel));
    for part in parents.split('/').filter(|p| !p.is_empty()) {
        if create {
            match mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(err) => {
                    return Err(failure(&format!("cannot create the folder {part:?}"), err));
                }
            }
        }
        dir = openat(&dir, part, dir_flags(), Mode::empty()).map_err(|err| match err {
            Errno::ELOOP | Errno::ENOTDIR => {
                format!("path {rel:?} refused: {part:?} is a link or a file, not a folder")
            }
            Errno::ENOENT => format!("no such file: {rel:?}"),
            err => format!("cannot open the folder {part:?}: {err}"),
        })?;
    }
    let leaf = CString::new(leaf).map_err(|_| format!("path {rel:?} refused: a NUL byte"))?;
    Ok((dir, leaf))
}

/// Words for a failed system call; a full disk says so plainly.
pub(crate) fn failure(what: &str, err: Errno) -> String {
    match err {
        Errno::ENOSPC | Errno::EDQUOT => format!(
            "{what}: the container's disk is full (no space left on the data folder's volume)"
        ),
        Errno::EFBIG => format!("{what}: the file is larger than a file may be here"),
        err => format!("{what}: {err}"),
    }
}

/// A file being written: complete it with [`Part::commit`] or drop it with [`Part::abandon`].
pub(crate) struct Part {
    dir: OwnedFd,
    leaf: CString,
    temp: CString,
    file: File,
    rel: String,
}

impl Part {
    /// Starts writing `rel` under the data folder (its folders made as needed).
    pub(crate) fn create(data_dir: &Path, rel: &str) -> Result<Part, String> {
        let (dir, leaf) = open_parent(data_dir, rel, true)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        loop {
            let n = PARTS.fetch_add(1, Ordering::Relaxed);
            let temp = CString::new(format!("{PART_PREFIX}{}-{n}", std::process::id()))
                .expect("no NUL in a number");
            match openat(
                &dir,
                temp.as_c_str(),
                flags,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => {
                    return Ok(Part {
                        dir,
                        leaf,
                        temp,
                        file: File::from(fd),
                        rel: rel.to_string(),
                    });
                }
                // A program made a file of that name: take the next.
                Err(Errno::EEXIST) => continue,
                Err(err) => return Err(failure(&format!("cannot write {rel:?}"), err)),
            }
        }
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.file.write_all(bytes).map_err(|err| {
            let errno = Errno::from_raw(err.raw_os_error().unwrap_or(0));
            failure(&format!("cannot write {:?}", self.rel), errno)
        })
    }

    /// Puts the whole file in place of whatever had its name (a file or a link; not a folder).
    pub(crate) fn commit(self) -> Result<(), String> {
        let renamed = renameat(
            &self.dir,
            self.temp.as_c_str(),
            &self.dir,
            self.leaf.as_c_str(),
        );
        renamed.map_err(|err| {
            let why = match err {
                Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST => {
                    format!("cannot write {:?}: a folder has that name", self.rel)
                }
                err => failure(&format!("cannot write {:?}", self.rel), err),
            };
            self.remove_temp();
            why
        })
    }

    /// Removes what was written.
    pub(crate) fn abandon(self) {
        self.remove_temp();
    }

    fn remove_temp(&self) {
        let _ = unlinkat(&self.dir, self.temp.as_c_str(), UnlinkatFlags::NoRemoveDir);
    }
}

/// Removes the file (or link) `rel` of the data folder.
pub(crate) fn delete(data_dir: &Path, rel: &str) -> Result<(), String> {
    let (dir, leaf) = open_parent(data_dir, rel, false)?;
    unlinkat(&dir, leaf.as_c_str(), UnlinkatFlags::NoRemoveDir).map_err(|err| match err {
        Errno::ENOENT => format!("no such file: {rel:?}"),
        Errno::EISDIR | Errno::EPERM => format!("cannot delete {rel:?}: it is a folder"),
        err => format!("cannot delete {rel:?}: {err}"),
    })
}

/// What `rel` is now, without following a link: `None` when there is nothing of that name.
pub(crate) fn stat(data_dir: &Path, rel: &str) -> Option<(OwnedFd, CString, FileStat)> {
    let (dir, leaf) = open_parent(data_dir, rel, false).ok()?;
    let stat = fstatat(&dir, leaf.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    Some((dir, leaf, stat))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_file_appears_only_once_whole_in_folders_made_for_it() {
        let data = dir();
        let mut part = Part::create(data.path(), "a/b/c.txt").unwrap();
        part.write(b"hello").unwrap();
        assert!(!data.path().join("a/b/c.txt").exists());
        part.commit().unwrap();
        assert_eq!(
            std::fs::read(data.path().join("a/b/c.txt")).unwrap(),
            b"hello"
        );
        let names: Vec<_> = std::fs::read_dir(data.path().join("a/b"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_abandoned_file_leaves_nothing_and_the_old_one_stays() {
        let data = dir();
        std::fs::write(data.path().join("x"), "old").unwrap();
        let mut part = Part::create(data.path(), "x").unwrap();
        part.write(b"new").unwrap();
        part.abandon();
        assert_eq!(std::fs::read(data.path().join("x")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 1);
    }

    #[test]
    fn paths_that_escape_or_go_through_a_link_are_refused() {
        let data = dir();
        let outside = dir();
        std::os::unix::fs::symlink(outside.path(), data.path().join("link")).unwrap();
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "./x",
            "",
            "link/x",
            "a//b",
        ] {
            assert!(Part::create(data.path(), bad).is_err(), "{bad:?}");
            assert!(delete(data.path(), bad).is_err(), "{bad:?}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // The link itself can be replaced or removed: neither follows it.
        delete(data.path(), "link").unwrap();
        assert!(outside.path().exists());
    }

    #[test]
    fn deleting_a_missing_file_or_a_folder_says_so() {
        let data = dir();
        std::fs::create_dir(data.path().join("sub")).unwrap();
        assert!(
            delete(data.path(), "nope")
                .unwrap_err()
                .contains("no such file")
        );
        assert!(delete(data.path(), "sub").unwrap_err().contains("folder"));
    }

    #[test]
    fn a_full_disk_is_said_plainly() {
        assert!(failure("cannot write \"x\"", Errno::ENOSPC).contains("disk is full"));
    }
}
