//! Bearer-token authentication. The middleware resolves a token to a [`Caller`] (or refuses
//! a wrong one); handlers that need a tenant take `Caller` as an extractor, which answers
//! 401 when no token was given. Requests without a token go on, because a signed download
//! URL needs none. Every failed attempt counts against the client's address: past its
//! budget the address gets 429, whatever it sends, until the budget refills.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::{ApiKey, Settings, token_digest};
use crate::error::ApiError;
use crate::ratelimit::retry_after_secs;
use crate::state::AppState;

/// The client's address: the connection's peer, or the last address of the trusted proxy's
/// header when one is configured. Requests with neither (tests) are `0.0.0.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    pub fn of(req: &Request, settings: &Settings) -> Self {
        if let Some(header) = &settings.trusted_proxy_header
            && let Some(addr) = req
                .headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|a| a.trim().parse::<IpAddr>().ok())
        {
            return ClientAddr(addr);
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        // An IPv4 client of a dual-stack socket is the same client as over IPv4.
        ClientAddr(match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        })
    }
}

/// Who is calling: the tenant (the key's label) and which key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// Index of the key in `API_KEYS` (each key has its own rate limit).
    pub key: usize,
}

/// The configured keys, kept as digests.
#[derive(Debug)]
pub struct Keys {
    keys: Vec<ApiKey>,
}

impl Keys {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Keys { keys }
    }

    pub fn all(&self) -> &[ApiKey] {
        &self.keys
    }

    /// Compares the token's digest with every key's in constant time, without stopping at
    /// the first match, so neither the position nor the length of a key leaks.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let digest = token_digest(token);
        let mut found: Option<usize> = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.token_sha256.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found.map(|i| Caller {
            tenant: self.keys[i].label.clone(),
            key: i,
        })
    }
}

/// What an `Authorization` header says.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    None,
    Bearer(&'a str),
    Malformed,
}

pub fn credentials(header: Option<&str>) -> Credentials<'_> {
    let Some(value) = header else {
        return Credentials::None;
    };
    let mut parts = value.trim().splitn(2, ' ');
    match (parts.next(), parts.next().map(str::trim)) {
        (Some(scheme), Some(token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() =>
        {
            Credentials::Bearer(token)
        }
        _ => Credentials::Malformed,
    }
}

fn incorrect_key() -> ApiError {
    ApiError::Unauthorized {
        message:
            "Incorrect API key provided. You can find your API key in your deployment's API_KEYS."
                .into(),
        code: Some("invalid_api_key"),
    }
}

/// A failed attempt: 401 (or whatever `refusal` is), or 429 once the address is over its
/// budget of failures.
pub fn failure(state: &AppState, addr: ClientAddr, refusal: ApiError) -> Response {
    state.metrics.auth_failed();
    match state.rate_limits.failed(addr.0) {
        Some(wait) => ApiError::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
        .into_response(),
        None => refusal.into_response(),
    }
}

/// Middleware: resolves the bearer token, refuses a wrong or malformed one, and records
/// the tenant on the request's span.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let addr = ClientAddr::of(&req, &state.settings);
    req.extensions_mut().insert(addr);
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let credentials = credentials(header);
    if credentials != Credentials::None
        && let Some(wait) = state.rate_limits.blocked(addr.0)
    {
        // Over its budget of failures: no token is even looked at, so a right guess cannot
        // be told from a wrong one.
        return ApiError::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
        .into_response();
    }
    match credentials {
        Credentials::None => {}
        Credentials::Malformed => {
            let refusal = ApiError::Unauthorized {
                message: "The Authorization header must be 'Bearer <API key>'.".into(),
                code: Some("invalid_api_key"),
            };
            return failure(&state, addr, refusal);
        }
        Credentials::Bearer(token) => match state.keys.authenticate(token) {
            Some(caller) => {
                tracing::Span::current().record("tenant", caller.tenant.as_str());
                req.extensions_mut().insert(caller);
            }
            None => return failure(&state, addr, incorrect_key()),
        },
    }
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Unauthorized {
                message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".into(),
                code: None,
            }
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_api_keys;

    #[test]
    fn a_known_token_resolves_to_its_tenant_and_key() {
        let keys = Keys::new(parse_api_keys("t1:acme:1:1,t2:beta:1:1,t3:acme:1:1").unwrap());
        assert_eq!(
            keys.authenticate("t2"),
            Some(Caller {
                tenant: "beta".into(),
                key: 1
            })
        );
        assert_eq!(keys.authenticate("t3").unwrap().key, 2);
        assert_eq!(keys.authenticate("t"), None);
        assert_eq!(keys.authenticate("t22"), None);
        assert_eq!(keys.authenticate(""), None);
    }

    #[test]
    fn only_bearer_credentials_are_understood() {
        assert_eq!(credentials(None), Credentials::None);
        assert_eq!(credentials(Some("Bearer abc")), Credentials::Bearer("abc"));
        assert_eq!(
            credentials(Some("bearer  abc ")),
            Credentials::Bearer("abc")
        );
        assert_eq!(credentials(Some("Basic YWJj")), Credentials::Malformed);
        assert_eq!(credentials(Some("Bearer")), Credentials::Malformed);
        assert_eq!(credentials(Some("Bearer ")), Credentials::Malformed);
    }
}
