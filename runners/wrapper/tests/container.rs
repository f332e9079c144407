//! Container mode through the wrapper binary, as the operator drives it: operations on stdin,
//! one JSON line each, and the frames on stdout decoded by the operator's decoder. The host's
//! interpreters stand in for the image's (python3, node, ruby, php; no preload: the host's
//! Python has no numpy).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{is_gone, kernels_dir};
use runner_protocol::{
    Decoder, EffectiveLimits, ExitReport, Frame, InputFile, Job, Language, Op, PROTOCOL_VERSION,
    Record, data_lines, encode_frame, sync_line,
};
use tempfile::TempDir;

/// A container: the wrapper in container mode, its data folder and its job folder.
struct Container {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<Result<Frame, String>>,
    dir: TempDir,
    ops: usize,
}

/// A run's record as the operator reads it.
struct Ran {
    record: Record,
    exit: ExitReport,
}

impl Ran {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.record.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.record.stderr).into_owned()
    }
    fn file(&self, name: &str) -> Option<&[u8]> {
        let found = self.record.artifacts.iter().find(|a| a.name == name)?;
        Some(&found.content)
    }
}

fn limits() -> EffectiveLimits {
    EffectiveLimits {
        timeout_ms: 20_000,
        memory_mb: 512,
        cpu_ms: 20_000,
        cpu_millicores: 1000,
        max_output_bytes: 1 << 20,
        max_artifacts: 10,
        max_artifact_bytes: 1 << 20,
        max_artifact_total_bytes: 4 << 20,
        max_processes: 256,
        disk_mb: 16,
    }
}

fn job(language: Language, code: &str, limits: EffectiveLimits) -> Job {
    Job {
        v: PROTOCOL_VERSION,
        language,
        args: Vec::new(),
        limits,
        code_bytes: code.len() as u64,
        stdin_bytes: None,
        files: Vec::new(),
    }
}

impl Container {
    fn start() -> Container {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["data", "job"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_ci-runner"))
            .env("CI_RUNNER_MODE", "container")
            .env("CI_RUNNER_DATA_DIR", dir.path().join("data"))
            .env("CI_RUNNER_JOB_DIR", dir.path().join("job"))
            .env("CI_RUNNER_KERNELS_DIR", kernels_dir())
            .env_remove("CI_RUNNER_PRELOAD")
            .env_remove("CI_RUNNER_KERNEL")
            .env_remove("CI_RUNNER_CGROUP_DIR")
            .env_remove("CI_RUNNER_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Bounded: a test that stops reading holds the container's writes up, as a slow
        // reader does.
        let (tx, frames) = mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let frame = serde_json::from_str::<Frame>(&line).map_err(|_| line);
                if tx.send(frame).is_err() {
                    break;
                }
            }
        });
        Container {
            stdin: child.stdin.take(),
            child,
            frames,
            dir,
            ops: 0,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn next_id(&mut self, kind: &str) -> String {
        self.ops += 1;
        format!("{kind}-{}", self.ops)
    }

    fn frame(&self) -> Frame {
        match self.frames.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(frame)) => frame,
            Ok(Err(line)) => panic!("not a frame on stdout: {line}"),
            Err(err) => panic!("no frame: {err}"),
        }
    }

    /// Sends a run; its id.
    fn send_run(&mut self, job: &Job, payload: &[u8]) -> String {
        assert_eq!(job.payload_bytes(), payload.len() as u64);
        let id = self.next_id("run");
        self.send(
            &Op::Run {
                id: id.clone(),
                job: job.clone(),
            }
            .line(),
        );
        for line in data_lines(payload) {
            self.send(&line);
        }
        id
    }

    fn run(&mut self, language: Language, code: &str) -> Ran {
        self.run_job(&job(language, code, limits()), code.as_bytes())
    }

    fn run_job(&mut self, job: &Job, payload: &[u8]) -> Ran {
        let id = self.send_run(job, payload);
        assert_eq!(self.frame(), Frame::Run { id });
        self.record(&job.limits)
    }

    /// Reads a record to its end frame, as the operator's decoder does.
    fn record(&self, limits: &EffectiveLimits) -> Ran {
        let mut decoder = Decoder::new(limits);
        loop {
            let frame = self.frame();
            decoder.push(&encode_frame(&frame)).unwrap();
            if frame == Frame::End {
                break;
            }
        }
        let record = decoder.finish().unwrap();
        assert!(record.complete);
        Ran {
            exit: record.exit.clone().expect("an exit frame"),
            record,
        }
    }

    /// Puts a file; the error of its ack, if any.
    fn put(&mut self, path: &str, bytes: &[u8]) -> Option<String> {
        let id = self.next_id("put");
        let op = Op::Put {
            id: id.clone(),
            path: path.into(),
            bytes: bytes.len() as u64,
        };
        self.send(&op.line());
        for line in data_lines(bytes) {
            self.send(&line);
        }
        self.ack(&id)
    }

    fn delete(&mut self, path: &str) -> Option<String> {
        let id = self.next_id("delete");
        let op = Op::Delete {
            id: id.clone(),
            path: path.into(),
        };
        self.send(&op.line());
        self.ack(&id)
    }

    fn ack(&self, id: &str) -> Option<String> {
        match self.frame() {
            Frame::Ack { id: acked, error } if acked == id => error,
            other => panic!("expected the ack of {id}, got {other:?}"),
        }
    }

    fn sync(&mut self, nonce: &str) {
        self.send(&sync_line(nonce));
    }

    /// Closes stdin and waits for the wrapper to exit.
    fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the wrapper did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per language: define a variable, change and print it, a program that never ends, one that
