//! The run object of the REST API (the wire schema), made from a CodeRun while it runs and
//! from its stored record once it has finished: one conversion each. A finished run's answer
//! is prepared once (its output escaped into JSON) and kept, so serving it again copies
//! nothing but the freshly signed artifact URLs.
use bytes::Bytes;
use codeinterp_crds::{ArtifactRef, CodeRun, Phase};
use codeinterp_store::{HEAD_BYTES, RunRecord, head};
use futures::stream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::signing::Signer;

/// `status` of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, waiting for its program to start (perhaps for room: see `queue_position`).
    Queued,
    Running,
    /// The program exited by itself, whatever its exit code.
    Completed,
    TimedOut,
    /// A limit killed it or the platform failed; `error.code` says which.
    Failed,
    Cancelled,
}

impl From<Phase> for RunStatus {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Queued => RunStatus::Queued,
            Phase::Running => RunStatus::Running,
            Phase::Completed => RunStatus::Completed,
            Phase::TimedOut => RunStatus::TimedOut,
            Phase::Failed => RunStatus::Failed,
            Phase::Cancelled => RunStatus::Cancelled,
        }
    }
}

impl RunStatus {
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

impl From<&codeinterp_crds::Usage> for RunUsage {
    fn from(u: &codeinterp_crds::Usage) -> Self {
        RunUsage {
            wall_ms: u.wall_ms,
            cpu_ms: u.cpu_ms,
            memory_peak_bytes: u.memory_peak_bytes,
        }
    }
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
    /// A reason code, e.g. `oom_killed`, `timed_out`, `disk_limit_exceeded`, `queue_full`
    /// (the README lists them all).
    pub code: String,
    pub message: String,
}

/// A run. Timestamps are unix seconds. In a list, and inside the events of a stream,
/// `stdout` and `stderr` hold at most the first 4 KiB of each (retrieve the run for all of
/// it; a stream carries all of it once, in `run.output.delta` events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    /// Always `run`.
    #[schema(example = "run")]
    pub object: String,
    pub status: RunStatus,
    #[schema(example = "python")]
    pub language: String,
    /// The container it runs in (`cntr_...`), if it was made in one. Shown while the run
    /// is live and when it is created; the stored record of a finished run does not keep
    /// it, so a finished run read back shows null.
    pub container: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// While the run waits for room: its place in line (1 is next), refreshed as the line
    /// moves. Null otherwise.
    pub queue_position: Option<u32>,
    pub usage: RunUsage,
    pub artifacts: Vec<Artifact>,
    pub error: Option<RunErrorInfo>,
}

impl Run {
    /// The run with at most the first [`HEAD_BYTES`] of each stream (cut at a character
    /// boundary), as lists and events carry it: small whatever the program printed.
    pub fn with_heads(mut self) -> Run {
        for text in [&mut self.stdout, &mut self.stderr] {
            if text.len() > HEAD_BYTES {
                *text = head(text.as_bytes(), HEAD_BYTES);
            }
        }
        self
    }
}

/// Makes the signed URLs of artifacts, all expiring at the same moment.
pub struct Links<'a> {
    pub signer: &'a Signer,
    pub base_url: &'a str,
    pub expires_at: i64,
}

impl Links<'_> {
    pub fn artifact(&self, a: &ArtifactRef) -> Artifact {
        Artifact {
            id: a.id.clone(),
            filename: a.name.clone(),
            bytes: a.bytes,
            url: self.signer.url(self.base_url, &a.id, self.expires_at),
            expires_at: self.expires_at,
        }
    }

    pub fn artifacts(&self, list: &[ArtifactRef]) -> Vec<Artifact> {
        list.iter().map(|a| self.artifact(a)).collect()
    }
}

/// The run as its final record tells it, with its output (the whole of it, or the heads the
/// record carries for a list).
pub fn from_record(rec: &RunRecord, stdout: &[u8], stderr: &[u8], links: &Links<'_>) -> Run {
    Run {
        id: rec.id.clone(),
        object: "run".into(),
        status: rec.phase.into(),
        language: rec.language.as_str().into(),
        container: None,
        created_at: rec.created_at,
        started_at: rec.started_at,
        completed_at: rec.completed_at,
        exit_code: rec.exit_code,
        signal: rec.signal,
        stdout: String::from_utf8_lossy(stdout).into_owned(),
        stderr: String::from_utf8_lossy(stderr).into_owned(),
        stdout_truncated: rec.stdout_truncated,
        stderr_truncated: rec.stderr_truncated,
        queue_position: None,
        usage: RunUsage::from(&rec.usage),
        artifacts: links.artifacts(&rec.artifacts),
        error: rec.error.as_ref().map(|e| RunErrorInfo {
            code: e.code.as_str().into(),
            message: e.message.clone(),
        }),
    }
}

