//! Turning a finished runner pod into stored results: the container log is read through the
//! API server, validated as untrusted input, and written to object storage.
use bytes::Bytes;
use codeinterp_crds::{ArtifactRef, CodeRun, EffectiveLimits};
use codeinterp_store::{
    ArtifactRecord, CLUSTER_TENANT, FileMeta, RunError, RunRecord as StoredRun, RunUsage, Store,
};
use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use runner_protocol::{RecordLimits, RunRecord, parse_record};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::outcome::Outcome;
use crate::pod_spec::RUNNER_CONTAINER;

/// A record can never be larger than this: 2 x 1 MiB of output and 4 MiB of files, base64.
const MAX_LOG_BYTES: usize = 12 * 1024 * 1024;

pub fn tenant(run: &CodeRun) -> String {
    match run.tenant() {
        "" => CLUSTER_TENANT.to_string(),
        t => t.to_string(),
    }
}

pub fn record_limits(limits: &EffectiveLimits) -> RecordLimits {
    RecordLimits {
        max_output_bytes: limits.max_output_bytes,
        max_artifacts: limits.max_artifacts,
        max_artifact_bytes: limits.max_artifact_bytes,
        max_artifact_total_bytes: limits.max_artifact_total_bytes,
    }
}

/// Reads the runner container's whole log (bounded) through the API server.
pub async fn read_log(pods: &Api<Pod>, name: &str) -> Result<Vec<u8>, Error> {
    let params = LogParams {
        container: Some(RUNNER_CONTAINER.to_string()),
        limit_bytes: Some(MAX_LOG_BYTES as i64),
        ..Default::default()
    };
    let mut stream = pods.log_stream(name, &params).await.map_err(Error::Kube)?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .await
        .map_err(|e| Error::Log(e.to_string()))?;
    Ok(buf)
}

/// Output files get ids derived from the run and the name, so storing twice (an operator
/// restarted half-way) writes the same objects rather than new ones.
pub fn artifact_id(run_uid: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{run_uid}/{name}"));
    format!("file-{}", &hex::encode(digest)[..24])
}

/// Stores the artifacts and the final record; returns the artifact list for the status.
pub async fn store(
    store: &Store,
    run: &CodeRun,
    record: Option<&RunRecord>,
    outcome: &Outcome,
    started_at: Option<i64>,
    completed_at: i64,
) -> Result<(Vec<ArtifactRef>, String), Error> {
    let tenant = tenant(run);
    let id = run.metadata.name.clone().unwrap_or_default();
    let uid = run.metadata.uid.clone().unwrap_or_default();
    let mut artifacts = Vec::new();
    for a in record.map(|r| r.artifacts.as_slice()).unwrap_or_default() {
        let file_id = artifact_id(&uid, &a.name);
        let meta = FileMeta {
            id: file_id.clone(),
            tenant: tenant.clone(),
            bytes: a.content.len() as u64,
            created_at: completed_at,
            filename: a.name.clone(),
            purpose: "assistants_output".into(),
            sha256: a.sha256.clone(),
            run_id: Some(id.clone()),
        };
        store
            .put_file(&meta, Bytes::from(a.content.clone()))
            .await?;
        artifacts.push(ArtifactRef {
            id: file_id,
            name: a.name.clone(),
            bytes: meta.bytes,
            sha256: a.sha256.clone(),
        });
    }
    let stored = StoredRun {
        id: id.clone(),
        tenant: tenant.clone(),
        namespace: run.metadata.namespace.clone().unwrap_or_default(),
        status: outcome.phase.as_api_status().into(),
        language: run.spec.language.as_str().into(),
        created_at: run
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(completed_at),
        started_at,
        completed_at: Some(completed_at),
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        stdout: record
            .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
            .unwrap_or_default(),
        stderr: record
            .map(|r| String::from_utf8_lossy(&r.stderr).into_owned())
            .unwrap_or_default(),
        stdout_truncated: record.is_some_and(|r| r.stdout_truncated),
        stderr_truncated: record.is_some_and(|r| r.stderr_truncated),
        usage: RunUsage {
            wall_ms: outcome.usage.wall_ms,
            cpu_ms: outcome.usage.cpu_ms,
            memory_peak_bytes: outcome.usage.memory_peak_bytes,
        },
        artifacts: artifacts
            .iter()
            .map(|a| ArtifactRecord {
                id: a.id.clone(),
                filename: a.name.clone(),
                bytes: a.bytes,
                sha256: a.sha256.clone(),
            })
            .collect(),
        error: outcome.reason.as_ref().map(|code| RunError {
            code: code.clone(),
            message: outcome.message.clone().unwrap_or_default(),
        }),
    };
    store.put_run(&stored).await?;
    Ok((artifacts, store.run_record_key(&tenant, &id)?))
}

/// Parses a log, mapping a protocol violation to a failed record rather than an error loop.
pub fn parse(log: &[u8], limits: &EffectiveLimits) -> Result<RunRecord, String> {
    parse_record(log, record_limits(limits)).map_err(|e| e.to_string())
}
