//! Storing what a run produced: its output byte for byte, its output files, and last its
//! record (a record's presence means everything it names is stored).
use bytes::Bytes;
use codeinterp_crds::{ArtifactRef, CodeRun, StartMode};
use codeinterp_store::{
    FileMeta, HEAD_BYTES, OutputStream, RECORD_VERSION, RunError, RunRecord, Store, StoreError,
    head, image_type,
};
use kube::ResourceExt;
use runner_protocol::Record;
use sha2::{Digest, Sha256};

use crate::artifacts::StoredFile;
use crate::outcome::Outcome;

/// Output files get ids derived from the run and the name, so storing twice (an operator
/// restarted half-way) writes the same objects rather than new ones.
pub fn artifact_id(run_uid: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{run_uid}/{name}"));
    format!("file-{}", &hex::encode(digest)[..24])
}

/// What was stored: the artifact list and the record's key.
pub struct Stored {
    pub artifacts: Vec<ArtifactRef>,
    pub record_key: String,
}

/// What is known of a finished run when its results are stored.
pub struct Ended<'a> {
    pub run: &'a CodeRun,
    pub tenant: &'a str,
    pub record: Option<&'a Record>,
    pub outcome: &'a Outcome,
    pub started_at: Option<i64>,
    pub completed_at: i64,
    pub start_mode: Option<StartMode>,
    /// Its output files, stored as the record brought them.
    pub files: &'a [StoredFile],
}

/// Stores the output, the files and the record of a finished run.
pub async fn store(store: &Store, ended: &Ended<'_>) -> Result<Stored, StoreError> {
    let uid = ended.run.uid().unwrap_or_default();
    let ns = ended.run.namespace().unwrap_or_default();
    let record = ended.record;
    let (stdout, stderr) = record.map_or((&[][..], &[][..]), |r| (&r.stdout[..], &r.stderr[..]));
    for (stream, bytes) in [
        (OutputStream::Stdout, stdout),
        (OutputStream::Stderr, stderr),
    ] {
        store
            .put_output(
                ended.tenant,
                &ns,
                &uid,
                stream,
                Bytes::copy_from_slice(bytes),
            )
            .await?;
    }
    let artifacts = store_artifacts(store, ended).await?;
    let outcome = ended.outcome;
    let rec = RunRecord {
        v: RECORD_VERSION,
        id: ended.run.name_any(),
        uid,
        tenant: ended.tenant.to_string(),
        namespace: ns,
        phase: outcome.phase,
        language: ended.run.spec.language,
        created_at: ended
            .run
            .creation_timestamp()
            .map(|t| t.0.as_second())
            .unwrap_or(ended.completed_at),
        started_at: ended.started_at,
        completed_at: Some(ended.completed_at),
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        stdout_head: head(stdout, HEAD_BYTES),
        stderr_head: head(stderr, HEAD_BYTES),
        stdout_bytes: stdout.len() as u64,
        stderr_bytes: stderr.len() as u64,
        stdout_truncated: record.is_some_and(|r| r.stdout_truncated),
        stderr_truncated: record.is_some_and(|r| r.stderr_truncated),
        usage: outcome.usage.clone().unwrap_or_default(),
        artifacts: artifacts.clone(),
        error: outcome.reason.map(|code| RunError {
            code,
            message: outcome.message.clone().unwrap_or_default(),
        }),
        start_mode: ended.start_mode,
        preloaded: outcome.preloaded,
    };
    let record_key = store.put_run(&rec).await?;
    Ok(Stored {
        artifacts,
        record_key,
    })
}

/// The run's output files: their bytes were stored as the record brought them; their
/// metadata, written now, lists them.
async fn store_artifacts(store: &Store, ended: &Ended<'_>) -> Result<Vec<ArtifactRef>, StoreError> {
    let mut artifacts = Vec::new();
    for file in ended.files {
        let meta = FileMeta {
            id: file.id.clone(),
            tenant: ended.tenant.to_string(),
            bytes: file.bytes,
            created_at: ended.completed_at,
            filename: file.name.clone(),
            purpose: "assistants_output".into(),
            sha256: file.sha256.clone(),
            run_id: Some(ended.run.name_any()),
            content_type: image_type(&file.head).map(str::to_string),
        };
        store.put_file_meta(&meta).await?;
        artifacts.push(ArtifactRef {
            id: file.id.clone(),
            name: file.name.clone(),
            bytes: file.bytes,
            sha256: file.sha256.clone(),
        });
    }
    Ok(artifacts)
}
