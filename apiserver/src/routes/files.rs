//! `/v1/files`, wire-compatible with OpenAI's files API: uploads stream to object storage
//! under a size cap, downloads stream back, with a bearer token or a signed URL.
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use codeinterp_store::{FileMeta, StoreError, UploadError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, ClientAddr};
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::ratelimit::retry_after_secs;
use crate::signing::SignatureError;
use crate::state::{AppState, now_unix};

/// Room for the multipart framing and the `purpose` field around the file.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    let body_limit = usize::try_from(max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(MULTIPART_OVERHEAD);
    Router::new()
        .route(
            "/v1/files",
            get(list_files)
                .post(upload_file)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
}

/// A stored file.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    #[schema(example = "file")]
    pub object: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    /// `assistants` and the like for uploads, `assistants_output` for a run's output files.
    pub purpose: String,
    /// Always `processed` (kept for OpenAI SDKs).
    #[schema(example = "processed")]
    pub status: String,
}

impl From<FileMeta> for FileObject {
    fn from(m: FileMeta) -> Self {
        FileObject {
            id: m.id,
            object: "file".into(),
            bytes: m.bytes,
            created_at: m.created_at,
            filename: m.filename,
            purpose: m.purpose,
            status: "processed".into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// Always `list`.
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<FileObject>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// Always `file`.
    #[schema(example = "file")]
    pub object: String,
    pub deleted: bool,
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (its filename is kept).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// e.g. `assistants`.
    purpose: String,
}

/// New file ids: `file-` and 24 random characters.
pub fn new_file_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("file-{suffix}")
}

/// The name kept for an upload: the last path component, without control characters, at
/// most 255 characters.
pub fn upload_filename(given: Option<&str>) -> Option<String> {
    let base = given?.rsplit(['/', '\\']).next()?;
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let clean = clean.trim().to_string();
    (!clean.is_empty() && clean != "." && clean != "..").then_some(clean)
}

/// A purpose: lowercase words, as OpenAI's (`assistants`, `user_data`, `fine-tune`, ...).
pub fn valid_purpose(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `Content-Disposition` for a download: a plain ASCII name, so no header injection and no
/// path; anything else becomes `_`.
pub fn content_disposition(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    while safe.starts_with('.') {
        safe.remove(0);
    }
    if safe.is_empty() {
        safe = "file".into();
    }
    format!("attachment; filename=\"{safe}\"")
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("The upload is too large: {}", e.body_text()))
    } else {
        ApiError::invalid(format!("Invalid multipart body: {}", e.body_text()), None)
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "The file is larger than the {max} bytes allowed (MAX_UPLOAD_BYTES)."
    ))
}