/// kills its interpreter, one that reads a file and one that says whether `x` is defined.
struct Programs {
    language: Language,
    define: &'static str,
    increment: &'static str,
    busy: &'static str,
    kill: &'static str,
    read: &'static str,
    defined: &'static str,
}

const PROGRAMS: [Programs; 4] = [
    Programs {
        language: Language::Python,
        define: "x = 41\n",
        increment: "x += 1\nprint(x)\n",
        busy: "print('busy', flush=True)\nwhile True:\n    pass\n",
        kill: "import os\nprint('bye', flush=True)\nos._exit(3)\n",
        read: "print(open('in/data.txt').read())\n",
        defined: "print('x' in globals())\n",
    },
    Programs {
        language: Language::Node,
        define: "var x = 41\n",
        increment: "x += 1\nconsole.log(x)\n",
        busy: "console.log('busy')\nwhile (true) {}\n",
        kill: "console.log('bye')\nprocess.reallyExit(3)\n",
        read: "console.log(require('fs').readFileSync('in/data.txt', 'utf8'))\n",
        defined: "console.log(typeof x !== 'undefined')\n",
    },
    Programs {
        language: Language::Ruby,
        define: "x = 41\n",
        increment: "x += 1\nputs x\n",
        busy: "puts 'busy'\n$stdout.flush\nloop {}\n",
        kill: "puts 'bye'\n$stdout.flush\nexit!(3)\n",
        read: "puts File.read('in/data.txt')\n",
        defined: "puts binding.local_variable_defined?(:x)\n",
    },
    Programs {
        language: Language::Php,
        define: "<?php\n$x = 41;\n",
        increment: "<?php\n$x += 1;\necho $x, \"\\n\";\n",
        busy: "<?php\necho \"busy\\n\";\nwhile (true) {}\n",
        // A fatal error PHP cannot catch: the interpreter ends.
        kill: "<?php\necho \"bye\\n\";\nini_set('memory_limit', '16M');\n$a = str_repeat('x', 64 << 20);\n",
        read: "<?php\necho file_get_contents('in/data.txt'), \"\\n\";\n",
        defined: "<?php\necho isset($x) ? 'true' : 'false', \"\\n\";\n",
    },
];

fn expected_true(language: Language) -> &'static str {
    match language {
        Language::Python => "True\n",
        _ => "true\n",
    }
}

fn expected_false(language: Language) -> &'static str {
    match language {
        Language::Python => "False\n",
        _ => "false\n",
    }
}

