//! Who may reach `/mcp`, at the HTTP layer, before the MCP SDK sees a request.
//!
//! - **Origin** (the Streamable HTTP transport's rule against DNS rebinding): a request that
//!   carries an `Origin` is refused with 403 unless that origin is in `MCP_ALLOWED_ORIGINS`
//!   (none by default, so no web page may call it). Agents and SDKs send no `Origin` and
//!   pass. Checked first, so a page cannot even spend the address's budget of failed keys.
//! - **Bearer keys** are those of the REST API (`auth::authenticate`, then the key's token
//!   bucket): here a key is required. Every 401 carries the `WWW-Authenticate` challenge the
//!   MCP authorization spec (2025-06-18) asks of a protected resource: `Bearer` with the URL
//!   of its OAuth 2.0 Protected Resource Metadata (RFC 9728), which is served at
//!   `/.well-known/oauth-protected-resource/mcp`. The metadata names no authorization server:
//!   keys are issued by whoever runs the service (`API_KEYS`), not obtained through OAuth.
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Where the MCP endpoint is mounted.
pub const MCP_PATH: &str = "/mcp";
/// RFC 9728's well-known path for the resource `/mcp` (the resource's path appended).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";
/// The same document at the bare well-known path, which clients try next.
pub const METADATA_ROOT_PATH: &str = "/.well-known/oauth-protected-resource";

/// An origin as browsers send it, reduced to what RFC 6454 compares: scheme, host and port
/// (the scheme's default port when none is written). `null` stays `null`.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim();
    if origin == "null" {
        return Some("null".into());
    }
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let authority: axum::http::uri::Authority = rest.parse().ok()?;
    let port = authority.port_u16().or(match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    });
    let host = authority.host().to_ascii_lowercase();
    Some(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// `MCP_ALLOWED_ORIGINS`: comma-separated origins (`https://app.example.com`,
/// `http://localhost:3000`, or `null`), normalized; an entry that is not an origin is an
/// error naming it.
pub fn parse_allowed_origins(raw: &str) -> Result<Vec<String>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            normalize_origin(o).ok_or_else(|| {
                format!(
                    "MCP_ALLOWED_ORIGINS entry {o:?} is not an origin (scheme://host[:port], or null)"
                )
            })
        })
        .collect()
}

/// Whether a request with this `Origin` header (if any) may reach the endpoint.
pub fn origin_allowed(origin: Option<&HeaderValue>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    origin
        .to_str()
        .ok()
        .and_then(normalize_origin)
        .is_some_and(|o| allowed.contains(&o))
}

/// Middleware, outermost on `/mcp`: refuses a foreign `Origin` with 403.
pub async fn check_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if origin_allowed(
        req.headers().get(header::ORIGIN),
        &state.settings.mcp_allowed_origins,
    ) {
        return next.run(req).await;
    }
    ApiError::Forbidden {
        message: "This Origin may not call the MCP endpoint; the service's MCP_ALLOWED_ORIGINS lists those that may.".into(),
        code: "origin_not_allowed",
    }
    .into_response()
}

/// The URL of the metadata document, as `PUBLIC_BASE_URL` tells where clients reach us.
pub fn metadata_url(public_base_url: &str) -> String {
    format!("{public_base_url}{METADATA_PATH}")
}

/// The challenge of a 401: RFC 6750's `Bearer` with RFC 9728's `resource_metadata`; a
/// request that sent a token is told it was not valid.
pub fn challenge(public_base_url: &str, sent_a_token: bool) -> String {
    let url = metadata_url(public_base_url);
    let error = if sent_a_token {
        r#", error="invalid_token", error_description="The API key is not valid""#
    } else {
        ""
    };
    format!(r#"Bearer realm="codeinterp", resource_metadata="{url}"{error}"#)
}

/// Middleware, around authentication on `/mcp`: every 401 carries the challenge.
pub async fn add_challenge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let sent_a_token = req.headers().contains_key(header::AUTHORIZATION);
    let mut response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let value = challenge(&state.settings.public_base_url, sent_a_token);
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// Middleware, inside authentication: `/mcp` needs a key (the REST middleware lets requests
/// without one through, for signed downloads). The refusal is the REST API's own.
pub async fn require_key(_caller: Caller, req: Request, next: Next) -> Response {
    next.run(req).await
}

/// OAuth 2.0 Protected Resource Metadata (RFC 9728) of the MCP endpoint.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ResourceMetadata {
    pub resource: String,
    pub resource_name: &'static str,
    pub bearer_methods_supported: Vec<&'static str>,
    pub resource_documentation: String,
}

pub fn resource_metadata(public_base_url: &str) -> ResourceMetadata {
    ResourceMetadata {
        resource: format!("{public_base_url}{MCP_PATH}"),
        resource_name: "codeinterp: run code in sandboxed pods",
        bearer_methods_supported: vec!["header"],
        resource_documentation: format!("{public_base_url}/openapi.json"),
    }
}

pub async fn metadata(State(state): State<AppState>) -> Response {
    let mut response = Json(resource_metadata(&state.settings.public_base_url)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        let allowed =
            parse_allowed_origins("https://App.example.com, http://localhost:3000").unwrap();
        let ok = |o: &str| origin_allowed(Some(&HeaderValue::from_str(o).unwrap()), &allowed);
        assert!(ok("https://app.example.com"));
        assert!(ok("https://app.example.com:443"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com:8443"));
        assert!(!ok("http://localhost:3001"));
        assert!(!ok("https://evil.example"));
        assert!(!ok("null"));
        assert!(!ok("not an origin"));
    }

    #[test]
    fn without_an_allow_list_only_requests_without_an_origin_pass() {
        assert!(origin_allowed(None, &[]));
        let page = HeaderValue::from_static("http://localhost:8080");
        assert!(!origin_allowed(Some(&page), &[]));
    }

    #[test]
    fn null_passes_only_when_listed() {
        let null = HeaderValue::from_static("null");
        assert!(origin_allowed(
            Some(&null),
            &parse_allowed_origins("null").unwrap()
        ));
        assert!(!origin_allowed(
            Some(&null),
            &parse_allowed_origins("http://a").unwrap()
        ));
    }

    #[test]
    fn an_allow_list_entry_that_is_not_an_origin_is_named() {
        for bad in ["app.example.com", "https://a.com/path", "https://", "://x"] {
            let e = parse_allowed_origins(&format!("https://ok.example,{bad}")).unwrap_err();
            assert!(e.contains("MCP_ALLOWED_ORIGINS") && e.contains(bad), "{e}");
        }
        assert_eq!(parse_allowed_origins(" , ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_challenge_points_at_the_metadata_and_says_when_a_key_was_wrong() {
        assert_eq!(
            challenge("https://ci.example", false),
            r#"Bearer realm="codeinterp", resource_metadata="https://ci.example/.well-known/oauth-protected-resource/mcp""#
        );
        assert!(
            challenge("https://ci.example", true).ends_with(
                r#"error="invalid_token", error_description="The API key is not valid""#
            )
        );
        let doc = resource_metadata("https://ci.example");
        assert_eq!(doc.resource, "https://ci.example/mcp");
        assert_eq!(doc.bearer_methods_supported, ["header"]);
    }
}
