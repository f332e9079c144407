//! One error type for every handler, rendered in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`. Client mistakes are 4xx with a message
//! that says what to change; server faults are logged in full and answered without detail.
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use codeinterp_store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{message}")]
    Unauthorized {
        message: String,
        code: Option<&'static str>,
    },
    #[error("{message}")]
    Forbidden { message: String, code: &'static str },
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// An upload that would take the tenant past its storage quota.
    #[error("{0}")]
    StorageQuotaExceeded(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("rate limit reached; retry after {retry_after_secs}s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{message}")]
    QueueFull {
        message: String,
        retry_after_secs: u64,
    },
    /// The tenant has as many of something as it may (`code` names what, e.g.
    /// `container_limit_reached`).
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        code: &'static str,
        retry_after_secs: u64,
    },
    #[error("the request took too long")]
    Timeout,
    #[error("{0}")]
    Unavailable(String),
    /// The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.into(),
            code: None,
        }
    }

    pub fn invalid_with_code(
        message: impl Into<String>,
        param: impl Into<Option<String>>,
        code: &'static str,
    ) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.into(),
            code: Some(code),
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::NotFound {
            message: format!("No such {what}: {id}"),
            param: Some("id".into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) | ApiError::StorageQuotaExceeded(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. }
            | ApiError::QueueFull { .. }
            | ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (type_, param, code): (&str, Option<String>, Option<&str>) = match self {
            ApiError::InvalidRequest { param, code, .. } => {
                ("invalid_request_error", param.clone(), *code)
            }
            ApiError::Unauthorized { code, .. } => ("invalid_request_error", None, *code),
            ApiError::Forbidden { code, .. } => ("invalid_request_error", None, Some(*code)),
            ApiError::NotFound { param, .. } => ("invalid_request_error", param.clone(), None),
            ApiError::MethodNotAllowed => ("invalid_request_error", None, None),
            ApiError::Conflict(_) => ("invalid_request_error", None, Some("conflict")),
            ApiError::PayloadTooLarge(_) => {
                ("invalid_request_error", None, Some("payload_too_large"))
            }
            ApiError::StorageQuotaExceeded(_) => (
                "invalid_request_error",
                None,
                Some("storage_quota_exceeded"),
            ),
            ApiError::UnsupportedMediaType(_) => ("invalid_request_error", None, None),
            ApiError::RateLimited { .. } => ("requests", None, Some("rate_limit_exceeded")),
            ApiError::QueueFull { .. } => ("requests", None, Some("queue_full")),
            ApiError::QuotaExceeded { code, .. } => ("requests", None, Some(*code)),
            ApiError::Timeout => ("timeout", None, None),
            ApiError::Unavailable(_) => ("server_error", None, Some("unavailable")),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        let message = match self {
            ApiError::Internal(_) => {
                "The server had an error while processing your request.".into()
            }
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorDetail {
                message,
                type_: type_.into(),
                param,
                code: code.map(str::to_string),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if let ApiError::RateLimited { retry_after_secs }
        | ApiError::QueueFull {
            retry_after_secs, ..
        }
        | ApiError::QuotaExceeded {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => {
                ApiError::invalid(s.message.clone(), None)
            }
            kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
                ApiError::Unavailable("the cluster is busy; try again shortly".into())
            }
            kube::Error::Api(_) => ApiError::Internal(e.to_string()),
            _ => ApiError::Unavailable("the cluster cannot be reached; try again shortly".into()),
        }
    }
}

/// The JSON path of a deserialization error, as OpenAI's `param` (`limits.timeout_ms`). For
/// an unknown field, the field itself.
fn param_of(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let base = path.to_string();
    let base = (base != ".").then_some(base);
    let unknown = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (base, unknown) {
        // serde_path_to_error already ends the path with an unknown field, not a missing one.
        (Some(b), Some(f)) if b == f || b.ends_with(&format!(".{f}")) => Some(b),
        (Some(b), Some(f)) => Some(format!("{b}.{f}")),
        (None, Some(f)) => Some(f.to_string()),
        (b, None) => b,
    }
}

/// Serde's messages, worded for a client ("at line 1 column 5" is kept: it helps).
fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = err.inner().to_string();
    let param = param_of(err.path(), &inner);
    let message = match &param {
        Some(p) if inner.starts_with("unknown field") => {
            format!("Unrecognized request argument supplied: {p} ({inner})")
        }
        Some(p) if inner.starts_with("missing field") => {
            format!("Missing required parameter: '{p}'.")
        }
        Some(p) => format!("Invalid value for '{p}': {inner}"),
        None => format!("We could not parse the JSON body of your request: {inner}"),
    };
    ApiError::invalid(message, param)
}

