//! The memory uploads may hold. An upload streams to object storage a part at a time, and a
//! part is held until it is whole (S3's parts are at least 5 MiB), so each upload in
//! progress holds up to its parts whatever its pace: forty uploads trickling in at once
//! once held 200 MiB. Each upload therefore reserves what it may hold before a byte of it is
//! read: no more than its declared length, at most its parts. The reservations of all
//! uploads, and of each tenant's, have ceilings; an upload past one is refused at once with
//! 429 and `Retry-After`, its body unread, and the reservation is returned when the request
//! ends, however it ends.
//!
//! Every multipart request is an upload (`/v1/files`, a container's files): the layer that
//! reserves sits in front of them all, after authentication and the rate limit, so neither
//! an unknown caller nor a throttled one takes any of it. It also refuses at once an upload
//! whose declared length cannot fit the tenant's storage quota ([`crate::quota`]).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Room for the chunk an upload is adding to a part when the part fills up (the server's
/// read buffer, at most about 400 KiB).
pub const CHUNK_BYTES: u64 = 512 * 1024;
/// How soon a refused upload may try again: uploads take seconds at least.
const RETRY_AFTER_SECS: u64 = 5;

/// The ceilings, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    pub server: u64,
    pub per_tenant: u64,
}

/// Why an upload may not start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant's uploads in progress hold `held` bytes of its `ceiling`.
    Tenant { held: u64, ceiling: u64 },
    /// The server's uploads hold all it gives them.
    Server,
}

/// What an upload reserves: what it may hold, no more than it declared it would send.
pub fn to_reserve(declared: Option<u64>, may_hold: u64) -> u64 {
    declared.map_or(may_hold, |n| n.min(may_hold))
}