/// A finished run as lists and events show it: the heads its record carries (a record of
/// the first layout carries its whole output there, so they are cut too).
pub fn list_item(rec: &RunRecord, links: &Links<'_>) -> Run {
    from_record(
        rec,
        rec.stdout_head.as_bytes(),
        rec.stderr_head.as_bytes(),
        links,
    )
    .with_heads()
}

/// The run as the CodeRun's status tells it (a preview of the output), with no artifacts:
/// a link is signed only for a file the run's own record in storage lists (see
/// [`from_record`]). Anyone RBAC lets write `coderuns/status` could put any file id in a
/// status, and a signed link opens a file of whichever tenant holds it.
pub fn from_coderun(run: &CodeRun) -> Run {
    let status = run.status.clone().unwrap_or_default();
    let seconds = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_second())
    };
    Run {
        id: run.metadata.name.clone().unwrap_or_default(),
        object: "run".into(),
        status: status.phase.unwrap_or(Phase::Queued).into(),
        language: run.spec.language.as_str().into(),
        container: run
            .spec
            .container
            .as_deref()
            .and_then(crate::containers::model::id_of),
        created_at: seconds(&run.metadata.creation_timestamp).unwrap_or_default(),
        started_at: seconds(&status.started_at),
        completed_at: seconds(&status.completed_at),
        exit_code: status.exit_code,
        signal: status.signal,
        stdout: status.stdout_preview.clone().unwrap_or_default(),
        stderr: status.stderr_preview.clone().unwrap_or_default(),
        stdout_truncated: status.stdout_truncated,
        stderr_truncated: status.stderr_truncated,
        queue_position: status
            .queue_position
            .filter(|_| status.phase.is_none_or(|p| p == Phase::Queued)),
        usage: status
            .usage
            .as_ref()
            .map(RunUsage::from)
            .unwrap_or_default(),
        artifacts: Vec::new(),
        error: status.reason.map(|code| RunErrorInfo {
            code: code.as_str().into(),
            message: status.message.clone().unwrap_or_default(),
        }),
    }
}

/// A finished run's answer, serialized once: the JSON before the artifacts, the artifacts
/// (whose URLs are signed afresh for each answer) and the JSON after them.
#[derive(Debug)]
pub struct Prepared {
    head: Bytes,
    artifacts: Vec<ArtifactRef>,
    tail: Bytes,
    pub language: String,
    pub status: RunStatus,
}

const ARTIFACTS: &str = "\"artifacts\":[]";

impl Prepared {
    /// `run` must have no artifacts of its own: they are `artifacts`.
    pub fn new(mut run: Run, artifacts: Vec<ArtifactRef>) -> Self {
        run.artifacts.clear();
        let json = serde_json::to_string(&run).expect("a run serializes");
        // Inside a JSON string a quote is escaped, so this key can only be the field itself;
        // it comes last but one.
        let at = json.rfind(ARTIFACTS).expect("the artifacts field");
        Prepared {
            head: Bytes::copy_from_slice(&json.as_bytes()[..at + ARTIFACTS.len() - 1]),
            tail: Bytes::copy_from_slice(&json.as_bytes()[at + ARTIFACTS.len() - 1..]),
            artifacts,
            language: run.language,
            status: run.status,
        }
    }

    /// Bytes held.
    pub fn weight(&self) -> usize {
        self.head.len() + self.tail.len() + self.artifacts.len() * 200
    }

    /// The answer's body chunks.
    pub fn chunks(&self, links: &Links<'_>) -> Vec<Bytes> {
        let list = serde_json::to_string(&links.artifacts(&self.artifacts)).expect("serializes");
        // `list` is `[...]`: the head ends just before the `]` of an empty list... and the
        // tail starts with it; put the items in between.
        let items = &list[1..list.len() - 1];
        vec![
            self.head.clone(),
            Bytes::from(items.to_string()),
            self.tail.clone(),
        ]
    }

    pub fn body(&self, links: &Links<'_>) -> axum::body::Body {
        let chunks = self.chunks(links);
        axum::body::Body::from_stream(stream::iter(
            chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
        ))
    }