#[test]
fn state_is_kept_between_runs_in_every_language() {
    let mut container = Container::start();
    for p in &PROGRAMS {
        let defined = container.run(p.language, p.define);
        assert_eq!(
            defined.exit.exit_code,
            Some(0),
            "{:?}: {}",
            p.language,
            defined.stderr()
        );
        let ran = container.run(p.language, p.increment);
        assert_eq!(ran.stdout(), "42\n", "{:?}: {}", p.language, ran.stderr());
        assert!(ran.exit.kernel && !ran.exit.interpreter_lost);
        assert!(ran.record.artifacts.is_empty() && ran.record.removed.is_empty());
    }
}

#[test]
fn a_file_put_into_the_container_is_read_by_programs_in_every_language() {
    let mut container = Container::start();
    assert_eq!(container.put("in/data.txt", b"a,b\n1,2"), None);
    assert_eq!(
        std::fs::read(container.data().join("in/data.txt")).unwrap(),
        b"a,b\n1,2"
    );
    for p in &PROGRAMS {
        let ran = container.run(p.language, p.read);
        assert_eq!(
            ran.stdout(),
            "a,b\n1,2\n",
            "{:?}: {}",
            p.language,
            ran.stderr()
        );
    }
}

#[test]
fn files_a_run_creates_or_changes_are_its_output_files_and_untouched_ones_are_not() {
    let mut container = Container::start();
    assert_eq!(container.put("kept.txt", b"kept"), None);
    assert_eq!(container.put("changed.txt", b"old"), None);
    let ran = container.run(
        Language::Python,
        "import os\nos.makedirs('out', exist_ok=True)\nopen('out/result.bin', 'wb').write(bytes(range(256)) * 100)\n\
         open('changed.txt', 'w').write('new')\nos.symlink('/etc/passwd', 'link')\n",
    );
    assert_eq!(ran.exit.exit_code, Some(0), "{}", ran.stderr());
    let expected: Vec<u8> = (0..=255u8).cycle().take(25_600).collect();
    assert_eq!(ran.file("out/result.bin"), Some(&expected[..]));
    assert_eq!(ran.file("changed.txt"), Some(&b"new"[..]));
    assert_eq!(ran.file("kept.txt"), None);
    let names: Vec<&str> = ran
        .record
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["changed.txt", "out/result.bin"]);
    assert_eq!(ran.record.skipped.len(), 1, "{:?}", ran.record.skipped);
    assert_eq!(ran.record.skipped[0].name, "link");
    // The next run changed nothing: it has no files.
    let again = container.run(
        Language::Python,
        "print(len(open('out/result.bin', 'rb').read()))\n",
    );
    assert_eq!(again.stdout(), "25600\n");
    assert!(again.record.artifacts.is_empty() && again.record.skipped.is_empty());
}

#[test]
fn a_file_a_run_removes_is_reported_as_removed() {
    let mut container = Container::start();
    assert_eq!(container.put("old/a.txt", b"a"), None);
    let ran = container.run(Language::Ruby, "File.delete('old/a.txt')\n");
    assert_eq!(ran.exit.exit_code, Some(0), "{}", ran.stderr());
    assert_eq!(ran.record.removed, ["old/a.txt"]);
    assert!(ran.record.artifacts.is_empty());
    assert!(!container.data().join("old/a.txt").exists());
}

#[test]
fn a_timeout_interrupts_the_program_and_the_state_before_it_survives() {
    let mut container = Container::start();
    for p in &PROGRAMS {
        container.run(p.language, p.define);
        let busy = job(
            p.language,
            p.busy,
            EffectiveLimits {
                timeout_ms: 500,
                ..limits()
            },
        );
        let ran = container.run_job(&busy, p.busy.as_bytes());
        assert!(ran.exit.timed_out, "{:?}: {:?}", p.language, ran.exit);
        assert!(
            !ran.exit.interpreter_lost,
            "{:?}: {:?}",
            p.language, ran.exit
        );
        assert_eq!(ran.exit.exit_code, Some(130), "{:?}", p.language);
        assert!(ran.stdout().starts_with("busy"), "{:?}", p.language);
        assert!(
            (500..2500).contains(&ran.exit.wall_ms),
            "{:?}: {:?}",
            p.language,
            ran.exit
        );
        let after = container.run(p.language, p.increment);
        assert_eq!(
            after.stdout(),
            "42\n",
            "{:?}: {}",
            p.language,
            after.stderr()
        );
    }
}

