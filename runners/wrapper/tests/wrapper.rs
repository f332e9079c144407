//! The wrapper binary run as the container would run it, on the host: a job folder and a work
//! folder in a temporary directory, `python3` as the interpreter, the record parsed by the
//! operator's parser. Not PID 1 here, so the kill-everything path is the subreaper one.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{is_gone, python, read_pid, sha256};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runner_protocol::SkipReason;

#[test]
fn stdout_and_stderr_arrive_separately_with_the_exit_code() {
    let run = python(
        "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nprint('more out')\nsys.exit(3)\n",
    )
    .run();
    assert_eq!(run.stdout(), "to out\nmore out\n");
    assert_eq!(run.stderr(), "to err\n");
    assert_eq!(run.exit.exit_code, Some(3));
    assert_eq!(run.exit.signal, None);
    assert!(!run.exit.timed_out && !run.exit.cancelled && !run.exit.oom_killed);
    assert_eq!(run.exit.stdout_bytes, 16);
    assert!(run.exit.wall_ms > 0 && run.exit.memory_peak_bytes > 0);
}

#[test]
fn stdin_and_args_reach_the_program() {
    let run = python("import sys\nprint(sys.argv[1:], sys.stdin.read().upper())\n")
        .stdin("hello")
        .args(&["a b", "--flag"])
        .run();
    assert_eq!(run.stdout(), "['a b', '--flag'] HELLO\n");
    assert_eq!(run.exit.exit_code, Some(0));
}

#[test]
fn without_stdin_the_program_reads_nothing() {
    let run = python("import sys\nprint(repr(sys.stdin.read()))\n").run();
    assert_eq!(run.stdout(), "''\n");
}

#[test]
fn input_files_are_placed_in_the_work_folder_and_the_environment_is_minimal() {
    let run = python(
        "import os\nprint(open('data/in.csv').read())\nprint(os.getcwd() == os.environ['HOME'])\n\
         print(sorted(os.environ))\n",
    )
    .input("data/in.csv", "a,b")
    .env("SECRET_TOKEN", "leak")
    .run();
    let stdout = run.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "a,b");
    assert_eq!(lines[1], "True");
    assert_eq!(
        lines[2],
        "['HOME', 'LANG', 'MPLBACKEND', 'MPLCONFIGDIR', 'PATH', \
         'PYTHONDONTWRITEBYTECODE', 'TMPDIR']"
    );
    assert!(run.work().join("outputs").is_dir());
}

#[test]
fn the_program_starts_with_no_signal_blocked_and_cannot_gain_privileges() {
    // The wrapper blocks the signals it reads from a descriptor; the program must not inherit
    // that (an interpreter with SIGINT blocked cannot be interrupted).
    let run = python(
        "for line in open('/proc/self/status'):\n    \
         if line.startswith(('SigBlk', 'NoNewPrivs')):\n        print(line.split()[1])\n",
    )
    .run();
    assert_eq!(run.stdout(), "0000000000000000\n1\n");
}

#[test]
fn a_timeout_kills_the_program_and_a_daemon_it_started_in_a_session_of_its_own() {
    let run = python(
        r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open('daemon.tmp', 'w') as f:
            f.write(str(os.getpid()))
        os.rename('daemon.tmp', 'daemon.pid')
        time.sleep(300)
    os._exit(0)
os.wait()
while not os.path.exists('daemon.pid'):
    time.sleep(0.01)
print('ready')
time.sleep(300)
"#,
    )
    .limits(|l| l.timeout_ms = 1500)
    .run();
    assert_eq!(run.stdout(), "ready\n");
    assert!(run.exit.timed_out);
    assert_eq!(run.exit.signal, Some(9));
    assert_eq!(run.exit.exit_code, None);
    assert!(
        run.exit.wall_ms >= 1500 && run.exit.wall_ms < 5000,
        "{}",
        run.exit.wall_ms
    );
    assert!(run.elapsed < Duration::from_secs(10));
    let daemon = read_pid(&run.work().join("daemon.pid"));
    assert!(is_gone(daemon), "daemon {daemon} survived");
}

