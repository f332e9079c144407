//! Each tenant's storage quota (`STORAGE_QUOTA_MB`): its files and its runs' records and
//! output, as the last sweep measured them ([`crate::sweeper`]) plus what this replica
//! stored or deleted since. An upload may take what is left and no more (413 past it, the
//! bytes it sent removed); a new run is refused (429) while nothing is left. A run accepted
//! under the quota whose output files would take the tenant past it ends without them
//! (the operator's side, `storage_quota_exceeded`).
//!
//! With several replicas each knows its own uploads since the last sweep, not the others':
//! a tenant can overshoot by what the other replicas accept in one sweep interval.
use crate::error::ApiError;
use crate::state::{AppState, now_unix};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The bytes an upload of the tenant may take; `None` without a quota.
pub fn upload_room(state: &AppState, tenant: &str) -> Option<u64> {
    state.quota.room(tenant)
}

/// Counts bytes the tenant stored (positive) or deleted (negative) through this replica.
pub fn record(state: &AppState, tenant: &str, delta: i64) {
    state.quota.record(tenant, now_unix(), delta);
}

/// Refuses, before it is read, an upload that cannot fit what the tenant has left: none is
/// left, or its body (`declared` bytes, its Content-Length) holds a larger file than that
/// even without its multipart framing. Others are cut off as they stream past the room.
pub fn check_upload(state: &AppState, tenant: &str, declared: Option<u64>) -> Result<(), ApiError> {
    let Some(room) = upload_room(state, tenant) else {
        return Ok(());
    };
    let framing = crate::files::MULTIPART_OVERHEAD as u64;
    let smallest_file = declared.map_or(0, |n| n.saturating_sub(framing));
    if room == 0 || smallest_file > room {
        return Err(upload_refused(state, tenant));
    }
    Ok(())
}

/// The answer to an upload that does not fit what the tenant has left.
pub fn upload_refused(state: &AppState, tenant: &str) -> ApiError {
    let used = state.quota.used(tenant);
    let limit = state.quota.limit().unwrap_or_default();
    ApiError::StorageQuotaExceeded(format!(
        "This file does not fit your storage quota: your files and runs take {} of the {} \
         you may store (STORAGE_QUOTA_MB). Delete files you no longer need \
         (DELETE /v1/files/{{id}}) and try again.",
        mib(used),
        mib(limit)
    ))
}

/// Refuses a new run while the tenant stores all its quota allows: the run's results would
/// have nowhere to go.
pub fn check_run_room(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    match state.quota.room(tenant) {
        Some(0) => {}
        _ => return Ok(()),
    }
    let interval = state.settings.sweep_interval.as_secs();
    Err(ApiError::QuotaExceeded {
        message: format!(
            "Your files and runs take {} of the {} you may store (STORAGE_QUOTA_MB), so no new \
             run can start. Delete files you no longer need (DELETE /v1/files/{{id}}); \
             storage is measured again every {interval} seconds.",
            mib(state.quota.used(tenant)),
            mib(state.quota.limit().unwrap_or_default())
        ),
        code: "storage_quota_exceeded",
        retry_after_secs: interval.max(1),
    })
}
