//! Changing a container's files: the API appends an operation to the CodeContainer's
//! `spec.fileOps` (numbered after every one before it), the operator carries the
//! operations out in order and writes how far it got (`status.fileOpsDone`, and the failed
//! ones in `status.fileOpErrors`), and the API answers once its operation is done.
//!
//! Two requests may append at once: each appends to the list as it read it, under that
//! version of the object (`metadata.resourceVersion` in the patch), so the second is
//! refused with 409 and reads the list again instead of writing over the first one's
//! operation. The list stays short: operations the operator has done are dropped as
//! others are appended.
//!
//! A container that has not started yet (its pod waits for room, or is still coming up)
//! carries out nothing until it does. The change is in its list then and will be done, in
//! order, when it starts: the request answers that it was accepted (202), not that the
//! server failed (a 5xx would tell a client to retry a change that is already on its way).
use std::time::Duration;

use codeinterp_crds::{CodeContainer, FileOp, FileOpKind};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;

use super::service::{expired, is_live, not_found};
use crate::error::ApiError;
use crate::runs::service::MANAGER;
use crate::state::AppState;

/// Most operations waiting in a container (the CRD's bound on the list).
pub const MAX_PENDING: usize = 256;
/// Tries at appending before the request gives up (each lost race reads the list again).
const APPEND_TRIES: usize = 12;
/// What a client refused because operations pile up should wait before trying again.
const BUSY_RETRY_SECS: u64 = 5;

/// How far a change got by the time its request answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The container carried it out.
    Done,
    /// It is in the container's list and will be carried out when the container gets to it
    /// (it has not started yet, or is still busy with the changes before this one).
    Pending,
}

impl Outcome {
    /// The status a request answers with: 200 once done, 202 while pending.
    pub fn status(self) -> axum::http::StatusCode {
        match self {
            Outcome::Done => axum::http::StatusCode::OK,
            Outcome::Pending => axum::http::StatusCode::ACCEPTED,
        }
    }
}

/// The change asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: FileOpKind,
    /// Relative to the container's folder.
    pub path: String,
    /// For a put: the stored file whose bytes go there.
    pub file_id: Option<String>,
}

/// The operations with `change` appended: those done (numbered up to `done`) dropped, the
/// new one numbered after every one there was; `None` when too many wait already.
pub fn appended(ops: &[FileOp], done: u64, change: &Change) -> Option<(Vec<FileOp>, u64)> {
    let mut pending: Vec<FileOp> = ops.iter().filter(|op| op.seq > done).cloned().collect();
    if pending.len() >= MAX_PENDING {
        return None;
    }
    let last = ops.iter().map(|op| op.seq).max().unwrap_or(0).max(done);
    let seq = last + 1;
    pending.push(FileOp {
        seq,
        kind: change.kind,
        path: change.path.clone(),
        file_id: change.file_id.clone(),
    });
    Some((pending, seq))
}

fn ops_done(c: &CodeContainer) -> u64 {
    c.status.as_ref().map_or(0, |s| s.file_ops_done)
}

/// Carries out the change in the tenant's container `id` (its CodeContainer `name`) and
/// waits for it until `deadline`: `Done` once done, `Pending` if the container has not got to
/// it by then, the operator's message if it failed.
pub async fn carry_out(
    state: &AppState,
    id: &str,
    name: &str,
    change: &Change,
    deadline: Instant,
) -> Result<Outcome, ApiError> {
    let seq = append(state, id, name, change).await?;
    wait_done(state, id, name, seq, deadline).await
}

