//! One-shot kernels through the wrapper binary: a program cannot tell a kernel started before
//! its job (`CI_RUNNER_KERNEL`) from a fresh interpreter, in all four languages, and the limits
//! count from the hand-over. The host's interpreters stand in for the images' (python3, node,
//! ruby, php; `hack/test-deps.sh` installs ruby and php), with standard modules preloaded.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Finished, Fixture, is_gone, kernels_dir, program, python, read_pid};
use runner_protocol::Language;

/// A program, and what it is given.
struct Case {
    name: &'static str,
    code: &'static str,
    stdin: Option<&'static str>,
    args: &'static [&'static str],
}

const fn case(name: &'static str, code: &'static str) -> Case {
    Case {
        name,
        code,
        stdin: None,
        args: &[],
    }
}

const ARGS: &[&str] = &["a b", "", "--flag=ü"];

fn fixture(language: Language, case: &Case) -> Fixture {
    let mut fixture = program(language, case.code).args(case.args);
    if let Some(stdin) = case.stdin {
        fixture = fixture.stdin(stdin);
    }
    fixture
}

/// What the program showed of itself, with the run's own temporary folder made the same.
fn seen(run: &Finished) -> (String, String, Option<i32>, Option<i32>) {
    let dir = run.dir.path().to_str().unwrap();
    // Also as JSON escapes it (PHP's json_encode).
    let escaped = dir.replace('/', "\\/");
    let same = |text: String| text.replace(dir, "<dir>").replace(&escaped, "<dir>");
    (
        same(run.stdout()),
        same(run.stderr()),
        run.exit.exit_code,
        run.exit.signal,
    )
}

/// Runs every case on a fresh interpreter and on a kernel with `preload`, and asserts that the
/// program saw and did exactly the same.
fn assert_same_as_fresh(language: Language, preload: &[&str], cases: &[Case]) {
    for case in cases {
        let fresh = fixture(language, case).run();
        let warm = fixture(language, case).kernel(preload).run();
        assert!(!fresh.exit.kernel, "{}: {:?}", case.name, fresh.exit);
        assert!(
            warm.exit.kernel,
            "{}: the kernel was not used: {}",
            case.name, warm.diagnostics
        );
        assert_eq!(
            seen(&warm),
            seen(&fresh),
            "{} {}: kernel (left) and fresh (right) differ",
            language.as_str(),
            case.name
        );
    }
}

#[test]
fn python_programs_cannot_tell_a_kernel_from_a_fresh_interpreter() {
    let cases = [
        Case {
            args: ARGS,
            ..case(
                "name and argv",
                "import sys\nprint(__name__, sys.argv, sys.orig_argv, sys.path[0], sys.flags.unbuffered)\n",
            )
        },
        case(
            "uncaught exception",
            "def f():\n    raise ValueError('boom')\n\nprint('before')\nf()\n",
        ),
        case("sys.exit(3)", "import sys\nprint('before')\nsys.exit(3)\n"),
        case("exit without a code", "print('x')\nexit()\n"),
        case(
            "atexit",
            "import atexit\natexit.register(lambda: print('bye'))\nprint('hi')\n",
        ),
        Case {
            stdin: Some("line 1\nline 2"),
            ..case("stdin", "import sys\nprint(repr(sys.stdin.read()))\n")
        },
        case(
            "no stdin",
            "import os, sys\nprint(repr(sys.stdin.read()), os.readlink('/proc/self/fd/0'))\n",
        ),
        case("globals", "import sys\nprint(sorted(globals()))\n"),
        case(
            "cwd, environment, descriptors, job folder",
            "import os, sys\nprint(os.getcwd(), sorted(os.environ.items()), \
             sorted(os.listdir('/proc/self/fd')), sorted(os.listdir(os.path.dirname(__file__))))\n\
             print('sitecustomize' in sys.modules, sys.modules.get('sitecustomize'))\n",
        ),
    ];
    assert_same_as_fresh(Language::Python, &["json", "decimal"], &cases);
}