/// Upload a file
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = FileObject),
        (status = 400, description = "Missing file or purpose", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn upload_file(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let mut multipart = multipart.map_err(|r| {
        ApiError::invalid(
            format!("Expected a multipart/form-data body: {}", r.body_text()),
            None,
        )
    })?;
    let tenant = caller.tenant.as_str();
    let max = state.settings.max_upload_bytes;
    let mut stored: Option<(String, String, u64, String)> = None;
    let mut purpose: Option<String> = None;
    let result: Result<(), ApiError> = async {
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            match field.name() {
                Some("file") => {
                    if stored.is_some() {
                        return Err(ApiError::invalid(
                            "give one file per upload",
                            "file".to_string(),
                        ));
                    }
                    let filename = upload_filename(field.file_name()).ok_or_else(|| {
                        ApiError::invalid("the file part needs a filename", "file".to_string())
                    })?;
                    let id = new_file_id();
                    let chunks = field.boxed();
                    let upload = state.store.put_file_stream(tenant, &id, chunks, max).await;
                    match upload? {
                        Ok((bytes, sha256)) => stored = Some((id, filename, bytes, sha256)),
                        Err(UploadError::TooLarge(max)) => return Err(too_large(max)),
                        // The body limit (the multipart framing around the cap) cut it.
                        Err(UploadError::Body(e))
                            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                        {
                            return Err(too_large(max));
                        }
                        Err(UploadError::Body(e)) => {
                            return Err(ApiError::invalid(
                                format!("upload failed: {}", e.body_text()),
                                "file".to_string(),
                            ));
                        }
                    }
                }
                Some("purpose") => {
                    purpose = Some(field.text().await.map_err(multipart_error)?);
                }
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "Unrecognized request argument supplied: {}; expected file and purpose",
                            other.unwrap_or("(unnamed part)")
                        ),
                        other.map(str::to_string),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;

    let discard = |stored: &Option<(String, String, u64, String)>| {
        let store = state.store.clone();
        let id = stored.as_ref().map(|s| s.0.clone());
        let tenant = tenant.to_string();
        async move {
            if let Some(id) = id
                && let Err(e) = store.discard_upload(&tenant, &id).await
            {
                tracing::warn!(error = %e, "could not remove a refused upload");
            }
        }
    };
    if let Err(e) = result {
        discard(&stored).await;
        return Err(e);
    }
    let purpose = match purpose {
        Some(p) if valid_purpose(&p) => p,
        Some(p) => {
            discard(&stored).await;
            return Err(ApiError::invalid(
                format!("purpose {p:?} is not valid; use e.g. \"assistants\""),
                "purpose".to_string(),
            ));
        }
        None => {
            discard(&stored).await;
            return Err(ApiError::invalid(
                "Missing required parameter: 'purpose'.",
                "purpose".to_string(),
            ));
        }
    };
    let Some((id, filename, bytes, sha256)) = stored else {
        return Err(ApiError::invalid(
            "Missing required parameter: 'file'.",
            "file".to_string(),
        ));
    };
    let meta = FileMeta {
        id,
        tenant: tenant.to_string(),
        bytes,
        created_at: now_unix(),
        filename,
        purpose,
        sha256,
        run_id: None,
        // Uploads are never served for display, whatever they hold.
        content_type: None,
    };
    state.store.put_file_meta(&meta).await?;
    Ok(Json(meta.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFilesQuery {
    /// Only files with this purpose.
    purpose: Option<String>,
    /// How many files (default: all).
    limit: Option<usize>,
    /// The id of the last file of the previous page.
    after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    order: Option<String>,
}

/// List files
#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "files",
    params(ListFilesQuery),
    responses((status = 200, body = FileList)),
    security(("bearer" = []))
)]
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListFilesQuery>,
) -> Result<Json<FileList>, ApiError> {
    let mut files: Vec<FileObject> = state
        .store
        .list_files(&caller.tenant)
        .await?
        .into_iter()
        .filter(|f| query.purpose.as_deref().is_none_or(|p| f.purpose == p))
        .map(FileObject::from)
        .collect();
    match query.order.as_deref() {
        None | Some("desc") => {}
        Some("asc") => files.reverse(),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("order is {other:?}; use asc or desc"),
                "order".to_string(),
            ));
        }
    }
    let limit = query.limit.unwrap_or(usize::MAX).max(1);
    let page =
        crate::pagination::paginate(files, |f| f.id.as_str(), limit, query.after.as_deref())?;
    Ok(Json(FileList {
        object: "list",
        data: page.data,
        has_more: page.has_more,
        first_id: page.first_id,
        last_id: page.last_id,
    }))
}

async fn file_of(state: &AppState, tenant: &str, id: &str) -> Result<FileMeta, ApiError> {
    match state.store.get_file_meta(tenant, id).await {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) | Err(StoreError::Name(_)) => Err(ApiError::not_found("File object", id)),
        Err(e) => Err(e.into()),
    }
}

/// Retrieve a file
#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, body = FileObject),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(file_of(&state, &caller.tenant, &id).await?.into()))
}

