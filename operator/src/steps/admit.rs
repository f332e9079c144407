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
    let uid = run.uid().unwrap_or_default();
    // A run already in line was checked when it joined, and only a change of room (which
    // pumps the queue) can admit it: looking at it again costs a lookup, not a pass.
    if let Some(position) = ctx.index.place_in_line(&uid) {
        return wait_in_line(ctx, run, position).await;
    }
    if let Err(refusal) = inputs::check(ctx, run).await {
        let outcome = Outcome::ended(refusal.reason, refusal.message);
        finish::end(ctx, run, None, outcome).await?;
        return Ok(Action::await_change());
    }
    let entry = ctx.entry(run);
    let mut decision = ctx.index.request(entry.clone());
    // Joining the line can make only this run admissible, and only at the head of its line.
    if matches!(decision, Decision::Queued { .. }) && ctx.index.heads_its_line(&uid) {
        ctx.pump();
        decision = ctx.index.request(entry);
    }
    match decision {
        Decision::Queued { position } => wait_in_line(ctx, run, position).await,
        Decision::Admitted => place::place(ctx, run).await,
    }
}

/// The run waits: its status shows its place, written once (a reconcile that comes before
/// the cache shows that write does not write it again); the housekeeping refreshes it as the
/// line moves. It is woken when admitted, or looked at again at its queue timeout.
async fn wait_in_line(ctx: &Arc<Context>, run: &CodeRun, position: u32) -> Result<Action, Error> {
    let uid = run.uid().unwrap_or_default();
    let status = run.status.clone().unwrap_or_default();
    let in_status = status
        .queue_position
        .filter(|_| status.phase == Some(Phase::Queued));
    match ctx.index.shown(&uid).or(in_status) {
        Some(shown) => ctx.index.set_shown(&uid, shown),
        None => {
            let (_, wrote) = update_status(
                &ctx.runs_api(&run.namespace().unwrap_or_default()),
                run,
                |s| status::queued(s, position, WAITING),
            )
            .await?;
            if wrote {
                ctx.index.set_shown(&uid, position);
            }
        }
    }
    let waited = run
        .creation_timestamp()
        .map(|t| (status::now().0.as_second() - t.0.as_second()).max(0) as u64)
        .unwrap_or(0);
    Ok(Action::requeue(Duration::from_secs(
        ctx.cfg().queue_timeout_seconds.saturating_sub(waited) + 1,
    )))
}

const WAITING: &str = "waiting for room in the cluster";

/// Most places in line rewritten in one pass of the housekeeping.
const MOST_REFRESHED: usize = 50;

/// Refreshes the place in line shown in waiting runs' statuses, front first. A place is
/// rewritten only when it has moved a good deal (halved, or under ten), and a pass writes
/// no more places than runs left the lines since the last: so a run's wait costs at most
/// one refresh on average however long the line is, not one per run admitted ahead of it.
pub async fn refresh_positions(ctx: &Context) {
    let due = ctx.index.places_to_refresh(MOST_REFRESHED, |key| {
        let run = ctx.cluster.runs.get(key)?;
        let status = run.status.as_ref()?;
        status
            .queue_position
            .filter(|_| status.phase == Some(Phase::Queued))
    });
    for (key, uid, position) in due {
        let Some(run) = ctx.cluster.runs.get(&key) else {
            continue;
        };
        if run.phase() != Some(Phase::Queued) {
            continue;
        }
        // Guarded by the cached run's resourceVersion: a run that changed meanwhile (it was
        // admitted) is left alone.
        let status = status::queued(run.status.clone().unwrap_or_default(), position, WAITING);
        let api = ctx.runs_api(&run.namespace().unwrap_or_default());
        match status::write(&api, &run, &status).await {
            Ok(_) => ctx.index.set_shown(&uid, position),
            Err(Error::Conflict) => {}
            Err(e) => tracing::debug!(run = %key, error = %e, "refreshing a place in line"),
        }
    }
}
