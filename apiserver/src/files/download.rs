//! Who may download a file: the tenant of a bearer token, or whoever holds a signed URL. A
//! signed URL's signature is checked first, in constant time, before any bucket is touched:
//! a forged or expired link costs its sender a failed attempt and costs a valid link, the
//! anonymous rate limit and object storage nothing. Only a valid link takes from its
//! address's anonymous bucket and looks the file's tenant up.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{self, Caller, ClientAddr};
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::ratelimit::retry_after_secs;
use crate::signing::SignatureError;
use crate::state::{AppState, now_unix};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Unix seconds; with `signature`, the URL works without a bearer token until then.
    expires: Option<i64>,
    /// Hex HMAC-SHA256 of `{id}\n{expires}`.
    signature: Option<String>,
}

/// What a download request carries to prove its right to the file.
#[derive(Debug, PartialEq, Eq)]
enum Credential {
    Bearer(Caller),
    Signed {
        expires: i64,
        signature: String,
    },
    /// Half a signed URL.
    Incomplete,
    None,
}

/// A bearer token wins over a signature: its tenant's own file is what it may read.
fn credential(caller: Option<Caller>, query: SignedQuery) -> Credential {
    match (caller, query.expires, query.signature) {
        (Some(caller), _, _) => Credential::Bearer(caller),
        (None, Some(expires), Some(signature)) => Credential::Signed { expires, signature },
        (None, None, None) => Credential::None,
        (None, _, _) => Credential::Incomplete,
    }
}

fn refusal(e: SignatureError) -> ApiError {
    let (message, code) = match e {
        SignatureError::Expired => ("This link has expired.", "url_expired"),
        SignatureError::Invalid => ("This link's signature is not valid.", "invalid_signature"),
    };
    ApiError::Forbidden {
        message: message.into(),
        code,
    }
}

fn missing_key() -> ApiError {
    ApiError::Unauthorized {
        message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or use a signed URL.".into(),
        code: None,
    }
}

/// A file the request may download: whose it is and its id.
pub struct Download {
    pub tenant: String,
    pub id: String,
}

impl FromRequestParts<AppState> for Download {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let ApiPath(id) = ApiPath::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let ApiQuery(query) = ApiQuery::<SignedQuery>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let caller = parts.extensions.get::<Caller>().cloned();
        let Ok(addr) = ClientAddr::from_request_parts(parts, state).await;
        let tenant = match credential(caller, query) {
            Credential::Bearer(caller) => caller.tenant,
            Credential::Signed { expires, signature } => {
                signed_tenant(state, addr, &id, expires, &signature).await?
            }
            Credential::Incomplete => {
                let refusal = ApiError::Forbidden {
                    message: "A signed URL needs both expires and signature.".into(),
                    code: "invalid_signature",
                };
                return Err(auth::failure(state, addr, refusal));
            }
            Credential::None => return Err(missing_key().into_response()),
        };
        Ok(Download { tenant, id })
    }
}

/// The tenant of the file a signed URL names, once its signature holds.
async fn signed_tenant(
    state: &AppState,
    addr: ClientAddr,
    id: &str,
    expires: i64,
    signature: &str,
) -> Result<String, Response> {
    if let Err(e) = state.signer.verify(id, expires, signature, now_unix()) {
        return Err(auth::failure(state, addr, refusal(e)));
    }
    if let Err(wait) = state.rate_limits.check_anonymous(addr.0) {
        let limited = ApiError::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        };
        return Err(limited.into_response());
    }
    match state.store.file_tenant(id).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(super::not_found(id).into_response()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(expires: Option<i64>, signature: Option<&str>) -> SignedQuery {
        SignedQuery {
            expires,
            signature: signature.map(str::to_string),
        }
    }

    #[test]
    fn a_bearer_token_wins_and_half_a_signed_url_is_incomplete() {
        let caller = Caller {
            tenant: "acme".into(),
            key: 0,
        };
        assert_eq!(
            credential(Some(caller.clone()), query(Some(1), Some("ab"))),
            Credential::Bearer(caller)
        );
        assert_eq!(
            credential(None, query(Some(1), Some("ab"))),
            Credential::Signed {
                expires: 1,
                signature: "ab".into()
            }
        );
        assert_eq!(
            credential(None, query(None, Some("ab"))),
            Credential::Incomplete
        );
        assert_eq!(
            credential(None, query(Some(1), None)),
            Credential::Incomplete
        );
        assert_eq!(credential(None, query(None, None)), Credential::None);
    }

    #[test]
    fn an_expired_link_is_told_apart_from_a_forged_one() {
        let code = |e| match refusal(e) {
            ApiError::Forbidden { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(SignatureError::Expired), "url_expired");
        assert_eq!(code(SignatureError::Invalid), "invalid_signature");
    }
}
