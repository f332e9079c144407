//! The run's phases before its output: `run.created` and `run.queued` from one look at the
//! run, then, once its program has started (or the run has ended), `run.in_progress`. Their
//! numbers are fixed, so a client resuming past one is not sent it again.
use std::sync::Arc;

use codeinterp_crds::{CodeRun, Phase};
use futures::future::ready;
use futures::{Stream, StreamExt, stream};

use super::Ctx;
use super::wire::{Emit, STAGE_CREATED, STAGE_IN_PROGRESS, STAGE_QUEUED};
use crate::runs::model::RunStatus;

/// `run.created` (the run as created: queued) and `run.queued` (its place in line), those of
/// them the client has not had.
pub fn opening(ctx: Arc<Ctx>, seq: u64) -> impl Stream<Item = Emit> {
    stream::once(async move {
        if seq > STAGE_QUEUED {
            return vec![];
        }
        let Some(summary) = ctx.summary().await else {
            return vec![Emit::Stop];
        };
        let mut run = summary.to_run(&ctx.state);
        let queued = Emit::Queued {
            queue_position: run.queue_position,
        };
        run.status = RunStatus::Queued;
        if seq == STAGE_CREATED {
            vec![Emit::Created(Box::new(run)), queued]
        } else {
            vec![queued]
        }
    })
    .flat_map(stream::iter)
}

fn has_started(run: &CodeRun) -> bool {
    run.is_finished() || run.phase() == Some(Phase::Running)
}

/// Waits for the program to start (or the run to end), then `run.in_progress` unless the
/// client has had it.
pub fn started(ctx: Arc<Ctx>, seq: u64) -> impl Stream<Item = Emit> {
    stream::once(async move {
        ctx.wait_for(has_started).await;
        if seq > STAGE_IN_PROGRESS {
            return None;
        }
        Some(match ctx.summary().await {
            Some(summary) => Emit::InProgress(Box::new(summary.to_run(&ctx.state))),
            None => Emit::Stop,
        })
    })
    .filter_map(ready)
}