/// Appends the change (see the module's comment for the race this avoids); its number.
async fn append(state: &AppState, id: &str, name: &str, change: &Change) -> Result<u64, ApiError> {
    let api = state.codecontainers();
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    for attempt in 0..APPEND_TRIES {
        if attempt > 0 {
            // Changes at once (and the operator's status writes, which move the version
            // too) collide: apart by a random few milliseconds, growing, they take turns.
            let most = 4u64 << attempt.min(5);
            let ms = rand::random_range(0..most);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let Some(current) = api.get_opt(name).await? else {
            return Err(not_found(id, "container_id"));
        };
        if !is_live(&current) {
            return Err(expired("container_id"));
        }
        let Some((ops, seq)) = appended(&current.spec.file_ops, ops_done(&current), change) else {
            return Err(ApiError::QuotaExceeded {
                message: format!(
                    "The container has {MAX_PENDING} file changes waiting, the most allowed; retry when it has caught up."
                ),
                code: "container_busy",
                retry_after_secs: BUSY_RETRY_SECS,
            });
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "spec": {"fileOps": ops},
        });
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(seq),
            // Another change came first: read the list again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                return Err(not_found(id, "container_id"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Unavailable(
        "the container's files are changing too often to add this one; retry".into(),
    ))
}

/// Waits until the operator has done operation `seq` (or the container ended, or went).
async fn wait_done(
    state: &AppState,
    id: &str,
    name: &str,
    seq: u64,
    deadline: Instant,
) -> Result<Outcome, ApiError> {
    let settled = |c: &CodeContainer| ops_done(c) >= seq || !is_live(c);
    let Some(latest) = state.containers.wait_until(name, deadline, settled).await else {
        return Err(not_found(id, "container_id"));
    };
    if ops_done(&latest) >= seq {
        let failed = latest
            .status
            .as_ref()
            .and_then(|s| s.file_op_errors.iter().find(|e| e.seq == seq));
        return match failed {
            Some(e) => Err(ApiError::invalid_with_code(
                format!("The container could not take the change: {}", e.message),
                "file".to_string(),
                "container_file_failed",
            )),
            None => Ok(Outcome::Done),
        };
    }
    if !is_live(&latest) {
        return Err(expired("container_id"));
    }
    Ok(Outcome::Pending)
}

/// How long a file request waits for its change: up to the request's own deadline, less a
/// margin to answer in.
pub fn wait_budget(request_timeout: Duration) -> Duration {
    const MARGIN: Duration = Duration::from_secs(5);
    const MOST: Duration = Duration::from_secs(60);
    request_timeout.saturating_sub(MARGIN).min(MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq: u64, path: &str) -> FileOp {
        FileOp {
            seq,
            kind: FileOpKind::Put,
            path: path.into(),
            file_id: Some(format!("file-{seq}")),
        }
    }

    fn delete(path: &str) -> Change {
        Change {
            kind: FileOpKind::Delete,
            path: path.into(),
            file_id: None,
        }
    }

    #[test]
    fn the_first_change_is_number_one() {
        let (ops, seq) = appended(&[], 0, &delete("a")).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].seq, ops[0].path.as_str()), (1, "a"));
    }

    #[test]
    fn a_change_follows_every_one_before_and_done_ones_are_dropped() {
        let ops = [op(1, "a"), op(2, "b"), op(3, "c")];
        let (after, seq) = appended(&ops, 2, &delete("a")).unwrap();
        assert_eq!(seq, 4);
        let seqs: Vec<u64> = after.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(after[1].kind, FileOpKind::Delete);
    }

    #[test]
    fn numbers_never_repeat_once_every_operation_was_dropped() {
        // All done and dropped from the list: the next is numbered after what was done.
        let (after, seq) = appended(&[], 7, &delete("a")).unwrap();
        assert_eq!((seq, after.len()), (8, 1));
    }

    #[test]
    fn the_list_never_grows_past_the_crds_bound() {
        let ops: Vec<FileOp> = (1..=MAX_PENDING as u64).map(|s| op(s, "x")).collect();
        assert!(appended(&ops, 0, &delete("a")).is_none());
        let (after, seq) = appended(&ops, 1, &delete("a")).unwrap();
        assert_eq!(after.len(), MAX_PENDING);
        assert_eq!(seq, MAX_PENDING as u64 + 1);
    }

    #[test]
    fn a_request_waits_within_its_own_deadline() {
        assert_eq!(
            wait_budget(Duration::from_secs(60)),
            Duration::from_secs(55)
        );
        assert_eq!(
            wait_budget(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(wait_budget(Duration::from_secs(3)), Duration::ZERO);
    }
}
