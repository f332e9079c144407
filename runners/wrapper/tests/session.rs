//! Session kernels through the `Kernel` API a container server uses: snippets run one after
//! another in one namespace, in all four languages (the host's interpreters).
mod common;

use std::path::PathBuf;
use std::time::Duration;

use ci_runner::kernel::{How, SnippetEnd, SnippetOutcome};
use ci_runner::{Emitter, Kernel, KernelSpec};
use common::kernels_dir;
use runner_protocol::{EffectiveLimits, Frame, Language, parse_record};
use tempfile::TempDir;

struct Session {
    kernel: Kernel,
    dir: TempDir,
    count: usize,
}

/// What a snippet printed, and how it went.
struct Ran {
    stdout: String,
    stderr: String,
    outcome: SnippetOutcome,
}

fn limits(timeout_ms: u64) -> EffectiveLimits {
    EffectiveLimits {
        timeout_ms,
        memory_mb: 512,
        cpu_ms: 20_000,
        cpu_millicores: 1000,
        max_output_bytes: 1 << 20,
        max_artifacts: 0,
        max_artifact_bytes: 0,
        max_artifact_total_bytes: 0,
        max_processes: 256,
        disk_mb: 16,
    }
}

impl Session {
    fn start(language: Language) -> Session {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["job", "work"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let spec = KernelSpec {
            language,
            preload: Vec::new(),
            kernels_dir: kernels_dir(),
            job_dir: dir.path().join("job"),
            work_dir: dir.path().join("work"),
            program_path: "/usr/local/bin:/usr/bin:/bin".into(),
        };
        let mut kernel = Kernel::start(&spec).unwrap();
        kernel.wait_ready(Duration::from_secs(20)).unwrap();
        Session {
            kernel,
            dir,
            count: 0,
        }
    }

    fn run(&mut self, code: &str) -> Ran {
        self.run_within(code, 20_000)
    }

    fn run_within(&mut self, code: &str, timeout_ms: u64) -> Ran {
        self.count += 1;
        let ext = self
            .kernel
            .language()
            .source_file()
            .rsplit('.')
            .next()
            .unwrap();
        let path: PathBuf = self
            .dir
            .path()
            .join(format!("work/snippet{}.{ext}", self.count));
        std::fs::write(&path, code).unwrap();
        let limits = limits(timeout_ms);
        let mut emitter = Emitter::new(Vec::new());
        let outcome = self
            .kernel
            .run_snippet(&path, &limits, &mut emitter)
            .unwrap();
        emitter.frame(&Frame::End).unwrap();
        let record = parse_record(&emitter.into_inner(), &limits).unwrap();
        assert_eq!(record.exit.as_ref(), Some(&outcome.report));
        Ran {
            stdout: String::from_utf8_lossy(&record.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&record.stderr).into_owned(),
            outcome,
        }
    }
}

fn finished(ran: &Ran) -> (i32, How) {
    match &ran.outcome.end {
        SnippetEnd::Finished { status, how } => (*status, *how),
        SnippetEnd::KernelGone { why } => panic!("the kernel is gone: {why}; {}", ran.stderr),
    }
}

/// Per language: define, change, print; raise; a busy loop.
struct Snippets {
    language: Language,
    define: &'static str,
    change: &'static str,
    show: &'static str,
    raise: &'static str,
    busy: &'static str,
    /// What an uncaught exception ends a script with.
    error_status: i32,
}

const SNIPPETS: [Snippets; 4] = [
    Snippets {
        language: Language::Python,
        define: "import json\nx = 1\ndef double(v):\n    return v * 2\n",
        change: "x = double(x) + 1\n",
        show: "print(x, json.dumps([x]))\n",
        raise: "x = 100\nraise ValueError('boom')\n",
        busy: "print('busy', flush=True)\nwhile True:\n    pass\n",
        error_status: 1,
    },
    Snippets {
        language: Language::Node,
        define: "const path = require('path')\nvar x = 1\nfunction double(v) { return v * 2 }\n",
        change: "x = double(x) + 1\n",
        show: "console.log(x, path.basename('/a/b.txt'))\n",
        raise: "x = 100\nthrow new Error('boom')\n",
        busy: "console.log('busy')\nwhile (true) {}\n",
        error_status: 1,
    },
    Snippets {
        language: Language::Ruby,
        define: "require 'json'\nx = 1\ndef double(v) = v * 2\n",
        change: "x = double(x) + 1\n",
        show: "puts [x].to_json\n",
        raise: "x = 100\nraise ArgumentError, 'boom'\n",
        busy: "puts 'busy'\n$stdout.flush\nloop {}\n",
        error_status: 1,
    },
    Snippets {
        language: Language::Php,
        define: "<?php\n$x = 1;\nfunction double($v) { return $v * 2; }\nclass Box { public $v = 7; }\n",
        change: "<?php\n$x = double($x) + 1;\n",
        show: "<?php\necho $x, ' ', (new Box)->v, \"\\n\";\n",
        raise: "<?php\n$x = 100;\nthrow new RuntimeException('boom');\n",
        busy: "<?php\necho \"busy\\n\";\nwhile (true) {}\n",
        error_status: 255,
    },
];

fn expected_show(language: Language, x: i32) -> String {
    match language {
        Language::Python => format!("{x} [{x}]\n"),
        Language::Node => format!("{x} b.txt\n"),
        Language::Ruby => format!("[{x}]\n"),
        Language::Php => format!("{x} 7\n"),
    }
}

#[test]
fn state_persists_across_snippets_in_every_language() {
    for s in &SNIPPETS {
        let mut session = Session::start(s.language);
        for code in [s.define, s.change] {
            let ran = session.run(code);
            assert_eq!(
                finished(&ran),
                (0, How::Ok),
                "{:?}: {}",
                s.language,
                ran.stderr
            );
        }
        let ran = session.run(s.show);
        assert_eq!(
            finished(&ran),
            (0, How::Ok),
            "{:?}: {}",
            s.language,
            ran.stderr
        );
        assert_eq!(ran.stdout, expected_show(s.language, 3), "{:?}", s.language);
        assert!(ran.outcome.report.kernel);
    }
}

#[test]
fn an_uncaught_exception_is_printed_and_the_state_kept() {
    for s in &SNIPPETS {
        let mut session = Session::start(s.language);
        session.run(s.define);
        let ran = session.run(s.raise);
        assert_eq!(
            finished(&ran),
            (s.error_status, How::Error),
            "{:?}",
            s.language
        );
        assert_eq!(ran.outcome.report.exit_code, Some(s.error_status));
        assert!(
            ran.stderr.contains("boom"),
            "{:?}: {}",
            s.language,
            ran.stderr
        );
        assert!(
            ran.stderr.contains("snippet2"),
            "{:?}: the snippet's file is not named: {}",
            s.language,
            ran.stderr
        );
        assert!(
            !ran.stderr.contains("kernel."),
            "{:?}: a kernel frame is shown: {}",
            s.language,
            ran.stderr
        );
        // The assignment before the raise happened, as in a script; the rest is intact.
        let ran = session.run(s.show);
        assert_eq!(
            ran.stdout,
            expected_show(s.language, 100),
            "{:?}",
            s.language
        );
    }
}

#[test]
fn a_timeout_interrupts_a_busy_snippet_and_the_state_before_it_survives() {
    for s in &SNIPPETS {
        let mut session = Session::start(s.language);
        assert!(session.kernel.is_interruptible(), "{:?}", s.language);
        session.run(s.define);
        session.run(s.change);
        let ran = session.run_within(s.busy, 500);
        assert_eq!(
            finished(&ran),
            (130, How::Interrupted),
            "{:?}: {}",
            s.language,
            ran.stderr
        );
        assert!(ran.outcome.report.timed_out, "{:?}", s.language);
        assert!(
            ran.stdout.starts_with("busy"),
            "{:?}: {}",
            s.language,
            ran.stdout
        );
        let wall = ran.outcome.report.wall_ms;
        assert!((500..2500).contains(&wall), "{:?}: {wall} ms", s.language);
        let ran = session.run(s.show);
        assert_eq!(ran.stdout, expected_show(s.language, 3), "{:?}", s.language);
    }
}

#[test]
fn an_interrupter_from_another_thread_ends_the_running_snippet() {
    let mut session = Session::start(Language::Python);
    session.run("x = 41\n");
    let interrupter = session.kernel.interrupter();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        interrupter.interrupt();
    });
    let ran = session.run("import time\ntime.sleep(30)\n");
    thread.join().unwrap();
    assert_eq!(finished(&ran), (130, How::Interrupted));
    assert!(ran.outcome.report.cancelled);
    assert!(
        ran.stderr.ends_with("KeyboardInterrupt\n"),
        "{}",
        ran.stderr
    );
    assert_eq!(session.run("print(x + 1)\n").stdout, "42\n");
}