#[test]
fn a_lost_interpreter_is_reported_and_the_next_run_starts_fresh_with_the_files_kept() {
    let mut container = Container::start();
    assert_eq!(container.put("in/data.txt", b"still here"), None);
    for p in &PROGRAMS {
        container.run(p.language, p.define);
        let before = container.run(p.language, p.defined);
        assert_eq!(
            before.stdout(),
            expected_true(p.language),
            "{:?}",
            p.language
        );
        let ran = container.run(p.language, p.kill);
        assert!(
            ran.exit.interpreter_lost,
            "{:?}: {:?}",
            p.language, ran.exit
        );
        let error = ran.exit.error.clone().unwrap_or_default();
        assert!(error.contains("state is lost"), "{:?}: {error}", p.language);
        assert!(
            ran.stdout().starts_with("bye"),
            "{:?}: {}",
            p.language,
            ran.stdout()
        );
        let fresh = container.run(p.language, p.defined);
        assert_eq!(
            fresh.stdout(),
            expected_false(p.language),
            "{:?}",
            p.language
        );
        assert!(!fresh.exit.interpreter_lost);
        let read = container.run(p.language, p.read);
        assert_eq!(read.stdout(), "still here\n", "{:?}", p.language);
    }
}

#[test]
fn an_interrupt_ends_the_running_program_as_cancelled_and_keeps_the_state() {
    let mut container = Container::start();
    container.run(Language::Python, "x = 41\n");
    let code = "import time\nprint('sleeping', flush=True)\ntime.sleep(30)\n";
    let id = container.send_run(&job(Language::Python, code, limits()), code.as_bytes());
    assert_eq!(container.frame(), Frame::Run { id: id.clone() });
    assert!(matches!(container.frame(), Frame::Start { .. }));
    assert!(matches!(container.frame(), Frame::Stdout { .. }));
    container.send(&Op::Interrupt { id: id.clone() }.line());
    let mut rest = Decoder::new(&limits());
    rest.push(&encode_frame(&Frame::Start {
        v: PROTOCOL_VERSION,
    }))
    .unwrap();
    loop {
        let frame = container.frame();
        rest.push(&encode_frame(&frame)).unwrap();
        if frame == Frame::End {
            break;
        }
    }
    let exit = rest.finish().unwrap().exit.unwrap();
    assert!(
        exit.cancelled && !exit.timed_out && !exit.interpreter_lost,
        "{exit:?}"
    );
    assert!(exit.wall_ms < 5000, "{exit:?}");
    // An interrupt for a run that is over is answered, and harms nothing.
    container.send(&Op::Interrupt { id: id.clone() }.line());
    assert!(container.ack(&id).is_some());
    let ran = container.run(Language::Python, "x += 1\nprint(x)\n");
    assert_eq!(ran.stdout(), "42\n");
}

#[test]
fn a_sync_in_the_middle_of_a_run_sends_its_record_again_from_the_beginning() {
    let mut container = Container::start();
    let code = "import time\nprint('one', flush=True)\ntime.sleep(1)\nprint('two')\n\
                open('made.txt', 'w').write('made')\n";
    let id = container.send_run(&job(Language::Python, code, limits()), code.as_bytes());
    assert_eq!(container.frame(), Frame::Run { id: id.clone() });
    assert!(matches!(container.frame(), Frame::Start { .. }));
    assert!(matches!(container.frame(), Frame::Stdout { .. }));
    // A new leader attaches: a newline first ends whatever line its predecessor left.
    container.send(b"{\"op\":\"put\",\"id\":\"half");
    container.sync("n1");
    assert_eq!(
        container.frame(),
        Frame::Sync {
            nonce: "n1".into(),
            busy: Some(id.clone())
        }
    );
    assert_eq!(container.frame(), Frame::Run { id });
    let ran = container.record(&limits());
    assert_eq!(ran.stdout(), "one\ntwo\n");
    assert_eq!(ran.file("made.txt"), Some(&b"made"[..]));
    // Idle: a sync says nothing is in progress.
    container.sync("n2");
    assert_eq!(
        container.frame(),
        Frame::Sync {
            nonce: "n2".into(),
            busy: None
        }
    );
}

