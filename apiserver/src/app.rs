//! Every route of the API, and the middleware around them, in one place.
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::{self, ApiError};
use crate::state::AppState;
use crate::{admin, auth, containers, files, health, mcp, metrics, openapi, ratelimit, runs};

/// JSON bodies: code and stdin are 256 KiB each, and JSON escaping can make them up to six
/// times longer.
pub const JSON_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Extra time a waiting `POST /v1/runs` gets over its longest wait.
const WAIT_MARGIN: Duration = Duration::from_secs(30);

/// The whole application.
pub fn router(state: AppState) -> Router {
    // The API proper: a bearer token (or, for downloads, a signature), then a rate limit,
    // then (for uploads) the memory an upload may hold.
    let v1 = Router::new()
        .merge(runs::router())
        .merge(files::router(state.settings.max_upload_bytes))
        .merge(containers::router(state.settings.max_upload_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            files::budget::hold,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));

    Router::new()
        .merge(v1)
        .merge(mcp::router(&state))
        .merge(health::router())
        .merge(admin::router())
        .merge(openapi::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(
            // Outermost first.
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal("a handler panicked".into()).into_response()
                }))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    metrics::track,
                ))
                .layer(middleware::from_fn_with_state(state.clone(), deadline))
                .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT)),
        )
        .with_state(state)
}

/// The span of one request: method, route template, request id and (filled in by the auth
/// middleware) tenant. Never a header value, so never a token.
fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        tenant = tracing::field::Empty,
    )
}

/// Whether a request may wait for a run to finish: creating one, or an MCP call (which may
/// be `run_code`).
fn waits_for_a_run(method: &Method, route: Option<&str>) -> bool {
    method == Method::POST && matches!(route, Some("/v1/runs" | mcp::MCP_PATH))
}

/// Every request has a deadline; a `POST /v1/runs` (and `POST /mcp`) gets its longest wait
/// and a margin, so the deadline never cuts a wait short.
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let limit = if waits_for_a_run(req.method(), route) {
        state.settings.max_wait + WAIT_MARGIN
    } else {
        state.settings.request_timeout
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::Timeout.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_creating_a_run_may_wait_past_the_request_timeout() {
        assert!(waits_for_a_run(&Method::POST, Some("/v1/runs")));
        assert!(waits_for_a_run(&Method::POST, Some("/mcp")));
        assert!(!waits_for_a_run(&Method::GET, Some("/v1/runs")));
        assert!(!waits_for_a_run(&Method::POST, Some("/v1/files")));
        assert!(!waits_for_a_run(&Method::POST, None));
    }
}