#[test]
fn a_snippet_that_swallows_the_first_interrupt_gets_a_second_before_its_kernel_is_killed() {
    let mut session = Session::start(Language::Python);
    session.run("x = 41\n");
    let ran = session.run_within(
        "import signal, time\nseen = []\n\
         def once(*_):\n    seen.append(1)\n    if len(seen) > 1:\n        raise KeyboardInterrupt\n\
         signal.signal(signal.SIGINT, once)\nwhile True:\n    time.sleep(0.01)\n",
        300,
    );
    assert_eq!(finished(&ran), (130, How::Interrupted));
    assert!(ran.outcome.report.timed_out && !ran.outcome.report.interpreter_lost);
    assert_eq!(session.run("print(x + 1, len(seen))\n").stdout, "42 2\n");
}

#[test]
fn exit_in_a_snippet_ends_the_snippet_where_the_language_allows_it() {
    let mut python = Session::start(Language::Python);
    let ran = python.run("import sys\nx = 5\nsys.exit(4)\n");
    assert_eq!(finished(&ran), (4, How::Exit));
    assert_eq!(python.run("print(x)\n").stdout, "5\n");

    let mut node = Session::start(Language::Node);
    assert_eq!(
        finished(&node.run("var x = 5\nprocess.exit(3)\n")),
        (3, How::Exit)
    );
    assert_eq!(node.run("console.log(x)\n").stdout, "5\n");

    let mut ruby = Session::start(Language::Ruby);
    assert_eq!(finished(&ruby.run("x = 5\nexit 2\n")), (2, How::Exit));
    assert_eq!(ruby.run("puts x\n").stdout, "5\n");

    // PHP's exit ends the interpreter: the outcome says the state is gone.
    let mut php = Session::start(Language::Php);
    let ran = php.run("<?php\necho \"bye\\n\";\nexit(6);\n");
    assert_eq!(ran.stdout, "bye\n");
    assert!(matches!(ran.outcome.end, SnippetEnd::KernelGone { .. }));
    assert_eq!(ran.outcome.report.exit_code, Some(6));
    assert!(ran.outcome.report.error.is_some());
}
