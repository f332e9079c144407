//! Ending a run: store what it produced, write its final status, give its room to the next
//! in line, remove its pod. The same path for a run whose record was read and one that never
//! ran.
use codeinterp_crds::{CodeRun, Phase, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use runner_protocol::Record;
use tokio::time::{Duration, Instant};

use crate::Error;
use crate::artifacts::StoredFile;
use crate::context::Context;
use crate::kube_io::update_status;
use crate::metrics::{LanguageLabels, RunLabels};
use crate::outcome::Outcome;
use crate::results;
use crate::status::{self, Output};

/// How long results may keep failing to reach object storage before the run fails with
/// `storage_failed` (they are retried meanwhile).
const STORE_GIVE_UP: Duration = Duration::from_secs(300);

/// Ends a run that produced no record (failed before or without running, or cancelled
/// before it started). A storage outage is an error: the reconcile is retried.
pub async fn end(
    ctx: &Context,
    run: &CodeRun,
    pod: Option<&Pod>,
    outcome: Outcome,
) -> Result<(), Error> {
    let tenant = ctx.tenant(run);
    let ended = results::Ended {
        run,
        tenant: &tenant,
        record: None,
        outcome: &outcome,
        started_at: started_at(run),
        completed_at: status::now().0.as_second(),
        start_mode: run.status.as_ref().and_then(|s| s.start_mode),
        files: &[],
    };
    let (outcome, stored) = match results::store(&ctx.store, &ended).await {
        Ok(stored) => (outcome, Some(stored)),
        Err(e) if e.is_permanent() => (Outcome::ended(Reason::StorageFailed, e.to_string()), None),
        Err(e) => return Err(e.into()),
    };
    conclude(ctx, run, pod, None, outcome, stored).await
}

/// Ends a run whose record was read. Object storage is retried for a while before the run
/// fails with `storage_failed`.
pub async fn from_record(
    ctx: &Context,
    run: &CodeRun,
    pod: Option<&Pod>,
    record: Option<&Record>,
    files: &[StoredFile],
    outcome: Outcome,
) -> Result<(), Error> {
    let outcome = match unstored(record, files) {
        Some(name) => Outcome::ended(
            Reason::StorageFailed,
            format!("the output file {name:?} could not be stored"),
        ),
        None => outcome,
    };
    let tenant = ctx.tenant(run);
    let (files, outcome) = match &run.spec.container {
        None => crate::quota::keep(ctx, &tenant, files, outcome).await,
        Some(_) => (files, outcome),
    };
    let completed = status::now().0.as_second();
    let wall_secs = outcome.usage.as_ref().map_or(0, |u| u.wall_ms / 1000) as i64;
    let ended = results::Ended {
        run,
        tenant: &tenant,
        record,
        outcome: &outcome,
        started_at: started_at(run).or(Some(completed - wall_secs)),
        completed_at: completed,
        start_mode: pod.map(crate::steps::place::start_mode),
        files,
    };
    let since = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let stored = loop {
        match results::store(&ctx.store, &ended).await {
            Ok(stored) => break Ok(stored),
            Err(e) if e.is_permanent() || since.elapsed() >= STORE_GIVE_UP => {
                tracing::warn!(error = %e, "giving up on storing the results");
                let why = format!("the results could not be stored: {e}");
                break Err(Outcome::ended(Reason::StorageFailed, why));
            }
            Err(e) => {
                tracing::warn!(error = %e, "storing the results; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    let (outcome, stored) = match stored {
        Ok(stored) => (outcome, Some(stored)),
        Err(failed) => (failed, None),
    };
    crate::quota::stored(ctx, &tenant, record, files, completed);
    let output = record.map(|r| Output {
        stdout: &r.stdout,
        stderr: &r.stderr,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
    });
    conclude(ctx, run, pod, output, outcome, stored).await
}

/// An output file the record names that was not stored whole.
fn unstored<'a>(record: Option<&'a Record>, files: &[StoredFile]) -> Option<&'a str> {
    record?
        .artifacts
        .iter()
        .find(|a| {
            !files
                .iter()
                .any(|f| f.name == a.name && f.sha256 == a.sha256)
        })
        .map(|a| a.name.as_str())
}

fn started_at(run: &CodeRun) -> Option<i64> {
    run.status
        .as_ref()
        .and_then(|s| s.started_at.as_ref())
        .map(|t| t.0.as_second())
}

/// The final status, then everything that follows from it.
async fn conclude(
    ctx: &Context,
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
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    // A program that ran before its Running status was due: where it ran goes in now.
    let ran_in = pod.filter(|_| output.is_some()).map(|p| {
        let applied = ctx.isolation().unwrap_or_default();
        (p.name_any(), crate::steps::place::start_mode(p), applied)
    });
    let (updated, wrote) = update_status(&api, run, |mut current| {
        if let Some((pod, mode, applied)) = &ran_in
            && current.pod_name.is_none()
        {
            current = status::ran_in(current, pod, *mode, applied);
        }
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
    ctx.ended(&run.uid().unwrap_or_default());
    // Finished by someone else in between (this write changed nothing): nothing more to do.
    if !wrote {
        return Ok(());
    }
    if let Some(pod) = pod {
        ctx.tidy.remove(&ctx.index, pod);
    }
    let phase = updated.phase().unwrap_or(outcome.phase);
    count(ctx, run, &updated, phase, completed_at.0.as_second());
    announce(ctx, run, &outcome, phase);
    Ok(())
}

fn count(ctx: &Context, run: &CodeRun, updated: &CodeRun, phase: Phase, completed: i64) {
    let language = run.spec.language.as_str().to_string();
    let labels = LanguageLabels {
        language: language.clone(),
    };
    ctx.metrics
        .runs
        .get_or_create(&RunLabels {
            language,
            phase: phase.as_str().into(),
        })
        .inc();
    let Some(created) = run.creation_timestamp().map(|t| t.0.as_second()) else {
        return;
    };
    if let Some(started) = updated.status.as_ref().and_then(|s| s.started_at.as_ref()) {
        ctx.metrics
            .queue_duration
            .get_or_create(&labels)
            .observe((started.0.as_second() - created).max(0) as f64);
    }
    ctx.metrics
        .run_duration
        .get_or_create(&labels)
        .observe((completed - created).max(0) as f64);
}

fn announce(ctx: &Context, run: &CodeRun, outcome: &Outcome, phase: Phase) {
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
    ctx.record(
        run,
        kind,
        phase.as_str(),
        "Finish",
        &status::safe_preview(note.as_bytes()),
    );
    tracing::info!(
        phase = phase.as_str(),
        reason = outcome.reason.map(|r| r.as_str()).unwrap_or(""),
        "run finished"
    );
}