#[test]
fn a_daemon_left_behind_by_a_program_that_exits_is_killed_at_once() {
    let run = python(
        r#"
import os, subprocess
p = subprocess.Popen(['python3', '-c', 'import time; time.sleep(300)'], start_new_session=True)
open('daemon.pid', 'w').write(str(p.pid))
print('bye')
"#,
    )
    .run();
    assert_eq!(run.exit.exit_code, Some(0));
    assert!(!run.exit.timed_out);
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    assert!(is_gone(read_pid(&run.work().join("daemon.pid"))));
}

#[test]
fn output_over_the_cap_is_cut_counted_and_flagged() {
    let run = python("import sys\nsys.stdout.write('x' * 100000)\nsys.stderr.write('e' * 10)\n")
        .limits(|l| l.max_output_bytes = 1000)
        .run();
    assert_eq!(run.record.stdout, vec![b'x'; 1000]);
    assert!(run.exit.stdout_truncated && run.record.stdout_truncated);
    assert_eq!(run.exit.stdout_bytes, 100000);
    assert_eq!(run.stderr(), "e".repeat(10));
    assert!(!run.exit.stderr_truncated);
    assert_eq!(run.exit.exit_code, Some(0));
}

#[test]
fn a_program_flooding_its_output_is_not_blocked_by_the_cap() {
    // 20 MB through a 1 kB cap: the wrapper keeps reading so the program finishes.
    let run = python("import sys\nfor _ in range(20):\n    sys.stdout.write('y' * 1000000)\nprint('done', file=sys.stderr)\n")
        .limits(|l| l.max_output_bytes = 1000)
        .run();
    assert_eq!(run.exit.exit_code, Some(0));
    assert_eq!(run.exit.stdout_bytes, 20_000_000);
    assert_eq!(run.stderr(), "done\n");
}

#[test]
fn many_tiny_writes_are_gathered_into_few_frames() {
    let run = python("import sys\nfor _ in range(5000):\n    sys.stdout.write('x')\n").run();
    assert_eq!(run.stdout(), "x".repeat(5000));
    let frames = run
        .log
        .split(|b| *b == b'\n')
        .filter(|line| line.starts_with(br#"{"t":"stdout""#))
        .count();
    assert!(frames < 100, "{frames} frames for 5000 one-byte writes");
}

#[test]
fn output_files_are_collected_with_their_sha256() {
    let run = python(
        r#"
import os
os.makedirs('outputs/charts', exist_ok=True)
open('outputs/result.txt', 'w').write('42\n')
open('outputs/charts/data.bin', 'wb').write(bytes(range(256)) * 100)
open('not-an-output.txt', 'w').write('x')
"#,
    )
    .run();
    let names: Vec<&str> = run
        .record
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["charts/data.bin", "result.txt"]);
    assert_eq!(run.artifact("result.txt").unwrap(), b"42\n");
    let data: Vec<u8> = (0..=255u8).cycle().take(25600).collect();
    assert_eq!(run.artifact("charts/data.bin").unwrap(), data.as_slice());
    assert_eq!(run.record.artifacts[0].sha256, sha256(&data));
    assert!(run.record.skipped.is_empty());
}

#[test]
fn a_symlink_in_outputs_is_refused_not_followed() {
    let run = python("import os\nos.symlink('/etc/passwd', 'outputs/passwd')\n").run();
    assert!(run.record.artifacts.is_empty());
    let refused = run.skipped("passwd").unwrap();
    assert_eq!(refused.reason, SkipReason::NotAFile);
    assert_eq!(refused.detail, "symlink refused");
    assert!(!run.record.artifact_limit_exceeded);
}

#[test]
fn a_name_over_the_length_cap_is_refused() {
    let run = python(
        "import os\nd = 'outputs/' + 'd' * 200\nos.makedirs(d)\nopen(d + '/' + 'f' * 100, 'w').write('x')\n\
         open('outputs/ok', 'w').write('ok')\n",
    )
    .run();
    assert_eq!(run.record.artifacts.len(), 1);
    assert_eq!(run.record.artifacts[0].name, "ok");
    let refused = &run.record.skipped[0];
    assert!(refused.name.starts_with("ddd"));
    assert_eq!(refused.reason, SkipReason::InvalidName, "{refused:?}");
}

#[test]
fn a_fifo_in_outputs_does_not_hang_the_wrapper() {
    let run =
        python("import os\nos.mkfifo('outputs/pipe')\nopen('outputs/real', 'w').write('r')\n")
            .run();
    assert_eq!(run.skipped("pipe").unwrap().detail, "fifo refused");
    assert_eq!(run.artifact("real").unwrap(), b"r");
    assert!(run.elapsed < Duration::from_secs(5));
}

#[test]
fn files_over_the_count_cap_are_left_out_and_flagged() {
    let run = python("for i in range(5):\n    open(f'outputs/f{i}', 'w').write(str(i))\n")
        .limits(|l| l.max_artifacts = 2)
        .run();
    let names: Vec<&str> = run
        .record
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["f0", "f1"]);
    assert_eq!(run.record.skipped.len(), 3);
    assert!(
        run.record
            .skipped
            .iter()
            .all(|s| s.reason == SkipReason::TooMany)
    );
    assert!(run.record.artifact_limit_exceeded);
}

