//! Ending a run: store what it produced, write its final status, free its room, remove its
//! pod. The same path for a run whose record was read and one that never ran.
use std::sync::Arc;
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, CodeRunStatus, Phase, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::events::EventType;
use runner_protocol::Record;

use crate::Error;
use crate::context::Context;
use crate::metrics::{LanguageLabels, RunLabels};
use crate::outcome::Outcome;
use crate::results;
use crate::status::{self, Output};

/// How long results may keep failing to reach object storage before the run fails with
/// `storage_failed` (they are retried meanwhile).
const STORE_GIVE_UP: Duration = Duration::from_secs(300);

/// Writes a status built from the run's current one, re-reading the run when it changed in
/// between. A run that has reached a final phase meanwhile is left as it is. Returns the run
/// as it is after the write.
pub async fn write_status(
    ctx: &Context,
    run: &CodeRun,
    build: impl Fn(CodeRunStatus) -> CodeRunStatus,
) -> Result<CodeRun, Error> {
    write_status_once(ctx, run, build).await.map(|(run, _)| run)
}

/// [`write_status`], also telling whether this call wrote it (or found the run finished).
pub async fn write_status_once(
    ctx: &Context,
    run: &CodeRun,
    build: impl Fn(CodeRunStatus) -> CodeRunStatus,
) -> Result<(CodeRun, bool), Error> {
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    let mut current = run.clone();
    for _ in 0..5 {
        if current.is_finished() {
            return Ok((current, false));
        }
        let status = build(current.status.clone().unwrap_or_default());
        // Phases only move forward (a late Queued write never undoes a Running one).
        if let (Some(from), Some(to)) = (current.phase(), status.phase)
            && !from.may_become(to)
        {
            return Ok((current, false));
        }
        match status::write(&api, &current, &status).await {
            Ok(updated) => return Ok((updated, true)),
            Err(Error::Conflict) => match api.get_opt(&current.name_any()).await? {
                Some(latest) if latest.uid() == run.uid() => current = latest,
                _ => return Ok((current, false)),
            },
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict)
}

/// Ends a run that produced no record (failed before or without running, or cancelled
/// before it started). A storage outage is an error: the reconcile is retried.
pub async fn end(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Option<&Pod>,
    outcome: Outcome,
) -> Result<(), Error> {
    let completed = status::now().0.as_second();
    let started = run
        .status
        .as_ref()
        .and_then(|s| s.started_at.as_ref())
        .map(|t| t.0.as_second());
    let tenant = ctx.tenant(run);
    let (outcome, stored) =
        match results::store(&ctx.store, run, &tenant, None, &outcome, started, completed).await {
            Ok(stored) => (outcome, Some(stored)),
            Err(e) if e.is_permanent() => {
                (Outcome::ended(Reason::StorageFailed, e.to_string()), None)
            }
            Err(e) => return Err(e.into()),
        };
    conclude(ctx, run, pod, None, outcome, stored).await
}

/// Ends a run whose record was read. Object storage is retried for a while before the run
/// fails with `storage_failed`.
pub async fn from_record(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Option<&Pod>,
    record: Option<&Record>,
    outcome: Outcome,
) -> Result<(), Error> {
    let completed = status::now().0.as_second();
    let started = run
        .status
        .as_ref()
        .and_then(|s| s.started_at.as_ref())
        .map(|t| t.0.as_second())
        .or(Some(completed));
    let tenant = ctx.tenant(run);
    let since = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let (outcome, stored) = loop {
        match results::store(
            &ctx.store, run, &tenant, record, &outcome, started, completed,
        )
        .await
        {
            Ok(stored) => break (outcome, Some(stored)),
            Err(e) if e.is_permanent() || since.elapsed() >= STORE_GIVE_UP => {
                tracing::warn!(error = %e, "giving up on storing the results");
                break (
                    Outcome::ended(
                        Reason::StorageFailed,
                        format!("the results could not be stored: {e}"),
                    ),
                    None,
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "storing the results; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    let output = record.map(|r| Output {
        stdout: &r.stdout,
        stderr: &r.stderr,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
    });
    conclude(ctx, run, pod, output, outcome, stored).await
}

async fn conclude(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Option<&Pod>,
    output: Option<Output<'_>>,
    outcome: Outcome,
    stored: Option<results::Stored>,
) -> Result<(), Error> {
    let completed_at = status::now();
    let (artifacts, record_key) = match stored {
        Some(s) => (s.artifacts, Some(s.record_key)),
        None => (Vec::new(), None),
    };
    let (updated, wrote) = write_status_once(ctx, run, |current| {
        status::finished(
            current,
            &outcome,
            output.clone(),
            artifacts.clone(),
            record_key.clone(),
            completed_at.clone(),
        )
    })
    .await?;
    let uid = run.uid().unwrap_or_default();
    ctx.release(&uid);
    ctx.finished.note(&uid);
    // Finished by someone else in between (this write changed nothing): nothing more to do.
    if !wrote {
        return Ok(());
    }
    if let Some(pod) = pod {
        remove_pod(ctx, pod);
    }
    let phase = updated.phase().unwrap_or(outcome.phase);
    let language = run.spec.language.as_str().to_string();
    ctx.metrics
        .runs
        .get_or_create(&RunLabels {
            language: language.clone(),
            phase: phase.as_str().into(),
        })
        .inc();
    let created = run.creation_timestamp().map(|t| t.0.as_second());
    if let (Some(created), Some(started)) = (
        created,
        updated.status.as_ref().and_then(|s| s.started_at.as_ref()),
    ) {
        ctx.metrics
            .queue_duration
            .get_or_create(&LanguageLabels {
                language: language.clone(),
            })
            .observe((started.0.as_second() - created).max(0) as f64);
    }
    if let Some(created) = created {
        ctx.metrics
            .run_duration
            .get_or_create(&LanguageLabels { language })
            .observe((completed_at.0.as_second() - created).max(0) as f64);
    }
    let message = outcome
        .message
        .clone()
        .unwrap_or_else(|| format!("exit code {}", outcome.exit_code.unwrap_or(-1)));
    let note = match outcome.reason {
        Some(r) => format!("{}: {r}: {message}", phase.as_str()),
        None => format!("{}: {message}; results stored", phase.as_str()),
    };
    let kind = if phase == Phase::Completed {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.publish(
        run,
        kind,
        phase.as_str(),
        "Finish",
        status::safe_preview(note.as_bytes()),
    );
    tracing::info!(
        phase = phase.as_str(),
        reason = outcome.reason.map(|r| r.as_str()).unwrap_or(""),
        "run finished"
    );
    Ok(())
}

/// Deletes the run's pod (in the background): only the pod that was checked to be the run's,
/// by its UID, so a pod of the same name made since is never touched; and only once.
pub fn remove_pod(ctx: &Context, pod: &Pod) {
    if !ctx.should_remove(pod) {
        return;
    }
    let api = ctx.tidy_pods(&pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    let starts = ctx.starts.clone();
    tokio::spawn(async move {
        starts.pause().await;
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "removing a runner pod"),
        }
    });
}
