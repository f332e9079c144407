//! `/mcp`: the Model Context Protocol endpoint (Streamable HTTP, spec 2025-06-18), through
//! the official Rust SDK (`rmcp`), so agents that speak MCP (OpenAI's Responses API,
//! Anthropic's MCP connector, any MCP client) can run code here with no code of their own.
//!
//! The same keys, tenants, rate limits and quotas as the REST API: the request goes through
//! [`access`] (Origin, then the REST API's own authentication and token bucket, with MCP's
//! 401 challenge), and the tools call the run service directly, never the REST API over
//! HTTP. [`server`] is the MCP server (its tools and how a failure becomes a tool result),
//! [`runs`] the run tools, [`content`] a run as MCP content (text, images, links), and
//! [`progress`] a run's live output as progress notifications.
//!
//! The transport is stateless: every POST is served on its own (no `Mcp-Session-Id`), so any
//! replica of the API answers any request, as with REST. A plain answer is JSON; an answer
//! preceded by progress notifications is a short event stream. A long `tools/call` may wait
//! for its run as long as `POST /v1/runs` does (the request deadline treats both alike).
mod access;
mod containers;
mod content;
mod progress;
mod runs;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::state::AppState;
use crate::{auth, ratelimit};

pub use access::{MCP_PATH, METADATA_PATH, parse_allowed_origins};
pub use server::McpServer;

/// Comments that keep an event stream (an answer with progress) open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The transport's settings. `Host` is not checked: the service is meant to be reached by
/// its public name, requests carry a bearer key (nothing a rebound page could send), and
/// `Origin` is checked in [`access`].
fn transport() -> StreamableHttpServerConfig {
    StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(Some(KEEP_ALIVE))
        .disable_allowed_hosts()
}

/// `/mcp` and its protected-resource metadata.
pub fn router(state: &AppState) -> Router<AppState> {
    let for_service = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(McpServer::new(for_service.clone())),
        Arc::new(NeverSessionManager::default()),
        transport(),
    );
    // Outermost last: Origin, the challenge on 401s, the key, its bucket, then a key is
    // required (the REST middleware lets requests without one through for signed URLs).
    let endpoint = Router::new()
        .route_service(MCP_PATH, service)
        .layer(middleware::from_fn(access::require_key))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            access::add_challenge,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            access::check_origin,
        ));
    Router::new()
        .merge(endpoint)
        .route(METADATA_PATH, get(access::metadata))
        .route(access::METADATA_ROOT_PATH, get(access::metadata))
}