#[test]
fn a_file_over_the_size_cap_is_left_out_and_flagged() {
    let run = python(
        "open('outputs/big', 'wb').write(b'x' * 5000)\nopen('outputs/small', 'w').write('s')\n",
    )
    .limits(|l| l.max_artifact_bytes = 1000)
    .run();
    assert_eq!(run.record.artifacts.len(), 1);
    assert_eq!(run.skipped("big").unwrap().reason, SkipReason::TooLarge);
    assert!(run.record.artifact_limit_exceeded);
}

#[test]
fn a_missing_interpreter_is_reported_as_an_error() {
    let run = python("print(1)\n")
        .env("CI_RUNNER_PATH", "/nonexistent")
        .run();
    let error = run.exit.error.as_deref().unwrap();
    assert!(error.starts_with("cannot start python3: "), "{error}");
    assert_eq!(run.exit.exit_code, None);
    assert!(run.record.stdout.is_empty());
}

#[test]
fn a_broken_job_is_reported_as_an_error() {
    let fixture = python("print(1)\n");
    let output = fixture
        .spawn_with(b"{not json\n".to_vec())
        .wait_with_output()
        .unwrap();
    let run = fixture.finish(output, Duration::ZERO);
    assert!(
        !run.exit.no_job,
        "a broken job is the job's fault, not a lost one"
    );
    assert!(run.exit.error.unwrap().contains("job header is not valid"));
}

#[test]
fn a_job_cut_short_anywhere_is_no_job_and_nothing_runs() {
    let fixture = || python("open('ran', 'w').write('x')\n").input("in.txt", "data");
    let whole = fixture().job_bytes();
    let header = whole.iter().position(|b| *b == b'\n').unwrap() + 1;
    // Nothing, half the header, the header alone, the source cut, the input file cut.
    for keep in [0, header / 2, header, header + 3, whole.len() - 2] {
        let fixture = fixture();
        let mut child = fixture.command().spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&whole[..keep]).unwrap();
        drop(stdin); // the attach stream closes
        let output = child.wait_with_output().unwrap();
        let run = fixture.finish(output, Duration::ZERO);
        assert!(run.exit.no_job, "cut at {keep}: {:?}", run.exit);
        assert!(run.exit.error.is_some());
        assert!(!run.work().join("ran").exists());
    }
}

#[test]
fn a_job_with_an_escaping_input_name_is_refused_before_anything_is_written() {
    let mut fixture = python("print(1)\n").input("x", "abc");
    fixture.job.files[0].name = "../escaped".into();
    let output = fixture.spawn().wait_with_output().unwrap();
    let run = fixture.finish(output, Duration::ZERO);
    assert!(run.exit.error.as_deref().unwrap().contains("input file"));
    assert!(!run.dir.path().join("escaped").exists());
}

#[test]
fn the_cpu_budget_stops_a_busy_program() {
    let run = python("while True:\n    pass\n")
        .limits(|l| l.cpu_ms = 500)
        .run();
    assert!(run.exit.cpu_limit_exceeded, "{:?}", run.exit);
    assert!(!run.exit.timed_out);
    assert_eq!(run.exit.signal, Some(9));
    assert!(run.exit.cpu_ms >= 500, "{}", run.exit.cpu_ms);
    assert!(run.elapsed < Duration::from_secs(5));
}

