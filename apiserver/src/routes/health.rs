//! `/healthz` (the process answers), `/readyz` (the cluster, storage and the run cache are
//! usable) and `/metrics` (Prometheus text).
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    pub status: &'static str,
    /// Each readiness check: `ok` or what is wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub name: &'static str,
    pub status: String,
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

/// Readiness
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(state): State<AppState>) -> Response {
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
    let checks = vec![kube, store, cache];
    let ready = checks.iter().all(|c| c.status == "ok");
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ready { "ready" } else { "not_ready" },
        checks,
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