/// Whether `want` bytes fit beside what is held now.
pub fn admit(
    server_held: u64,
    tenant_held: u64,
    want: u64,
    ceilings: Ceilings,
) -> Result<(), Refusal> {
    if tenant_held.saturating_add(want) > ceilings.per_tenant {
        return Err(Refusal::Tenant {
            held: tenant_held,
            ceiling: ceilings.per_tenant,
        });
    }
    if server_held.saturating_add(want) > ceilings.server {
        return Err(Refusal::Server);
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Held {
    server: u64,
    tenants: HashMap<String, u64>,
}

/// What uploads in progress hold, in all and per tenant.
#[derive(Debug)]
pub struct UploadBudget {
    ceilings: Ceilings,
    held: Mutex<Held>,
}

/// Bytes an upload holds until it is dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<UploadBudget>,
    tenant: String,
    bytes: u64,
}

impl UploadBudget {
    pub fn new(ceilings: Ceilings) -> Self {
        UploadBudget {
            ceilings,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn reserve(self: &Arc<Self>, tenant: &str, bytes: u64) -> Result<Reservation, Refusal> {
        let mut held = self.held();
        let tenant_held = held.tenants.get(tenant).copied().unwrap_or(0);
        admit(held.server, tenant_held, bytes, self.ceilings)?;
        held.server += bytes;
        *held.tenants.entry(tenant.to_string()).or_default() += bytes;
        Ok(Reservation {
            budget: self.clone(),
            tenant: tenant.to_string(),
            bytes,
        })
    }

    /// What all uploads hold now.
    pub fn held_bytes(&self) -> u64 {
        self.held().server
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.budget.held();
        held.server -= self.bytes;
        if let Some(t) = held.tenants.get_mut(&self.tenant) {
            *t -= self.bytes;
            if *t == 0 {
                held.tenants.remove(&self.tenant);
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn refused(refusal: Refusal) -> ApiError {
    let message = match refusal {
        Refusal::Tenant { held, ceiling } => format!(
            "Too many uploads in progress for this API key: they hold {} of the {} it may \
             (UPLOAD_BUFFER_PER_TENANT_MB). Retry after {RETRY_AFTER_SECS} seconds, or when \
             one of them has finished.",
            mib(held),
            mib(ceiling)
        ),
        Refusal::Server => format!(
            "The server is receiving as many uploads as it can (UPLOAD_BUFFER_MB). Retry \
             after {RETRY_AFTER_SECS} seconds."
        ),
    };
    ApiError::QuotaExceeded {
        message,
        code: "upload_capacity_exceeded",
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

fn is_upload(req: &Request) -> bool {
    req.method() == Method::POST
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            })
}

/// The layer in front of uploads: an upload runs holding its reservation, or is refused.
pub async fn hold(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    let Some(caller) = caller.filter(|_| is_upload(&req)) else {
        return next.run(req).await;
    };
    // The most the body can be: its Content-Length, if it has one.
    let declared = axum::body::HttpBody::size_hint(req.body()).upper();
    // An upload that cannot fit the tenant's storage is refused before its body is stored.
    if let Err(e) = crate::quota::check_upload(&state, &caller.tenant, declared) {
        return drained(req, declared, e).await;
    }
    let want = to_reserve(declared, state.store.upload_held_bytes(CHUNK_BYTES));
    match state.uploads.reserve(&caller.tenant, want) {
        Ok(reservation) => {
            let response = next.run(req).await;
            drop(reservation);
            response
        }
        Err(refusal) => drained(req, declared, refused(refusal)).await,
    }
}

/// The most of a refused upload's body read (and dropped) before the answer.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;
/// How long it may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The refusal, once what is left of a small body has been read and dropped: a client still
/// sending reads the answer instead of a connection reset under its write (reqwest and
/// others report the broken pipe, not the 413). A body said to be larger than
/// [`DRAIN_BYTES`] is not read at all: its connection closes after the answer.
async fn drained(req: Request, declared: Option<u64>, refusal: ApiError) -> Response {
    use futures::StreamExt;
    if declared.is_none_or(|n| n <= DRAIN_BYTES) {
        let mut body = req.into_body().into_data_stream();
        let mut left = DRAIN_BYTES;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(chunk)) = body.next().await {
                match left.checked_sub(chunk.len() as u64) {
                    Some(rest) => left = rest,
                    None => break,
                }
            }
        })
        .await;
    }
    refusal.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const CEILINGS: Ceilings = Ceilings {
        server: 64 * MIB,
        per_tenant: 32 * MIB,
    };

    #[test]
    fn an_upload_reserves_what_it_may_hold_or_less_if_it_says_it_is_smaller() {
        let may_hold = 5 * MIB + CHUNK_BYTES;
        assert_eq!(to_reserve(None, may_hold), may_hold);
        assert_eq!(to_reserve(Some(30 * MIB), may_hold), may_hold);
        assert_eq!(to_reserve(Some(1000), may_hold), 1000);
    }

    #[test]
    fn a_tenant_is_refused_past_its_ceiling_and_the_server_past_its_own() {
        assert_eq!(admit(0, 0, 32 * MIB, CEILINGS), Ok(()));
        assert_eq!(
            admit(10 * MIB, 30 * MIB, 3 * MIB, CEILINGS),
            Err(Refusal::Tenant {
                held: 30 * MIB,
                ceiling: 32 * MIB
            })
        );
        assert_eq!(admit(62 * MIB, 0, 3 * MIB, CEILINGS), Err(Refusal::Server));
        assert_eq!(admit(61 * MIB, 29 * MIB, 3 * MIB, CEILINGS), Ok(()));
    }

    #[test]
    fn a_reservation_is_returned_when_dropped_and_others_tenants_still_fit() {
        let budget = Arc::new(UploadBudget::new(CEILINGS));
        let held: Vec<_> = (0..5)
            .map(|_| budget.reserve("flood", 6 * MIB).unwrap())
            .collect();
        assert!(matches!(
            budget.reserve("flood", 6 * MIB),
            Err(Refusal::Tenant { .. })
        ));
        let polite = budget.reserve("polite", 6 * MIB).unwrap();
        drop(held);
        assert_eq!(budget.held_bytes(), 6 * MIB);
        drop(polite);
        assert_eq!(budget.held_bytes(), 0);
        assert!(budget.held().tenants.is_empty());
        budget.reserve("flood", 6 * MIB).unwrap();
    }

    #[test]
    fn a_refusal_is_429_with_retry_after_and_names_the_setting() {
        let e = refused(Refusal::Tenant {
            held: 30 * MIB,
            ceiling: 32 * MIB,
        });
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        let body = e.body().error;
        assert_eq!(body.code.as_deref(), Some("upload_capacity_exceeded"));
        assert!(
            body.message.contains("UPLOAD_BUFFER_PER_TENANT_MB"),
            "{}",
            body.message
        );
        let r = refused(Refusal::Server).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }
}
