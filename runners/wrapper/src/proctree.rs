//! The processes below the wrapper, read from /proc: to kill every one of them, including
//! daemons that left the program's process group, and to add up the CPU they are using.
use std::collections::HashMap;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{Pid, SysconfVar, getpid, sysconf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    /// Exited, waiting to be reaped: holds no resources and cannot be killed again.
    pub zombie: bool,
    /// utime + stime + cutime + cstime: its own CPU and that of the children it reaped.
    pub cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(' ')?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n)?.parse().ok() };
    Some(ProcStat {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        zombie: matches!(*fields.first()?, "Z" | "X"),
        // Fields 14 to 17 of proc(5), counted here from field 3 (state).
        cpu_ticks: field(11)? + field(12)? + field(13)? + field(14)?,
    })
}

fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?))
        .collect()
}

/// Every live (not zombie) process below `root`.
pub fn descendants(root: i32, processes: &[ProcStat]) -> Vec<ProcStat> {
    let mut children: HashMap<i32, Vec<&ProcStat>> = HashMap::new();
    for p in processes {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            if child.pid != root && !found.iter().any(|f: &ProcStat| f.pid == child.pid) {
                queue.push(child.pid);
                if !child.zombie {
                    found.push(**child);
                }
            }
        }
    }
    found
}

/// CPU time, in milliseconds, of the processes below the wrapper that are still running
/// (reaped ones are in the wrapper's RUSAGE_CHILDREN).
pub fn running_cpu_ms() -> u64 {
    let ticks: u64 = descendants(getpid().as_raw(), &all_processes())
        .iter()
        .map(|p| p.cpu_ticks)
        .sum();
    ticks_to_ms(ticks)
}

/// CPU time, in milliseconds, one process has used so far (its own and its reaped children's),
/// in clock ticks: at most a tick per field short of the truth.
pub fn process_cpu_ms(pid: Pid) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ticks_to_ms(parse_stat(&text)?.cpu_ticks))
}

fn ticks_to_ms(ticks: u64) -> u64 {
    let per_second = match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as u64,
        _ => 100,
    };
    ticks.saturating_mul(1000) / per_second
}

/// Kills every process below the wrapper. As PID 1 of the container one `kill(-1)` reaches
/// them all; elsewhere the program's group first, then whatever /proc still shows below the
/// wrapper (daemons that made sessions of their own), until nothing is left.
pub fn kill_everything(program_group: Pid, is_pid1: bool) {
    if is_pid1 {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    } else {
        let _ = killpg(program_group, Signal::SIGKILL);
    }
    let me = getpid().as_raw();
    // Bounded: a process stuck in the kernel (D state) may never die, and forks racing the
    // kill are caught on the next round.
    for _ in 0..200 {
        // No child at all (the usual case once the program has exited and been reaped)
        // means no descendant either: orphans are re-parented to the wrapper.
        if !has_children() {
            return;
        }
        let left = descendants(me, &all_processes());
        if left.is_empty() {
            return;
        }
        for p in &left {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("ci-runner: some processes did not die after SIGKILL");
}

/// The wrapper's children that have exited and wait to be reaped (orphans re-parented to it
/// among them), found without reaping any: a container's server must not reap its kernels here.
pub fn exited_children() -> Vec<i32> {
    let me = getpid().as_raw();
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == me && p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// Whether the wrapper has any child at all, exited or not (without reaping it).
pub fn has_children() -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(waitid(Id::All, flags), Err(Errno::ECHILD))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32, zombie: bool) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            zombie,
            cpu_ticks: 1,
        }
    }

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parentheses() {
        let line = "4242 (evil ) R 1 2 3) S 17 4242 4242 0 -1 4194560 100 0 0 0 7 3 5 2 20 0 1 0 \
                    12345 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(line).unwrap();
        assert_eq!(p.pid, 4242);
        assert_eq!(p.ppid, 17);
        assert!(!p.zombie);
        assert_eq!(p.cpu_ticks, 7 + 3 + 5 + 2);
    }

    #[test]
    fn descendants_include_grandchildren_but_not_zombies_or_strangers() {
        let all = [
            stat(10, 1, false),  // the wrapper
            stat(11, 10, false), // the program
            stat(12, 11, false), // its child
            stat(13, 12, true),  // an exited grandchild not reaped yet
            stat(14, 10, false), // a daemon re-parented to the wrapper
            stat(20, 1, false),  // someone else
        ];
        let mut pids: Vec<i32> = descendants(10, &all).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, [11, 12, 14]);
    }

    #[test]
    fn the_running_process_finds_its_own_stat() {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(parse_stat(&me).unwrap().pid, std::process::id() as i32);
    }
}