#[test]
fn a_run_handed_over_again_after_it_ended_is_refused_not_run_twice() {
    let mut container = Container::start();
    let code = "n = globals().get('n', 0) + 1\nprint(n)\n";
    let job = job(Language::Python, code, limits());
    let id = container.send_run(&job, code.as_bytes());
    assert_eq!(container.frame(), Frame::Run { id: id.clone() });
    assert_eq!(container.record(&limits()).stdout(), "1\n");
    // A new leader that never read that run's end hands it over again.
    container.sync("n1");
    assert!(matches!(container.frame(), Frame::Sync { busy: None, .. }));
    container.send(
        &Op::Run {
            id: id.clone(),
            job: job.clone(),
        }
        .line(),
    );
    for line in data_lines(code.as_bytes()) {
        container.send(&line);
    }
    assert_eq!(container.frame(), Frame::Run { id });
    let again = container.record(&limits());
    assert!(again.exit.already_ran, "{:?}", again.exit);
    assert_eq!(again.stdout(), "");
    // It did not run: the next run is the second.
    assert_eq!(container.run(Language::Python, code).stdout(), "2\n");
}

#[test]
fn a_sync_while_a_runs_files_are_sent_sends_them_again_from_the_first() {
    let mut container = Container::start();
    let big = EffectiveLimits {
        max_artifact_bytes: 8 << 20,
        max_artifact_total_bytes: 16 << 20,
        ..limits()
    };
    let code = "for name in ['a', 'b']:\n    open(name, 'wb').write(bytes(4 << 20))\n";
    let id = container.send_run(&job(Language::Python, code, big.clone()), code.as_bytes());
    assert_eq!(container.frame(), Frame::Run { id: id.clone() });
    while !matches!(container.frame(), Frame::File { .. }) {}
    // The container is sending the first file (4 MiB, far more than the pipe holds, and this
    // reader has stopped reading) when a new reader attaches.
    container.sync("n1");
    let mut data_frames = 0;
    loop {
        match container.frame() {
            Frame::Data { .. } => data_frames += 1,
            Frame::Sync { nonce, busy } => {
                assert_eq!((nonce.as_str(), busy), ("n1", Some(id.clone())));
                break;
            }
            other => panic!("{other:?} before the sync's answer"),
        }
    }
    assert!(
        data_frames < 512,
        "the first file was sent whole before the sync"
    );
    assert_eq!(container.frame(), Frame::Run { id });
    let ran = container.record(&big);
    let names: Vec<&str> = ran
        .record
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(ran.file("a").unwrap() == vec![0u8; 4 << 20]);
}

#[test]
fn a_sync_in_the_middle_of_a_puts_data_discards_it() {
    let mut container = Container::start();
    let op = Op::Put {
        id: "put-cut".into(),
        path: "partial.txt".into(),
        bytes: 100,
    };
    container.send(&op.line());
    container.send(&data_lines(&[b'x'; 50]).next().unwrap());
    container.sync("n1");
    assert_eq!(
        container.frame(),
        Frame::Sync {
            nonce: "n1".into(),
            busy: None
        }
    );
    // The rest of its data, sent by the dead writer's buffers, is dropped too.
    container.send(&data_lines(&[b'x'; 50]).next().unwrap());
    assert_eq!(container.put("whole.txt", b"whole"), None);
    let names: Vec<String> = std::fs::read_dir(container.data())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["whole.txt"]);
}

#[test]
fn paths_that_leave_the_data_folder_are_refused() {
    let mut container = Container::start();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), container.data().join("link")).unwrap();
    for path in ["../x", "/etc/x", "a/../../x", "link/x", "a//x", ""] {
        let error = container.put(path, b"x");
        assert!(error.is_some(), "{path:?} was accepted");
        assert!(container.delete(path).is_some(), "{path:?} was deleted");
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    let code = "print(1)\n";
    let mut escaping = job(Language::Python, code, limits());
    escaping.files.push(InputFile {
        name: "../x".into(),
        bytes: 1,
    });
    let mut payload = code.as_bytes().to_vec();
    payload.push(b'x');
    let id = container.send_run(&escaping, &payload);
    assert_eq!(container.frame(), Frame::Run { id });
    let refused = container.record(&limits());
    let error = refused.exit.error.unwrap_or_default();
    assert!(error.contains("../x"), "{error}");
    assert!(refused.record.stdout.is_empty() && !refused.exit.no_job);
    // Its data is dropped, and the container goes on.
    assert_eq!(container.run(Language::Python, code).stdout(), "1\n");
}

