//! Wrapper overhead, per language: inside a pod of the runner image, the same no-op program
//! run N times by the bare interpreter and N times through `ci-runner` (alternating, after a
//! warm-up), timed by bash's `$EPOCHREALTIME` so no extra process sits in the measurement.
use std::time::Duration;

use anyhow::{Context as _, bail};
use runner_protocol::{EffectiveLimits, Job, Language, PROTOCOL_VERSION, parse_record};
use serde::Serialize;
use serde_json::json;

use crate::stats;
use crate::suite::{Env, progress};

const JOB_DIR: &str = "/tmp/job";
const WORK_DIR: &str = "/tmp/work";
const PROGRAM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Times bare and wrapped runs alternately; prints one line per run and, first, one
/// wrapped record between markers so the caller can check the wrapper really ran the program.
const SCRIPT: &str = r#"set -u
mkdir -p "$JOB_DIR" "$WORK_DIR"
printf '%s\n%s' "$JOB_HEADER" "$SOURCE" >/tmp/job-on-stdin
printf '%s' "$SOURCE" >"$JOB_DIR/$SOURCE_KEY"
cd "$WORK_DIR"
bare() { env -i $BARE_ENV $BARE_CMD </dev/null >/dev/null 2>&1; }
wrapped() { rm -rf "$WORK_DIR"/outputs; CI_RUNNER_JOB_DIR="$JOB_DIR" CI_RUNNER_WORK_DIR="$WORK_DIR" ci-runner </tmp/job-on-stdin >/dev/null 2>&1; }
bare; echo "bare-exit $?"
echo record-begin
CI_RUNNER_JOB_DIR="$JOB_DIR" CI_RUNNER_WORK_DIR="$WORK_DIR" ci-runner </tmp/job-on-stdin
echo "record-end $?"
for _ in 1 2 3; do bare; wrapped; done
for _ in $(seq "$RUNS"); do
  t0=$EPOCHREALTIME; bare; t1=$EPOCHREALTIME
  t2=$EPOCHREALTIME; wrapped; t3=$EPOCHREALTIME
  echo "bare $(( ${t1/./} - ${t0/./} ))"
  echo "wrapped $(( ${t3/./} - ${t2/./} ))"
done
"#;

#[derive(Debug, Serialize)]
pub struct LanguageOverhead {
    pub language: &'static str,
    pub runs: usize,
    pub bare_median_ms: Option<f64>,
    pub wrapped_median_ms: Option<f64>,
    pub overhead_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WrapperReport {
    pub languages: Vec<LanguageOverhead>,
    pub note: &'static str,
}

pub async fn run(env: &Env, runs: usize) -> anyhow::Result<WrapperReport> {
    let mut languages = Vec::new();
    for language in Language::ALL {
        progress(&format!("wrapper: {}", language.as_str()));
        let measured = measure(env, language, runs).await;
        let (bare, wrapped, error) = match measured {
            Ok((bare, wrapped)) => (bare, wrapped, None),
            Err(e) => (Vec::new(), Vec::new(), Some(format!("{e:#}"))),
        };
        let (b, w) = (stats::median(&bare), stats::median(&wrapped));
        languages.push(LanguageOverhead {
            language: language.as_str(),
            runs: bare.len().min(wrapped.len()),
            bare_median_ms: b,
            wrapped_median_ms: w,
            overhead_ms: b.zip(w).map(|(b, w)| w - b),
            error,
        });
    }
    Ok(WrapperReport {
        languages,
        note: "inside a plain pod of each runner image; the wrapper is not PID 1 there and writes \
               its record to /dev/null instead of the container log",
    })
}

/// A program that does nothing, in each language.
fn no_op(language: Language) -> &'static str {
    match language {
        Language::Python => "pass\n",
        Language::Node => ";\n",
        Language::Ruby => "nil\n",
        Language::Php => "<?php\n",
    }
}