#[test]
fn writing_past_the_file_size_limit_is_reported() {
    // Python ignores SIGXFSZ (the write fails instead); restore the default to see the kill.
    let run = python(
        "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\nopen('big', 'wb').write(b'x' * (3 << 20))\n",
    )
    .limits(|l| l.disk_mb = 1)
    .run();
    assert!(run.exit.file_size_exceeded, "{:?}", run.exit);
    assert_eq!(run.exit.signal, Some(Signal::SIGXFSZ as i32));
}

#[test]
fn a_kill_while_the_cgroup_counts_an_oom_kill_is_reported_as_oom() {
    // A stand-in cgroup folder: the program plays the kernel, counting an OOM kill and
    // killing itself, which is what the wrapper sees when the OOM killer strikes.
    let cgroup = tempfile::tempdir().unwrap();
    std::fs::write(cgroup.path().join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
    std::fs::write(cgroup.path().join("memory.peak"), "123456789\n").unwrap();
    let events = cgroup.path().join("memory.events");
    let run = python(&format!(
        "import os, signal\nopen({events:?}, 'w').write('oom 1\\noom_kill 1\\n')\n\
         os.kill(os.getpid(), signal.SIGKILL)\n"
    ))
    .env("CI_RUNNER_CGROUP_DIR", cgroup.path().to_str().unwrap())
    .run();
    assert!(run.exit.oom_killed, "{:?}", run.exit);
    assert_eq!(run.exit.memory_peak_bytes, 123456789);
    assert!(!run.exit.timed_out && !run.exit.cpu_limit_exceeded);
}

#[test]
fn output_is_streamed_while_the_program_runs_and_sigterm_cancels_it() {
    let fixture = python(
        "import sys, time\nopen('outputs/partial.txt', 'w').write('p')\nsys.stdout.write('first\\n')\n\
         time.sleep(300)\n",
    );
    let started = Instant::now();
    let mut child = fixture.spawn();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut log = Vec::new();
    // The program's first line arrives while it still runs.
    loop {
        let mut line = Vec::new();
        assert!(
            reader.read_until(b'\n', &mut line).unwrap() > 0,
            "record ended early"
        );
        log.extend_from_slice(&line);
        if line.starts_with(br#"{"t":"stdout""#) {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(child.try_wait().unwrap(), None);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    reader.read_to_end(&mut log).unwrap();
    let status = child.wait().unwrap();
    let output = Output {
        status,
        stdout: log,
        stderr: Vec::new(),
    };
    let run = fixture.finish(output, started.elapsed());
    assert_eq!(run.stdout(), "first\n");
    assert!(run.exit.cancelled && !run.exit.timed_out);
    assert_eq!(run.exit.signal, Some(9));
    // Evidence is kept: what it wrote before the cancel is still collected.
    assert_eq!(run.artifact("partial.txt").unwrap(), b"p");
}

#[test]
fn the_wrapper_exits_only_once_its_reader_has_the_whole_record() {
    // The container's exit ends its attach streams, and what was still on its way to the
    // reader was lost with them: the wrapper waits for the reader's session to end first.
    let fixture = python("print('done')\n");
    let mut child = fixture.command().spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&fixture.job_bytes()).unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut record = Vec::new();
    let mut line = Vec::new();
    while std::io::BufRead::read_until(&mut stdout, b'\n', &mut line).unwrap() > 0 {
        record.extend_from_slice(&line);
        let end = serde_json::from_slice::<runner_protocol::Frame>(&line);
        line.clear();
        if matches!(end, Ok(runner_protocol::Frame::End)) {
            break;
        }
    }
    let rec = runner_protocol::parse_record(&record, &fixture.job.limits).unwrap();
    assert!(rec.complete && rec.stdout == b"done\n", "{rec:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the wrapper exited while its reader was still attached"
    );
    let closed = Instant::now();
    drop(stdin); // the operator's session ends (stdinOnce closes the pod's stdin)
    assert!(child.wait().unwrap().success());
    assert!(
        closed.elapsed() < Duration::from_secs(2),
        "{:?}",
        closed.elapsed()
    );
}
