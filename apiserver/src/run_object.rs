//! The run object of the REST API, made from a CodeRun (while it exists) or from the final
//! record in object storage (always, once the run has finished). Pure.
use codeinterp_crds::{CodeRun, Phase};
use codeinterp_store::{ArtifactRecord, RunRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::signing::Signer;

/// `status` of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    /// The program exited by itself, whatever its exit code.
    Completed,
    TimedOut,
    /// A limit killed it or the platform failed; `error.code` says which.
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn from_phase(phase: Option<Phase>) -> Self {
        match phase {
            None | Some(Phase::Queued) => RunStatus::Queued,
            Some(Phase::Running) => RunStatus::Running,
            Some(Phase::Completed) => RunStatus::Completed,
            Some(Phase::TimedOut) => RunStatus::TimedOut,
            Some(Phase::Failed) => RunStatus::Failed,
            Some(Phase::Cancelled) => RunStatus::Cancelled,
        }
    }

    /// The records store the REST spelling; anything unknown is reported as failed rather
    /// than hidden.
    pub fn from_api(s: &str) -> Self {
        match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "timed_out" => RunStatus::TimedOut,
            "cancelled" => RunStatus::Cancelled,
            _ => RunStatus::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunUsage {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_peak_bytes: u64,
}

/// An output file, with a signed URL that needs no bearer token until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    pub id: String,
    /// Path relative to /work/outputs.
    pub filename: String,
    pub bytes: u64,
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunErrorInfo {
    /// e.g. `oom_killed`, `output_limit_exceeded`, `artifact_limit_exceeded`, `pod_failed`,
    /// `image_pull_failed`, `cancelled`.
    pub code: String,
    pub message: String,
}

/// A run. Timestamps are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    /// Always `run`.
    #[schema(example = "run")]
    pub object: String,
    pub status: RunStatus,
    #[schema(example = "python")]
    pub language: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub usage: RunUsage,
    pub artifacts: Vec<Artifact>,
    pub error: Option<RunErrorInfo>,
}

/// Makes the signed URLs of artifacts, all expiring at the same moment.
pub struct Links<'a> {
    pub signer: &'a Signer,
    pub base_url: &'a str,
    pub expires_at: i64,
}

impl Links<'_> {
    fn artifact(&self, id: &str, filename: &str, bytes: u64) -> Artifact {
        Artifact {
            id: id.to_string(),
            filename: filename.to_string(),
            bytes,
            url: self.signer.url(self.base_url, id, self.expires_at),
            expires_at: self.expires_at,
        }
    }
}

/// The run as its final record tells it.
pub fn from_record(rec: &RunRecord, links: &Links<'_>) -> Run {
    Run {
        id: rec.id.clone(),
        object: "run".into(),
        status: RunStatus::from_api(&rec.status),
        language: rec.language.clone(),
        created_at: rec.created_at,
        started_at: rec.started_at,
        completed_at: rec.completed_at,
        exit_code: rec.exit_code,
        signal: rec.signal,
        stdout: rec.stdout.clone(),
        stderr: rec.stderr.clone(),
        stdout_truncated: rec.stdout_truncated,
        stderr_truncated: rec.stderr_truncated,
        usage: RunUsage {
            wall_ms: rec.usage.wall_ms,
            cpu_ms: rec.usage.cpu_ms,
            memory_peak_bytes: rec.usage.memory_peak_bytes,
        },
        artifacts: rec
            .artifacts
            .iter()
            .map(|a: &ArtifactRecord| links.artifact(&a.id, &a.filename, a.bytes))
            .collect(),
        error: rec.error.as_ref().map(|e| RunErrorInfo {
            code: e.code.clone(),
            message: e.message.clone(),
        }),
    }
}