#[test]
fn node_programs_cannot_tell_a_kernel_from_a_fresh_interpreter() {
    let cases = [
        Case {
            args: ARGS,
            ..case(
                "name and argv",
                "console.log(require.main === module, process.argv, process.execArgv, __filename)\n",
            )
        },
        case(
            "uncaught exception",
            "function f() {\n  throw new Error('boom')\n}\nconsole.log('before')\nf()\n",
        ),
        case(
            "process.exit(3)",
            "console.log('before')\nprocess.exit(3)\n",
        ),
        case("exit without a code", "console.log('x')\nprocess.exit()\n"),
        case(
            "exit listener",
            "process.on('exit', (code) => console.log('bye', code))\nconsole.log('hi')\n",
        ),
        Case {
            stdin: Some("line 1\nline 2"),
            ..case(
                "stdin",
                "console.log(JSON.stringify(require('fs').readFileSync(0, 'utf8')))\n",
            )
        },
        case(
            "no stdin",
            "console.log(JSON.stringify(require('fs').readFileSync(0, 'utf8')))\n",
        ),
        case(
            "globals",
            "console.log(Object.getOwnPropertyNames(globalThis).sort().join(), \
             Object.keys(require.cache))\n",
        ),
        case(
            "cwd, environment, descriptors, job folder",
            "const fs = require('fs')\nconsole.log(process.cwd(), JSON.stringify(process.env), \
             fs.readdirSync('/proc/self/fd').length, fs.readdirSync(__dirname))\n",
        ),
    ];
    assert_same_as_fresh(Language::Node, &["util", "path"], &cases);
}

#[test]
fn ruby_programs_cannot_tell_a_kernel_from_a_fresh_interpreter() {
    let cases = [
        Case {
            args: ARGS,
            ..case(
                "name and argv",
                "p [__FILE__ == $0, $0, __FILE__, ARGV, $PROGRAM_NAME, __dir__]\n",
            )
        },
        case(
            "uncaught exception",
            "def f\n  raise ArgumentError, 'boom'\nend\nputs 'before'\nf\n",
        ),
        case(
            "uncaught NameError (error_highlight)",
            "x = 1\nputs x\nfoo\n",
        ),
        case("syntax error", "puts 'never'\nx = (1\n"),
        case("exit 3", "puts 'before'\nexit 3\n"),
        case("exit without a code", "puts 'x'\nexit\n"),
        case("at_exit", "at_exit { puts 'bye' }\nputs 'hi'\n"),
        Case {
            stdin: Some("line 1\nline 2"),
            ..case("stdin", "p STDIN.read\n")
        },
        case(
            "no stdin",
            "p STDIN.read, STDIN.inspect, File.readlink('/proc/self/fd/0')\n",
        ),
        case(
            "globals",
            "p local_variables, instance_variables, global_variables.sort, self, defined?(DATA)\n\
             y = 2\n",
        ),
        case("DATA", "puts DATA.read\n__END__\nafter the end\n"),
        case(
            "cwd, environment, descriptors, job folder",
            "p Dir.pwd, ENV.to_h, Dir.children('/proc/self/fd').size, \
             Dir.children(__dir__).sort\n",
        ),
    ];
    assert_same_as_fresh(Language::Ruby, &["json", "set"], &cases);
}