/// Deserializes a JSON body, rejecting in the API's error shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    Ok(value)
}

/// Deserializes a JSON value (an MCP tool's arguments) with the same errors as a body.
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(json_error)
}

/// `Json` with errors in the API's shape and the failing field named in `param`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "Expected a JSON body with 'Content-Type: application/json'".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| rejection(r.status(), r.body_text()))?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(format!("The request body is too large: {text}"))
        }
        s if s.is_server_error() => ApiError::Internal(text),
        _ => ApiError::invalid(text, None),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(format!("Invalid query parameters: {}", r.body_text()), None)
    }
}

/// `Query` with errors in the API's shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// `Path` with errors in the API's shape: an id that is not valid UTF-8 once decoded is a
/// 400 naming it, like any other invalid parameter.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(r) if r.status().is_server_error() => Err(ApiError::Internal(r.body_text())),
            Err(r) => Err(ApiError::invalid(
                format!("Invalid path parameter: {}", r.body_text()),
                "id".to_string(),
            )),
        }
    }
}

/// For routes that do not exist, and methods a route does not take.
pub async fn not_found() -> ApiError {
    ApiError::NotFound {
        message: "Unknown request URL. Please check the URL and method.".into(),
        param: None,
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: Option<u64>,
    }

    fn detail(e: ApiError) -> (StatusCode, ErrorDetail) {
        (e.status(), e.body().error)
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let body = serde_json::to_value(ApiError::not_found("run", "run-x").body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "No such run: run-x",
                "type": "invalid_request_error",
                "param": "id",
                "code": null
            }})
        );
    }

    #[test]
    fn an_unknown_field_is_named_in_param() {
        let (status, d) = detail(parse_json::<Outer>(br#"{"name":"a","colour":1}"#).unwrap_err());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(d.param.as_deref(), Some("colour"));
        assert!(d.message.contains("colour"), "{}", d.message);
        let (_, d) = detail(parse_json::<Outer>(br#"{"name":"a","inner":{"m":1}}"#).unwrap_err());
        assert_eq!(d.param.as_deref(), Some("inner.m"));
    }

    #[test]
    fn a_missing_field_is_named_in_param() {
        let (status, d) = detail(parse_json::<Outer>(br#"{}"#).unwrap_err());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(d.param.as_deref(), Some("name"));
        assert_eq!(d.message, "Missing required parameter: 'name'.");
    }

    #[test]
    fn a_wrong_type_names_its_path() {
        let (_, d) = detail(parse_json::<Outer>(br#"{"name":"a","inner":{"n":"x"}}"#).unwrap_err());
        assert_eq!(d.param.as_deref(), Some("inner.n"));
        assert_eq!(d.type_, "invalid_request_error");
    }

    #[test]
    fn malformed_json_is_a_client_error() {
        for body in [&b"{"[..], b"", b"[]", b"{\"name\":\"a\"} trailing"] {
            let (status, d) = detail(parse_json::<Outer>(body).unwrap_err());
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
            assert_eq!(d.type_, "invalid_request_error");
        }
    }

    #[test]
    fn internal_errors_do_not_leak_their_detail() {
        let e = ApiError::Internal("s3 secret path /x".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let d = e.body().error;
        assert!(!d.message.contains("secret"));
        assert_eq!(d.type_, "server_error");
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let r = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