/// The run as the CodeRun tells it. A finished run with its record at hand is told by the
/// record, which holds the whole of stdout and stderr (the status has a preview only).
pub fn from_coderun(run: &CodeRun, record: Option<&RunRecord>, links: &Links<'_>) -> Run {
    if let Some(rec) = record.filter(|_| run.is_finished()) {
        return from_record(rec, links);
    }
    let status = run.status.clone().unwrap_or_default();
    let seconds = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_second())
    };
    let usage = status.usage.clone().unwrap_or_default();
    Run {
        id: run.metadata.name.clone().unwrap_or_default(),
        object: "run".into(),
        status: RunStatus::from_phase(status.phase),
        language: run.spec.language.as_str().into(),
        created_at: seconds(&run.metadata.creation_timestamp).unwrap_or_default(),
        started_at: seconds(&status.started_at),
        completed_at: seconds(&status.completed_at),
        exit_code: status.exit_code,
        signal: status.signal,
        stdout: status.stdout_preview.clone().unwrap_or_default(),
        stderr: status.stderr_preview.clone().unwrap_or_default(),
        stdout_truncated: status.stdout_truncated,
        stderr_truncated: status.stderr_truncated,
        usage: RunUsage {
            wall_ms: usage.wall_ms,
            cpu_ms: usage.cpu_ms,
            memory_peak_bytes: usage.memory_peak_bytes,
        },
        artifacts: status
            .artifacts
            .iter()
            .map(|a| links.artifact(&a.id, &a.name, a.bytes))
            .collect(),
        error: status.reason.as_ref().map(|code| RunErrorInfo {
            code: code.clone(),
            message: status.message.clone().unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{ArtifactRef, CodeRunSpec, CodeRunStatus, Language, Usage};
    use codeinterp_store::{RunError, RunUsage as StoredUsage};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use pretty_assertions::assert_eq;

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef0123", None).unwrap()
    }

    fn links(s: &Signer) -> Links<'_> {
        Links {
            signer: s,
            base_url: "http://api",
            expires_at: 2000,
        }
    }

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn coderun(status: Option<CodeRunStatus>) -> CodeRun {
        let mut run = CodeRun::new(
            "run-abc",
            CodeRunSpec {
                language: Language::Node,
                code: String::new(),
                stdin: None,
                args: vec![],
                files: vec![],
                limits: Default::default(),
                ttl_seconds_after_finished: None,
                cancel: None,
            },
        );
        run.metadata.creation_timestamp = Some(time(100));
        run.status = status;
        run
    }

    #[test]
    fn a_new_coderun_is_a_queued_run_with_nothing_yet() {
        let s = signer();
        let run = from_coderun(&coderun(None), None, &links(&s));
        assert_eq!(run.id, "run-abc");
        assert_eq!(run.object, "run");
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.language, "node");
        assert_eq!(run.created_at, 100);
        assert_eq!(run.started_at, None);
        assert_eq!(run.exit_code, None);
        assert_eq!(run.error, None);
        assert_eq!(run.usage, RunUsage::default());
        assert!(run.artifacts.is_empty());
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["status"], "queued");
        assert!(json["error"].is_null());
    }

    #[test]
    fn a_finished_coderun_without_its_record_shows_the_status() {
        let s = signer();
        let status = CodeRunStatus {
            phase: Some(Phase::Failed),
            reason: Some("oom_killed".into()),
            message: Some("out of memory".into()),
            exit_code: Some(137),
            signal: Some(9),
            usage: Some(Usage {
                wall_ms: 5,
                cpu_ms: 4,
                memory_peak_bytes: 3,
            }),
            started_at: Some(time(101)),
            completed_at: Some(time(102)),
            stdout_preview: Some("partial".into()),
            stdout_truncated: true,
            artifacts: vec![ArtifactRef {
                id: "file-1".into(),
                name: "plot.png".into(),
                bytes: 10,
                sha256: "x".into(),
            }],
            ..Default::default()
        };
        let run = from_coderun(&coderun(Some(status)), None, &links(&s));
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.started_at, Some(101));
        assert_eq!(run.completed_at, Some(102));
        assert_eq!(run.exit_code, Some(137));
        assert_eq!(run.signal, Some(9));
        assert_eq!(run.stdout, "partial");
        assert!(run.stdout_truncated);
        assert_eq!(run.usage.wall_ms, 5);
        assert_eq!(
            run.error,
            Some(RunErrorInfo {
                code: "oom_killed".into(),
                message: "out of memory".into()
            })
        );
        assert_eq!(run.artifacts[0].filename, "plot.png");
        assert_eq!(run.artifacts[0].expires_at, 2000);
        assert_eq!(run.artifacts[0].url, s.url("http://api", "file-1", 2000));
    }

    fn record() -> RunRecord {
        RunRecord {
            id: "run-abc".into(),
            tenant: "acme".into(),
            namespace: "codeinterp".into(),
            status: "timed_out".into(),
            language: "node".into(),
            created_at: 100,
            started_at: Some(101),
            completed_at: Some(104),
            exit_code: None,
            signal: Some(9),
            stdout: "the whole output".into(),
            stderr: "err".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            usage: StoredUsage {
                wall_ms: 3000,
                cpu_ms: 2900,
                memory_peak_bytes: 1 << 20,
            },
            artifacts: vec![ArtifactRecord {
                id: "file-2".into(),
                filename: "out/a.csv".into(),
                bytes: 7,
                sha256: "y".into(),
            }],
            error: Some(RunError {
                code: "timed_out".into(),
                message: "the program ran for more than 3000 ms".into(),
            }),
        }
    }

    #[test]
    fn a_stored_record_alone_answers_for_a_collected_run() {
        let s = signer();
        let run = from_record(&record(), &links(&s));
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "run-abc",
                "object": "run",
                "status": "timed_out",
                "language": "node",
                "created_at": 100,
                "started_at": 101,
                "completed_at": 104,
                "exit_code": null,
                "signal": 9,
                "stdout": "the whole output",
                "stderr": "err",
                "stdout_truncated": false,
                "stderr_truncated": false,
                "usage": {"wall_ms": 3000, "cpu_ms": 2900, "memory_peak_bytes": 1048576},
                "artifacts": [{
                    "id": "file-2",
                    "filename": "out/a.csv",
                    "bytes": 7,
                    "url": s.url("http://api", "file-2", 2000),
                    "expires_at": 2000
                }],
                "error": {"code": "timed_out", "message": "the program ran for more than 3000 ms"}
            })
        );
    }

    #[test]
    fn a_finished_coderun_takes_stdout_in_full_from_its_record() {
        let s = signer();
        let status = CodeRunStatus {
            phase: Some(Phase::TimedOut),
            stdout_preview: Some("the wh".into()),
            ..Default::default()
        };
        let run = from_coderun(&coderun(Some(status)), Some(&record()), &links(&s));
        assert_eq!(run.stdout, "the whole output");
        assert_eq!(run.status, RunStatus::TimedOut);
    }

    #[test]
    fn a_running_coderun_ignores_a_stale_record() {
        let s = signer();
        let status = CodeRunStatus {
            phase: Some(Phase::Running),
            ..Default::default()
        };
        let run = from_coderun(&coderun(Some(status)), Some(&record()), &links(&s));
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.stdout, "");
    }

    #[test]
    fn every_phase_has_its_rest_spelling() {
        for phase in [
            Phase::Queued,
            Phase::Running,
            Phase::Completed,
            Phase::TimedOut,
            Phase::Failed,
            Phase::Cancelled,
        ] {
            let status = RunStatus::from_phase(Some(phase));
            assert_eq!(status.as_str(), phase.as_api_status());
            assert_eq!(RunStatus::from_api(phase.as_api_status()), status);
            assert_eq!(status.is_terminal(), phase.is_terminal());
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(phase.as_api_status())
            );
        }
    }
}
