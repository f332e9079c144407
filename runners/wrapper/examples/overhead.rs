//! The wrapper's overhead: the same `python3 -u main.py` (whose source is `pass`) run N times
//! bare and N times through `ci-runner`, alternating, on the same job folder. Prints the
//! median of each and the difference.
//!
//! ```text
//! cargo build --release -p ci-runner --bin ci-runner --example overhead
//! $CARGO_TARGET_DIR/release/examples/overhead [N]
//! ```
//! The wrapper is looked for next to the examples folder, or at `CI_RUNNER_BIN`.
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use runner_protocol::{Job, JobLimits, Language};

const PROGRAM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn main() -> ExitCode {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let wrapper = match std::env::var_os("CI_RUNNER_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("own path");
            exe.parent()
                .and_then(|examples| examples.parent())
                .expect("target folder")
                .join("ci-runner")
        }
    };
    if !wrapper.is_file() {
        eprintln!(
            "overhead: no wrapper at {}; build it with `cargo build --release -p ci-runner` or set CI_RUNNER_BIN",
            wrapper.display()
        );
        return ExitCode::FAILURE;
    }

    let dir = tempfile::tempdir().expect("temporary folder");
    let (job_dir, work_dir) = (dir.path().join("job"), dir.path().join("work"));
    std::fs::create_dir(&job_dir).unwrap();
    std::fs::create_dir(&work_dir).unwrap();
    std::fs::write(job_dir.join("main.py"), "pass\n").unwrap();
    let job = Job {
        language: Language::Python,
        source_key: "main.py".into(),
        stdin_key: None,
        args: Vec::new(),
        files: Vec::new(),
        limits: JobLimits {
            timeout_ms: 30_000,
            cpu_ms: 30_000,
            max_output_bytes: 1 << 20,
            max_artifacts: 10,
            max_artifact_bytes: 1 << 20,
            max_artifact_total_bytes: 1 << 20,
            max_file_bytes: 1 << 20,
            max_open_files: 256,
            max_processes: 256,
        },
    };
    std::fs::write(job_dir.join("job.json"), serde_json::to_vec(&job).unwrap()).unwrap();

    let source = job_dir.join("main.py");
    let bare = || {
        // The interpreter the wrapper finds, with as bare an environment.
        let mut command = Command::new("python3");
        command
            .arg("-u")
            .arg(&source)
            .current_dir(&work_dir)
            .env_clear()
            .env("PATH", PROGRAM_PATH);
        command
    };
    let wrapped = || {
        let mut command = Command::new(&wrapper);
        command
            .env("CI_RUNNER_JOB_DIR", &job_dir)
            .env("CI_RUNNER_WORK_DIR", &work_dir);
        command
    };
    let time = |mut command: Command| {
        let started = Instant::now();
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runs");
        assert!(status.success(), "{command:?} failed: {status}");
        started.elapsed()
    };

    // Warm the page cache and the interpreter's imports first.
    for _ in 0..3 {
        time(bare());
        time(wrapped());
    }
    let (mut bare_times, mut wrapped_times) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        bare_times.push(time(bare()));
        wrapped_times.push(time(wrapped()));
    }
    let (b, w) = (median(&mut bare_times), median(&mut wrapped_times));
    println!("wrapper overhead ({runs} runs each, python3 on `pass`):");
    println!("  bare python3        median {:7.2} ms", ms(b));
    println!("  through ci-runner   median {:7.2} ms", ms(w));
    println!("  difference                 {:7.2} ms", ms(w) - ms(b));
    ExitCode::SUCCESS
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