#[test]
fn php_programs_cannot_tell_a_kernel_from_a_fresh_interpreter() {
    let cases = [
        Case {
            args: ARGS,
            ..case(
                "name and argv",
                "<?php\necho json_encode([__FILE__, $argv, $argc, $_SERVER['argv'], \
                 $_SERVER['argc'], $_SERVER['SCRIPT_FILENAME'], PHP_SAPI]), \"\\n\";\n",
            )
        },
        case(
            "uncaught exception",
            "<?php\nfunction f() {\n    throw new RuntimeException('boom');\n}\necho \"before\\n\";\nf();\n",
        ),
        case("exit(3)", "<?php\necho \"before\\n\";\nexit(3);\n"),
        case("exit without a code", "<?php\necho \"x\\n\";\nexit;\n"),
        case(
            "shutdown function",
            "<?php\nregister_shutdown_function(function () { echo \"bye\\n\"; });\necho \"hi\\n\";\n",
        ),
        Case {
            stdin: Some("line 1\nline 2"),
            ..case("stdin", "<?php\nvar_dump(stream_get_contents(STDIN));\n")
        },
        case(
            "no stdin",
            "<?php\nvar_dump(stream_get_contents(STDIN), readlink('/proc/self/fd/0'));\n",
        ),
        case(
            "globals",
            "<?php\necho json_encode([array_keys($GLOBALS), get_defined_functions()['user'], \
             count(get_declared_classes()), array_keys(get_defined_constants(true)['user'] ?? []), \
             array_keys($_SERVER)]), \"\\n\";\n",
        ),
        case(
            "cwd, environment, job folder",
            "<?php\necho json_encode([getcwd(), getenv(), array_values(array_diff(scandir(__DIR__), \
             ['.', '..']))]), \"\\n\";\n",
        ),
    ];
    assert_same_as_fresh(Language::Php, &[], &cases);
}

/// A copy of the Python driver with `modules` (name, source) beside it on its path.
fn python_kernels_with(modules: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python");
    std::fs::create_dir(&python).unwrap();
    std::fs::copy(
        kernels_dir().join("python/sitecustomize.py"),
        python.join("sitecustomize.py"),
    )
    .unwrap();
    for (name, source) in modules {
        std::fs::write(python.join(format!("{name}.py")), source).unwrap();
    }
    dir
}

/// A preload that burns about a second of CPU.
const BURN_A_SECOND: &str =
    "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end:\n    pass\n";

#[test]
fn cpu_ms_counts_the_program_not_the_preload() {
    let kernels = python_kernels_with(&[("burn", BURN_A_SECOND)]);
    let run = python(
        "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end:\n    pass\n",
    )
    .kernel_from(kernels.path(), &["burn"])
    .run();
    assert!(run.exit.kernel, "{}", run.diagnostics);
    assert_eq!(run.exit.exit_code, Some(0));
    assert!(
        (160..=240).contains(&run.exit.cpu_ms),
        "cpu_ms {} for a 200 ms loop after a 1 s preload",
        run.exit.cpu_ms
    );
}

#[test]
fn the_timeout_counts_from_the_hand_over_not_from_the_kernels_start() {
    let kernels = python_kernels_with(&[("burn", BURN_A_SECOND)]);
    // The job arrives at once and waits about a second for the preload: with the clock running
    // from the job, 0.5 s of sleep would be over the 0.8 s timeout.
    let run = python("import time\ntime.sleep(0.5)\nprint('done')\n")
        .limits(|l| l.timeout_ms = 800)
        .kernel_from(kernels.path(), &["burn"])
        .run();
    assert!(run.exit.kernel, "{}", run.diagnostics);
    assert!(
        run.elapsed > Duration::from_millis(1300),
        "{:?}",
        run.elapsed
    );
    assert!(!run.exit.timed_out, "{:?}", run.exit);
    assert_eq!(run.stdout(), "done\n");
    assert!(
        (500..800).contains(&run.exit.wall_ms),
        "{}",
        run.exit.wall_ms
    );

    let run = python("import time\ntime.sleep(30)\n")
        .limits(|l| l.timeout_ms = 800)
        .kernel_from(kernels.path(), &["burn"])
        .run();
    assert!(run.exit.kernel && run.exit.timed_out, "{:?}", run.exit);
    assert!(
        (800..2000).contains(&run.exit.wall_ms),
        "{}",
        run.exit.wall_ms
    );
}