#[test]
fn a_malformed_line_is_answered_when_it_names_an_operation_and_never_stops_the_container() {
    let mut container = Container::start();
    container.send(b"this is not json\n");
    container.send(b"{\"op\":\"explode\",\"id\":\"x-1\"}\n");
    assert!(container.ack("x-1").unwrap().contains("explode"));
    container.send(b"{\"op\":\"put\",\"id\":\"p-1\",\"path\":\"a\"}\n");
    assert!(container.ack("p-1").is_some());
    container.send(b"{\"d\":\"not base64!\"}\n");
    assert_eq!(container.put("ok.txt", b"ok"), None);
    assert_eq!(
        container.delete("missing.txt").unwrap(),
        "no such file: \"missing.txt\""
    );
    assert_eq!(container.run(Language::Php, "<?php echo 7;").stdout(), "7");
}

#[test]
fn output_a_thread_writes_between_runs_reaches_no_record() {
    let mut container = Container::start();
    let ran = container.run(
        Language::Python,
        "import threading, time, sys\n\
         def late():\n    time.sleep(0.2)\n    sys.stdout.write('late\\n' * 100000)\n    sys.stdout.flush()\n\
         threading.Thread(target=late, daemon=True).start()\nprint('first')\n",
    );
    assert_eq!(ran.stdout(), "first\n");
    std::thread::sleep(Duration::from_millis(1500));
    let next = container.run(Language::Python, "print('second')\n");
    assert_eq!(next.stdout(), "second\n");
}

#[test]
fn stdin_reaches_each_run_from_its_start() {
    let mut container = Container::start();
    for (language, code) in [
        (
            Language::Python,
            "import sys\nprint(sys.stdin.read().upper())\n",
        ),
        (Language::Ruby, "puts $stdin.read.upcase\n"),
        (
            Language::Php,
            "<?php echo strtoupper(stream_get_contents(STDIN)), \"\\n\";",
        ),
    ] {
        for text in ["first", "second"] {
            let mut with_stdin = job(language, code, limits());
            with_stdin.stdin_bytes = Some(text.len() as u64);
            let payload = [code.as_bytes(), text.as_bytes()].concat();
            let ran = container.run_job(&with_stdin, &payload);
            assert_eq!(
                ran.stdout(),
                format!("{}\n", text.to_uppercase()),
                "{language:?}"
            );
        }
    }
}

#[test]
fn the_end_of_stdin_stops_the_interpreters_and_the_wrapper_exits_0() {
    let mut container = Container::start();
    let ran = container.run(Language::Python, "import os\nprint(os.getpid())\n");
    let pid: i32 = ran.stdout().trim().parse().unwrap();
    container.run(Language::Node, "console.log(1)\n");
    let status = container.close();
    assert!(status.success(), "{status:?}");
    assert!(is_gone(pid));
}

/// Prints the time from a run's line to its end frame in a live Python container (`cargo test
/// --release -p ci-runner --test container -- --ignored --nocapture`).
#[test]
#[ignore]
fn measure_a_run_in_a_live_python_container() {
    let mut container = Container::start();
    container.run(Language::Python, "x = 0\n");
    let code = "x += 1; print(x)\n";
    let mut times: Vec<Duration> = (0..50)
        .map(|_| {
            let started = Instant::now();
            let ran = container.run(Language::Python, code);
            let took = started.elapsed();
            assert_eq!(ran.exit.exit_code, Some(0));
            took
        })
        .collect();
    times.sort();
    println!(
        "x += 1; print(x) in a live Python container, run line to end frame, 50 runs: \
         median {:?}, min {:?}, max {:?}",
        times[25], times[0], times[49]
    );
}
