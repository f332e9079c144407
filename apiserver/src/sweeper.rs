//! The sweeper: every `SWEEP_INTERVAL_SECONDS` each tenant's objects in storage are listed
//! once; what is past `FILE_RETENTION_DAYS` or `RUN_RETENTION_DAYS` is deleted, and the rest
//! is the tenant's usage, kept here for its quota ([`crate::quota`]) and in storage for the
//! operator. Every replica sweeps: a delete of what is already gone succeeds, so replicas
//! never fail one another, and a sweep that fails is logged and tried again at the next
//! interval. It is one of the tasks `serve` owns: it never ends by itself.
use std::convert::Infallible;
use std::time::Duration;

use codeinterp_store::{Measured, Retention};

use crate::state::{AppState, now_unix};

/// What a sweep at `now` removes: what was last written longer ago than each retention.
pub fn retention(now: i64, files: Option<Duration>, runs: Option<Duration>) -> Retention {
    let before = |keep: Option<Duration>| keep.map(|d| now - d.as_secs() as i64);
    Retention {
        files_before: before(files),
        runs_before: before(runs),
    }
}

/// Sweeps now, then every interval, forever.
pub async fn run(state: AppState) -> Infallible {
    let mut every = tokio::time::interval(state.settings.sweep_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        sweep(&state).await;
    }
}

async fn sweep(state: &AppState) {
    let settings = &state.settings;
    let retention = retention(now_unix(), settings.file_retention, settings.run_retention);
    let tenants = match state.store.tenants().await {
        Ok(tenants) => tenants,
        Err(e) => {
            tracing::warn!(error = %e, "listing the tenants in storage failed; sweeping later");
            return;
        }
    };
    for tenant in tenants {
        let measured_at = now_unix();
        let swept = match state.store.sweep_tenant(&tenant, &retention).await {
            Ok(swept) => swept,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "sweeping a tenant's storage failed");
                continue;
            }
        };
        if swept.files_removed + swept.run_objects_removed > 0 {
            tracing::info!(
                %tenant,
                files = swept.files_removed,
                run_objects = swept.run_objects_removed,
                "deleted what was past retention"
            );
        }
        if state.quota.limit().is_none() {
            continue;
        }
        let measured = Measured {
            bytes: swept.bytes,
            measured_at,
        };
        // Written when it changed: a tenant whose usage stays put costs no write.
        if !state.quota.measure(&tenant, measured) {
            continue;
        }
        if let Err(e) = state.store.put_usage(&tenant, &measured).await {
            tracing::warn!(%tenant, error = %e, "keeping a tenant's usage for the operator failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_removes_what_was_written_before_its_days_and_none_keeps_all() {
        let day = Duration::from_secs(86_400);
        let r = retention(100 * 86_400, Some(30 * day), None);
        assert_eq!(r.files_before, Some(70 * 86_400));
        assert_eq!(r.runs_before, None);
    }
}