    /// The run as a value (for places that need the object, not the bytes).
    pub fn to_run(&self, links: &Links<'_>) -> Run {
        let bytes: Vec<u8> = self.chunks(links).concat();
        serde_json::from_slice(&bytes).expect("a prepared run is valid JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeRunSpec, CodeRunStatus, Language, Reason, Usage};
    use codeinterp_store::{RECORD_VERSION, RunError};
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
                container: None,
            },
        );
        run.metadata.creation_timestamp = Some(time(100));
        run.status = status;
        run
    }

    fn artifact() -> ArtifactRef {
        ArtifactRef {
            id: "file-2".into(),
            name: "out/a.csv".into(),
            bytes: 7,
            sha256: "y".into(),
        }
    }

    fn record() -> RunRecord {
        RunRecord {
            v: RECORD_VERSION,
            id: "run-abc".into(),
            uid: "u".into(),
            tenant: "acme".into(),
            namespace: "codeinterp".into(),
            phase: Phase::TimedOut,
            language: Language::Node,
            created_at: 100,
            started_at: Some(101),
            completed_at: Some(104),
            exit_code: None,
            signal: Some(9),
            stdout_head: "the whole".into(),
            stderr_head: "err".into(),
            stdout_bytes: 16,
            stderr_bytes: 3,
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage {
                wall_ms: 3000,
                cpu_ms: 2900,
                memory_peak_bytes: 1 << 20,
            },
            artifacts: vec![artifact()],
            error: Some(RunError {
                code: Reason::TimedOut,
                message: "the program ran past its timeout".into(),
            }),
            start_mode: None,
            preloaded: false,
        }
    }

    #[test]
    fn a_new_coderun_is_a_queued_run_with_nothing_yet() {
        let run = from_coderun(&coderun(None));
        assert_eq!(
            (run.id.as_str(), run.status, run.language.as_str()),
            ("run-abc", RunStatus::Queued, "node")
        );
        assert_eq!(
            (run.created_at, run.started_at, run.exit_code),
            (100, None, None)
        );
        assert!(run.artifacts.is_empty() && run.error.is_none());
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["status"], "queued");
        assert!(json["error"].is_null() && json["queue_position"].is_null());
    }

    #[test]
    fn a_waiting_coderun_shows_its_place_in_line() {
        let status = CodeRunStatus {
            phase: Some(Phase::Queued),
            queue_position: Some(7),
            ..Default::default()
        };
        assert_eq!(from_coderun(&coderun(Some(status))).queue_position, Some(7));
    }

    #[test]
    fn a_finished_coderun_without_its_record_shows_the_status_and_signs_no_link() {
        let status = CodeRunStatus {
            phase: Some(Phase::Failed),
            reason: Some(Reason::OomKilled),
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
            artifacts: vec![artifact()],
            ..Default::default()
        };
        let run = from_coderun(&coderun(Some(status)));
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!((run.started_at, run.completed_at), (Some(101), Some(102)));
        assert_eq!((run.exit_code, run.signal), (Some(137), Some(9)));
        assert_eq!(run.stdout, "partial");
        assert!(run.stdout_truncated);
        assert_eq!(run.usage.wall_ms, 5);
        assert_eq!(run.error.unwrap().code, "oom_killed");
        // The status names an artifact, but only the record's artifacts are signed.
        assert!(run.artifacts.is_empty(), "{:?}", run.artifacts);
    }

    #[test]
    fn a_stored_record_and_its_output_answer_for_a_finished_run() {
        let s = signer();
        let run = from_record(&record(), b"the whole output", b"err", &links(&s));
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "run-abc", "object": "run", "status": "timed_out", "language": "node",
                "container": null,
                "created_at": 100, "started_at": 101, "completed_at": 104,
                "exit_code": null, "signal": 9,
                "stdout": "the whole output", "stderr": "err",
                "stdout_truncated": false, "stderr_truncated": false,
                "queue_position": null,
                "usage": {"wall_ms": 3000, "cpu_ms": 2900, "memory_peak_bytes": 1048576},
                "artifacts": [{"id": "file-2", "filename": "out/a.csv", "bytes": 7,
                    "url": s.url("http://api", "file-2", 2000), "expires_at": 2000}],
                "error": {"code": "timed_out", "message": "the program ran past its timeout"}
            })
        );
        assert_eq!(list_item(&record(), &links(&s)).stdout, "the whole");
    }

    #[test]
    fn a_prepared_answer_is_the_run_serialized_with_fresh_links() {
        let s = signer();
        let tricky = "\"artifacts\":[] \u{1} \\ \u{89}";
        let mut run = from_record(&record(), tricky.as_bytes(), b"", &links(&s));
        let prepared = Prepared::new(run.clone(), record().artifacts);
        for expires in [2000, 3000] {
            let l = Links {
                signer: &s,
                base_url: "http://api",
                expires_at: expires,
            };
            run.artifacts = l.artifacts(&record().artifacts);
            let body = prepared.chunks(&l).concat();
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, serde_json::to_value(&run).unwrap());
            assert_eq!(prepared.to_run(&l), run);
        }
        let none = Prepared::new(run.clone(), vec![]);
        let got: Run = serde_json::from_slice(&none.chunks(&links(&s)).concat()).unwrap();
        assert!(got.artifacts.is_empty());
    }

    #[test]
    fn a_run_with_heads_keeps_the_first_4_kib_of_each_stream_whole_characters_only() {
        let s = signer();
        let long = "é".repeat(3000);
        let run = from_record(&record(), long.as_bytes(), b"short", &links(&s)).with_heads();
        assert_eq!(run.stdout, "é".repeat(2048));
        assert_eq!(run.stderr, "short");
    }

    #[test]
    fn every_phase_has_its_rest_spelling() {
        for phase in Phase::ALL {
            let status = RunStatus::from(phase);
            assert_eq!(status.as_str(), phase.as_api_status());
            assert_eq!(status.is_terminal(), phase.is_terminal());
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(phase.as_api_status())
            );
        }
    }
}
