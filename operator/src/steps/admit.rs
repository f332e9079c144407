//! A run without a pod asks for room: its inputs are checked first (a bad one fails it at
//! once), then it is admitted, or waits in line with its place in its status. It is never
//! refused for a full line: the door that accepted it was the place to refuse.
use std::sync::Arc;

use codeinterp_crds::{CodeRun, Phase};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tokio::time::Duration;

use crate::Error;
use crate::admission::Decision;
use crate::context::Context;
use crate::inputs;
use crate::kube_io::update_status;
use crate::outcome::Outcome;
use crate::status;
use crate::steps::{finish, place};

pub async fn admit(ctx: &Arc<Context>, run: &CodeRun) -> Result<Action, Error> {
    if let Err(refusal) = inputs::check(ctx, run).await {
        let outcome = Outcome::ended(refusal.reason, refusal.message);
        finish::end(ctx, run, None, outcome).await?;
        return Ok(Action::await_change());
    }
    let entry = ctx.entry(run);
    let mut decision = ctx.index.request(entry.clone());
    if matches!(decision, Decision::Queued { .. }) {
        ctx.pump();
        decision = ctx.index.request(entry);
    }
    match decision {
        Decision::Queued { position } => wait_in_line(ctx, run, position).await,
        Decision::Admitted => place::place(ctx, run).await,
    }
}

/// The run waits: its status shows its place (written once; refreshed as the line moves by
/// the housekeeping). It is woken when admitted, or looked at again at its queue timeout.
async fn wait_in_line(ctx: &Arc<Context>, run: &CodeRun, position: u32) -> Result<Action, Error> {
    let status = run.status.clone().unwrap_or_default();
    if status.phase != Some(Phase::Queued) || status.queue_position.is_none() {
        update_status(
            &ctx.runs_api(&run.namespace().unwrap_or_default()),
            run,
            |s| status::queued(s, position, "waiting for room in the cluster"),
        )
        .await?;
    }
    let waited = run
        .creation_timestamp()
        .map(|t| (status::now().0.as_second() - t.0.as_second()).max(0) as u64)
        .unwrap_or(0);
    Ok(Action::requeue(Duration::from_secs(
        ctx.cfg().queue_timeout_seconds.saturating_sub(waited) + 1,
    )))
}

/// Refreshes the place in line shown in waiting runs' statuses. A place is rewritten only
/// when it has moved a good deal (halved, or under ten), so a line of thousands costs a few
/// writes per run, not one per run admitted ahead of it.
pub async fn refresh_positions(ctx: &Context) {
    let mut writes = 0;
    for (key, position) in ctx.index.positions() {
        if writes >= 50 {
            break;
        }
        let Some(run) = ctx.cluster.runs.get(&key) else {
            continue;
        };
        let Some(shown) = run.status.as_ref().and_then(|s| s.queue_position) else {
            continue;
        };
        let moved = position != shown && (position <= shown / 2 || position < 10);
        if !moved || run.phase() != Some(Phase::Queued) {
            continue;
        }
        writes += 1;
        // Guarded by the cached run's resourceVersion: a run that changed meanwhile (it was
        // admitted) is left alone.
        let status = status::queued(
            run.status.clone().unwrap_or_default(),
            position,
            "waiting for room in the cluster",
        );
        let api = ctx.runs_api(&run.namespace().unwrap_or_default());
        if let Err(e) = status::write(&api, &run, &status).await
            && !matches!(e, Error::Conflict)
        {
            tracing::debug!(run = %key, error = %e, "refreshing a place in line");
        }
    }
}
