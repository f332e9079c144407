//! The container's memory cgroup (v2, else v1): peak usage and the OOM-kill counter.
use std::path::{Path, PathBuf};

pub struct Cgroup {
    root: PathBuf,
}

impl Cgroup {
    pub fn new(root: &Path) -> Self {
        Cgroup { root: root.into() }
    }

    /// Peak memory of the whole container (program, its children and page cache).
    pub fn memory_peak(&self) -> Option<u64> {
        ["memory.peak", "memory/memory.max_usage_in_bytes"]
            .iter()
            .find_map(|file| self.read(file)?.trim().parse().ok())
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup so far.
    pub fn oom_kills(&self) -> Option<u64> {
        ["memory.events", "memory/memory.oom_control"]
            .iter()
            .find_map(|file| keyed_value(&self.read(file)?, "oom_kill"))
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(file)).ok()
    }
}

/// The value of `key` in a cgroup "key value" file.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_oom_kill_counter_of_v2_and_v1() {
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(3));
        assert_eq!(keyed_value("oom 2\n", "oom_kill"), None);
    }

    #[test]
    fn prefers_v2_files_and_falls_back_to_v1() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/memory.max_usage_in_bytes"), "100\n").unwrap();
        let cgroup = Cgroup::new(dir.path());
        assert_eq!(cgroup.memory_peak(), Some(100));
        assert_eq!(cgroup.oom_kills(), None);
        std::fs::write(dir.path().join("memory.peak"), "200\n").unwrap();
        assert_eq!(cgroup.memory_peak(), Some(200));
    }
}