/// The environment ci-runner gives the program (see its `job::launch`), for the bare runs.
fn program_env(language: Language) -> String {
    let mut env = format!("PATH={PROGRAM_PATH} HOME={WORK_DIR} LANG=C.UTF-8 TMPDIR=/tmp");
    if language == Language::Python {
        env.push_str(" MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib PYTHONDONTWRITEBYTECODE=1");
    }
    env
}

fn limits() -> EffectiveLimits {
    EffectiveLimits {
        timeout_ms: 30_000,
        memory_mb: 512,
        cpu_ms: 30_000,
        cpu_millicores: 1000,
        max_output_bytes: 1 << 20,
        max_artifacts: 10,
        max_artifact_bytes: 1 << 20,
        max_artifact_total_bytes: 1 << 20,
        max_processes: 256,
        disk_mb: 16,
    }
}

fn job(language: Language) -> Job {
    Job {
        v: PROTOCOL_VERSION,
        language,
        args: Vec::new(),
        limits: limits(),
        code_bytes: no_op(language).len() as u64,
        stdin_bytes: None,
        files: Vec::new(),
    }
}

fn manifest(name: &str, language: Language, runs: usize) -> anyhow::Result<serde_json::Value> {
    let source = format!("{JOB_DIR}/{}", language.source_file());
    let env = [
        ("JOB_DIR", JOB_DIR.to_string()),
        ("WORK_DIR", WORK_DIR.to_string()),
        ("JOB_HEADER", serde_json::to_string(&job(language))?),
        ("SOURCE", no_op(language).to_string()),
        ("SOURCE_KEY", language.source_file().to_string()),
        ("BARE_ENV", program_env(language)),
        ("BARE_CMD", language.command(&source).join(" ")),
        ("RUNS", runs.to_string()),
    ];
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"codeinterp.dev/bench": "wrapper"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": testkit::runner_image(language.as_str()),
                "imagePullPolicy": "Never",
                "command": ["bash", "-c", SCRIPT],
                "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }))
}

/// Bare and wrapped times in ms.
async fn measure(
    env: &Env,
    language: Language,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let pods = env.pods();
    let name = format!("wrapper-{}", language.as_str());
    let within = Duration::from_secs(120 + runs as u64 * 2);
    let ended = testkit::run_pod_to_end(&pods, manifest(&name, language, runs)?, within).await;
    let log = match ended {
        Ok(_) => testkit::pod_log(&pods, &name).await,
        Err(e) => Err(e),
    };
    crate::raw_pod::delete_in_background(&pods, &name);
    parse_log(&log?)
}

/// Checks the sample record and reads the timings (µs in the log) as ms.
fn parse_log(log: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    if !log.lines().any(|l| l == "bare-exit 0") {
        bail!("the bare interpreter failed: {log}");
    }
    let record: String = log
        .lines()
        .skip_while(|l| *l != "record-begin")
        .skip(1)
        .take_while(|l| !l.starts_with("record-end"))
        .map(|l| format!("{l}\n"))
        .collect();
    let rec = parse_record(record.as_bytes(), &limits())
        .map_err(|e| anyhow::anyhow!("the wrapper's record is invalid: {e}"))?;
    let exit = rec.exit.as_ref().and_then(|e| e.exit_code);
    if !(rec.complete && exit == Some(0)) {
        bail!(
            "the wrapper did not run the program to a clean exit: complete {}, exit {exit:?}, diagnostics {:?}",
            rec.complete,
            rec.diagnostics
        );
    }
    let (mut bare, mut wrapped) = (Vec::new(), Vec::new());
    for line in log.lines() {
        let (list, micros) = match line.split_once(' ') {
            Some(("bare", us)) => (&mut bare, us),
            Some(("wrapped", us)) => (&mut wrapped, us),
            _ => continue,
        };
        let us: f64 = micros
            .parse()
            .with_context(|| format!("timing line {line:?}"))?;
        list.push(us / 1000.0);
    }
    if bare.is_empty() || wrapped.is_empty() {
        bail!("no timings in the log: {log}");
    }
    Ok((bare, wrapped))
}