/// A module (or file) that writes to both streams when it is loaded, more than a pipe holds.
fn noisy(language: Language) -> String {
    match language {
        Language::Python => {
            "import sys\nsys.stdout.write('preload ' * 40000)\nprint('preload', file=sys.stderr)\n"
        }
        Language::Node => {
            "process.stdout.write('preload '.repeat(40000))\nconsole.error('preload')\n"
        }
        Language::Ruby => "$stdout.write('preload ' * 40000)\n$stderr.puts 'preload'\n",
        Language::Php => {
            "<?php\necho str_repeat('preload ', 40000);\nfwrite(STDERR, \"preload\\n\");\n"
        }
    }
    .to_string()
}

#[test]
fn what_a_preload_prints_never_reaches_the_record() {
    let program_code = [
        (Language::Python, "print('program')\n"),
        (Language::Node, "console.log('program')\n"),
        (Language::Ruby, "puts 'program'\n"),
        (Language::Php, "<?php\necho \"program\\n\";\n"),
    ];
    for (language, code) in program_code {
        let kernels = python_kernels_with(&[("noisy", &noisy(Language::Python))]);
        let files = tempfile::tempdir().unwrap();
        let preload: PathBuf = files.path().join(format!("noisy.{}", extension(language)));
        std::fs::write(&preload, noisy(language)).unwrap();
        let fixture = program(language, code);
        let run = match language {
            Language::Python => fixture.kernel_from(kernels.path(), &["noisy"]),
            _ => fixture.kernel(&[preload.to_str().unwrap()]),
        }
        .run();
        assert!(run.exit.kernel, "{language:?}: {}", run.diagnostics);
        assert_eq!(run.stdout(), "program\n", "{language:?}");
        assert_eq!(run.stderr(), "", "{language:?}");
    }
}

fn extension(language: Language) -> &'static str {
    Path::new(language.source_file())
        .extension()
        .and_then(|e| e.to_str())
        .unwrap()
}

#[test]
fn a_kernel_that_cannot_take_the_job_gives_way_to_a_fresh_interpreter() {
    // No driver: `python3 -u /job/main.py` runs the empty placeholder and exits before ready.
    let empty = tempfile::tempdir().unwrap();
    let run = python("print('ran')\n")
        .kernel_from(empty.path(), &[])
        .run();
    assert!(!run.exit.kernel);
    assert_eq!(run.stdout(), "ran\n");
    assert!(
        run.diagnostics.contains("starting a fresh interpreter"),
        "{}",
        run.diagnostics
    );

    // A kernel of another language.
    let run = python("import os\nprint(sorted(os.listdir(os.path.dirname(__file__))))\n")
        .kernel(&[])
        .env("CI_RUNNER_KERNEL", "node")
        .run();
    assert!(!run.exit.kernel);
    assert_eq!(run.stdout(), "['main.py']\n");
    assert!(
        run.diagnostics
            .contains("the job is python but the kernel node")
    );
}

#[test]
fn a_kernel_program_is_held_to_the_limits_as_a_fresh_one() {
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
    .kernel(&[])
    .run();
    assert!(run.exit.kernel && run.exit.timed_out, "{:?}", run.exit);
    assert_eq!(run.exit.signal, Some(9));
    let daemon = read_pid(&run.work().join("daemon.pid"));
    assert!(is_gone(daemon), "daemon {daemon} survived");

    let run = python("import sys\nsys.stdout.write('x' * 100000)\n")
        .limits(|l| l.max_output_bytes = 1000)
        .kernel(&[])
        .run();
    assert!(run.exit.kernel && run.exit.stdout_truncated);
    assert_eq!(run.record.stdout.len(), 1000);
    assert_eq!(run.exit.stdout_bytes, 100000);

    let run = python("while True:\n    pass\n")
        .limits(|l| l.cpu_ms = 500)
        .kernel(&[])
        .run();
    assert!(
        run.exit.kernel && run.exit.cpu_limit_exceeded,
        "{:?}",
        run.exit
    );
    assert!(
        (500..1500).contains(&run.exit.cpu_ms),
        "{}",
        run.exit.cpu_ms
    );
}
