//! `/healthz` (the process answers) and `/readyz` (the cluster, storage and the caches are
//! usable; the answer is reused for a moment, so a flood of probes costs the cluster and
//! storage one check each few seconds). `/metrics` is served on its own port.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::Metrics;
use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a readiness answer is reused.
pub const READINESS_TTL: Duration = Duration::from_secs(3);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The app of the metrics port.
pub fn metrics_app(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                let mut response = metrics.encode().into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
        }),
    )
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    pub status: &'static str,
    /// Each readiness check: `ok` or what is wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Check {
    pub name: &'static str,
    pub status: String,
}

/// The last readiness answer and when it was made.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, bool, Health)>>,
    /// One check at a time: concurrent probes wait for it rather than start their own.
    checking: tokio::sync::Mutex<()>,
}

/// Liveness
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: vec![],
    })
}

async fn check<E: std::fmt::Display>(
    name: &'static str,
    fut: impl Future<Output = Result<(), E>>,
) -> Check {
    let status = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => {
            tracing::warn!(check = name, error = %e, "readiness check failed");
            "unavailable".to_string()
        }
        Err(_) => "timed out".to_string(),
    };
    Check { name, status }
}

fn fresh(readiness: &Readiness) -> Option<(bool, Health)> {
    let last = readiness.last.lock().expect("lock");
    last.as_ref()
        .filter(|(at, _, _)| at.elapsed() < READINESS_TTL)
        .map(|(_, ready, health)| (*ready, health.clone()))
}

/// Readiness
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let answer = match fresh(&state.readiness) {
        Some(answer) => answer,
        None => {
            let _one = state.readiness.checking.lock().await;
            match fresh(&state.readiness) {
                Some(answer) => answer,
                None => {
                    let answer = check_now(&state).await;
                    *state.readiness.last.lock().expect("lock") =
                        Some((Instant::now(), answer.0, answer.1.clone()));
                    answer
                }
            }
        }
    };
    let code = if answer.0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(answer.1)).into_response()
}

async fn check_now(state: &AppState) -> (bool, Health) {
    let (kube, store) = tokio::join!(
        check("kubernetes", async {
            state.kube.apiserver_version().await.map(|_| ())
        }),
        check("storage", state.store.ping()),
    );
    let cache = Check {
        name: "run_cache",
        status: if state.runs.is_synced() {
            "ok".into()
        } else {
            "not synced yet".into()
        },
    };
    let containers = Check {
        name: "container_cache",
        status: if state.containers.is_synced() {
            "ok".into()
        } else {
            "not synced yet".into()
        },
    };
    let checks = vec![kube, store, cache, containers];
    let ready = checks.iter().all(|c| c.status == "ok");
    let body = Health {
        status: if ready { "ready" } else { "not_ready" },
        checks,
    };
    (ready, body)
}