/// Delete a file
#[utoipa::path(
    delete,
    path = "/v1/files/{id}",
    tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, body = FileDeleted),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let deleted = match state.store.delete_file(&caller.tenant, &id).await {
        Ok(d) => d,
        Err(StoreError::Name(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if !deleted {
        return Err(ApiError::not_found("File object", &id));
    }
    Ok(Json(FileDeleted {
        id,
        object: "file".into(),
        deleted: true,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Unix seconds; with `signature`, the URL works without a bearer token until then.
    expires: Option<i64>,
    /// Hex HMAC-SHA256 of `{id}\n{expires}`.
    signature: Option<String>,
}

/// Download a file
///
/// With a bearer token, or with the `expires` and `signature` of a signed URL (no token).
/// A signed URL's signature is checked before anything else: a bad one costs a valid link
/// nothing. Valid signed downloads are limited per client address.
#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    tag = "files",
    params(("id" = String, Path, description = "The file's id"), SignedQuery),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A changed or expired signed URL", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
async fn file_content(
    State(state): State<AppState>,
    caller: Option<Caller>,
    addr: ClientAddr,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<SignedQuery>,
) -> Result<Response, ApiError> {
    let tenant = if caller.is_none() && (query.expires.is_some() || query.signature.is_some()) {
        let (Some(expires), Some(signature)) = (query.expires, query.signature.as_deref()) else {
            let refusal = ApiError::Forbidden {
                message: "A signed URL needs both expires and signature.".into(),
                code: "invalid_signature",
            };
            return Ok(crate::auth::failure(&state, addr, refusal));
        };
        if let Err(e) = state.signer.verify(&id, expires, signature, now_unix()) {
            let refusal = ApiError::Forbidden {
                message: match e {
                    SignatureError::Expired => "This link has expired.".into(),
                    SignatureError::Invalid => "This link's signature is not valid.".into(),
                },
                code: match e {
                    SignatureError::Expired => "url_expired",
                    SignatureError::Invalid => "invalid_signature",
                },
            };
            return Ok(crate::auth::failure(&state, addr, refusal));
        }
        if let Err(wait) = state.rate_limits.check_anonymous(addr.0) {
            return Err(ApiError::RateLimited {
                retry_after_secs: retry_after_secs(wait),
            });
        }
        state
            .store
            .file_tenant(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("File object", &id))?
    } else {
        match caller {
            Some(c) => c.tenant,
            // The extractor's own 401, in the usual words.
            None => return Err(missing_key()),
        }
    };
    let meta = file_of(&state, &tenant, &id).await?;
    let stream = match state.store.get_file_content(&tenant, &id).await {
        Ok(s) => s,
        Err(StoreError::Backend(object_store::Error::NotFound { .. })) => {
            return Err(ApiError::not_found("File object", &id));
        }
        Err(e) => return Err(e.into()),
    };
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    // A run's image (judged from its bytes when it was stored) is shown inline; anything else
    // is only ever bytes to download, never a page of this origin.
    let image: Option<&'static str> = match meta.content_type.as_deref() {
        Some("image/png") => Some("image/png"),
        Some("image/jpeg") => Some("image/jpeg"),
        Some("image/gif") => Some("image/gif"),
        Some("image/webp") => Some("image/webp"),
        Some("image/svg+xml") => Some("image/svg+xml"),
        _ => None,
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(image.unwrap_or("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.bytes));
    let disposition = match image {
        Some(_) => content_disposition(&meta.filename).replacen("attachment", "inline", 1),
        None => content_disposition(&meta.filename),
    };
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    // An SVG may carry script: opened on its own, it runs none and reaches nothing.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}

fn missing_key() -> ApiError {
    ApiError::Unauthorized {
        message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or use a signed URL.".into(),
        code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_are_named_with_a_safe_ascii_filename() {
        assert_eq!(
            content_disposition("plot.png"),
            "attachment; filename=\"plot.png\""
        );
        assert_eq!(
            content_disposition("a\"b\r\nSet-Cookie: x.txt"),
            "attachment; filename=\"a_b__Set-Cookie__x.txt\""
        );
        assert_eq!(
            content_disposition("out/sub/r.csv"),
            "attachment; filename=\"r.csv\""
        );
        assert_eq!(content_disposition("..."), "attachment; filename=\"file\"");
        assert_eq!(
            content_disposition("résumé.pdf"),
            "attachment; filename=\"r_sum_.pdf\""
        );
    }

    #[test]
    fn upload_names_keep_only_the_last_path_component() {
        assert_eq!(
            upload_filename(Some("data.csv")).as_deref(),
            Some("data.csv")
        );
        assert_eq!(
            upload_filename(Some("/etc/passwd")).as_deref(),
            Some("passwd")
        );
        assert_eq!(upload_filename(Some("a\u{0}b")).as_deref(), Some("ab"));
        assert_eq!(upload_filename(Some("dir/")), None);
        assert_eq!(upload_filename(Some("..")), None);
        assert_eq!(upload_filename(None), None);
    }

    #[test]
    fn purposes_are_lowercase_words() {
        assert!(valid_purpose("assistants"));
        assert!(valid_purpose("fine-tune"));
        assert!(valid_purpose("user_data"));
        assert!(!valid_purpose(""));
        assert!(!valid_purpose("Assistants"));
        assert!(!valid_purpose("a b"));
    }

    #[test]
    fn file_ids_are_storage_safe_and_distinct() {
        let a = new_file_id();
        assert!(a.starts_with("file-") && a.len() == 29);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_ne!(a, new_file_id());
    }

    #[test]
    fn a_file_object_has_the_openai_fields() {
        let meta = FileMeta {
            id: "file-1".into(),
            tenant: "acme".into(),
            bytes: 3,
            created_at: 9,
            filename: "a.txt".into(),
            purpose: "assistants".into(),
            sha256: "x".into(),
            run_id: None,
            content_type: None,
        };
        let json = serde_json::to_value(FileObject::from(meta)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "file-1", "object": "file", "bytes": 3, "created_at": 9,
                "filename": "a.txt", "purpose": "assistants", "status": "processed"})
        );
    }
}
