//! Bearer-token authentication. The middleware resolves a token to a [`Caller`] (or refuses
//! a wrong one); handlers that need a tenant take `Caller` as an extractor, which answers
//! 401 when no token was given. Requests without a token go on, because a signed download
//! URL needs none.
use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::{ApiKey, token_digest};
use crate::error::ApiError;
use crate::state::AppState;

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

/// Middleware: resolves the bearer token, refuses a wrong or malformed one, and records
/// the tenant on the request's span.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    match credentials(header) {
        Credentials::None => {}
        Credentials::Malformed => {
            return ApiError::Unauthorized {
                message: "The Authorization header must be 'Bearer <API key>'.".into(),
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
        Credentials::Bearer(token) => match state.keys.authenticate(token) {
            Some(caller) => {
                tracing::Span::current().record("tenant", caller.tenant.as_str());
                req.extensions_mut().insert(caller);
            }
            None => return incorrect_key().into_response(),
        },
    }
    next.run(req).await
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
