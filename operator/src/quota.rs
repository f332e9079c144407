//! The tenant's storage quota (`STORAGE_QUOTA_MB`) where the operator meets it: a finished
//! run's output files are kept only if they fit what the tenant has left. A run is accepted
//! only while its tenant has room (the REST API's door), so what is refused here is what a
//! run would take it past: the run still ends with its exit code, stdout and stderr, and
//! without its output files, as `storage_quota_exceeded` (or, if it had already failed for
//! another reason, with that reason and a note). Output and record are kept whatever the
//! quota: they are small and capped per run.
//!
//! What the tenant stores is what the REST API's last sweep measured (`usage/<tenant>.json`)
//! plus what this process stored for it since. A container's files are its folder's (capped
//! by `CONTAINER_DISK_MB`) and are kept.
use codeinterp_crds::{Phase, Reason};

use crate::artifacts::StoredFile;
use crate::context::Context;
use crate::outcome::Outcome;

/// The outcome of a run whose `dropped` output files (`bytes` of them) did not fit the
/// `room` its tenant had left.
pub fn without_files(outcome: Outcome, dropped: usize, bytes: u64, room: u64) -> Outcome {
    let why = format!(
        "{dropped} output file(s) of {bytes} bytes were not kept: the tenant's storage quota \
         had {room} bytes left"
    );
    match outcome.reason {
        Some(_) => Outcome {
            message: Some(match outcome.message {
                Some(m) => format!("{m}; {why}"),
                None => why,
            }),
            ..outcome
        },
        None => Outcome {
            phase: Phase::Failed,
            reason: Some(Reason::StorageQuotaExceeded),
            message: Some(why),
            ..outcome
        },
    }
}

/// What the tenant may still store, as far as this process knows; `None` without a quota.
async fn room(ctx: &Context, tenant: &str) -> Option<u64> {
    ctx.quota.limit()?;
    match ctx.store.usage(tenant).await {
        Ok(Some(measured)) => {
            ctx.quota.measure(tenant, measured);
        }
        Ok(None) => {}
        // What was known before stands.
        Err(e) => tracing::warn!(%tenant, error = %e, "reading the tenant's storage usage"),
    }
    ctx.quota.room(tenant)
}

/// The files of a finished run to keep, and its outcome: all of them, or none when they do
/// not fit the tenant's quota (their bytes, already in storage, are removed).
pub async fn keep<'a>(
    ctx: &Context,
    tenant: &str,
    files: &'a [StoredFile],
    outcome: Outcome,
) -> (&'a [StoredFile], Outcome) {
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let Some(room) = room(ctx, tenant).await.filter(|room| bytes > *room) else {
        return (files, outcome);
    };
    for file in files {
        if let Err(e) = ctx.store.discard_upload(tenant, &file.id).await {
            tracing::warn!(%tenant, file = %file.id, error = %e, "removing an output file past the quota");
        }
    }
    (&[], without_files(outcome, files.len(), bytes, room))
}

/// Counts what a run's results took until the next sweep measures them.
pub fn stored(
    ctx: &Context,
    tenant: &str,
    record: Option<&runner_protocol::Record>,
    files: &[StoredFile],
    now: i64,
) {
    let output = record.map_or(0, |r| r.stdout.len() + r.stderr.len()) as u64;
    let files: u64 = files.iter().map(|f| f.bytes).sum();
    ctx.quota.record(tenant, now, (output + files) as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_run_whose_files_do_not_fit_fails_with_its_exit_code_kept() {
        let completed = Outcome::completed(Some(0));
        let o = without_files(completed, 2, 3000, 100);
        assert_eq!(o.phase, Phase::Failed);
        assert_eq!(o.reason, Some(Reason::StorageQuotaExceeded));
        assert_eq!(o.exit_code, Some(0));
        let message = o.message.unwrap();
        assert!(
            message.contains("2 output file(s) of 3000 bytes"),
            "{message}"
        );
    }

    #[test]
    fn a_run_that_failed_already_keeps_its_reason_and_is_told_about_its_files() {
        let timed_out = Outcome::ended(Reason::TimedOut, "the program ran past its timeout");
        let o = without_files(timed_out, 1, 10, 0);
        assert_eq!(o.reason, Some(Reason::TimedOut));
        assert_eq!(o.phase, Phase::TimedOut);
        let message = o.message.unwrap();
        assert!(message.starts_with("the program ran past its timeout; 1 output file"));
    }
}
