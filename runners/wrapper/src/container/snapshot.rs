//! What a run changed in the container's folder: the folder is listed before the run and
//! after it, and every entry that is new or not the same (size, modification time, inode or
//! kind) is what the run created or changed; what is gone, it removed. A listing holds only
//! what `stat` says, never a file's content. The walk follows no link, goes no deeper than a
//! file name may be, and looks at no more entries than the one-shot collection does.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, fstatat};

use crate::collect::{MAX_DEPTH, MAX_ENTRIES, dir_flags};

/// A listing of the folder: every entry but the folders, by its path (bytes: a name need not
/// be UTF-8).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    entries: BTreeMap<Vec<u8>, Seen>,
    /// Every entry was looked at (the walk did not stop at its budget).
    complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    kind: u32,
    size: i64,
    modified: (i64, i64),
    inode: (u64, u64),
}

/// What a run did to the folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Created or changed, in order.
    pub(crate) changed: Vec<Vec<u8>>,
    /// Removed (only names that can be said: UTF-8), in order.
    pub(crate) removed: Vec<String>,
    /// Some entries were not looked at: the walk stopped at its budget.
    pub(crate) incomplete: bool,
}

impl Snapshot {
    pub(crate) fn take(dir: &Path) -> Snapshot {
        let mut snapshot = Snapshot {
            entries: BTreeMap::new(),
            complete: true,
        };
        let mut budget = MAX_ENTRIES;
        if let Ok(root) = Dir::open(dir, dir_flags(), Mode::empty()) {
            snapshot.walk(root, &[], 0, &mut budget);
        }
        snapshot
    }

    fn walk(&mut self, mut dir: Dir, prefix: &[u8], depth: usize, budget: &mut usize) {
        let mut names: Vec<CString> = Vec::new();
        for entry in dir.iter() {
            let Ok(entry) = entry else { break };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if *budget == 0 {
                self.complete = false;
                break;
            }
            *budget -= 1;
            names.push(name.to_owned());
        }
        // Sorted: a walk cut short by its budget looks at the same entries every time.
        names.sort();
        for name in names {
            let Ok(stat) = fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            let kind = stat.st_mode & SFlag::S_IFMT.bits();
            if kind == SFlag::S_IFDIR.bits() {
                // A file deeper than a name may be is not collected: its folder is not walked.
                if depth + 1 < MAX_DEPTH
                    && let Ok(sub) = Dir::openat(&dir, name.as_c_str(), dir_flags(), Mode::empty())
                {
                    self.walk(sub, &path, depth + 1, budget);
                }
                continue;
            }
            let seen = Seen {
                kind,
                size: stat.st_size,
                modified: (stat.st_mtime, stat.st_mtime_nsec),
                inode: (stat.st_dev, stat.st_ino),
            };
            self.entries.insert(path, seen);
        }
    }

    /// What changed from `self` (before the run) to `after`.
    pub(crate) fn changes(&self, after: &Snapshot) -> Changes {
        let changed = after
            .entries
            .iter()
            .filter(|(path, seen)| self.entries.get(*path) != Some(seen))
            .map(|(path, _)| path.clone())
            .collect();
        let removed = self
            .entries
            .keys()
            .filter(|path| !after.entries.contains_key(*path))
            .filter_map(|path| String::from_utf8(path.clone()).ok())
            .collect();
        Changes {
            changed,
            // A walk cut short cannot tell removed from not looked at.
            removed: if after.complete { removed } else { Vec::new() },
            incomplete: !(self.complete && after.complete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[Vec<u8>]) -> Vec<&str> {
        paths
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn new_changed_and_removed_files_are_told_and_untouched_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        for name in ["same", "grows", "goes", "sub/replaced"] {
            std::fs::write(d.join(name), "x").unwrap();
        }
        let before = Snapshot::take(d);
        std::fs::write(d.join("grows"), "xx").unwrap();
        std::fs::remove_file(d.join("goes")).unwrap();
        std::fs::write(d.join("sub/new"), "n").unwrap();
        std::fs::write(d.join("sub/replaced.tmp"), "x").unwrap();
        std::fs::rename(d.join("sub/replaced.tmp"), d.join("sub/replaced")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let changes = before.changes(&Snapshot::take(d));
        assert_eq!(
            names(&changes.changed),
            ["grows", "link", "sub/new", "sub/replaced"]
        );
        assert_eq!(changes.removed, ["goes"]);
        assert!(!changes.incomplete);
    }

    #[test]
    fn a_folder_that_is_a_link_is_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let before = Snapshot::take(dir.path());
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let changes = before.changes(&Snapshot::take(dir.path()));
        assert_eq!(names(&changes.changed), ["out"]);
    }
}
