//! `/v1/files`, wire-compatible with OpenAI's files API: uploads stream to object storage
//! under a size cap (`upload`), downloads stream back to a bearer token's tenant or to
//! whoever holds a signed URL ([`download`]); [`model`] holds the wire objects.
pub mod budget;
pub mod download;
pub mod model;
pub(crate) mod upload;

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use codeinterp_store::{FileMeta, StoreError};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::pagination::{Page, check_limit};
use crate::state::AppState;
use download::{Download, SignedQuery};
use model::{FileDeleted, FileObject, UploadForm, content_disposition, display_type};

/// Room for the multipart framing and the `purpose` field around the file.
pub(crate) const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// The body limit of a route that takes an upload of at most `max_upload_bytes`.
pub fn upload_body_limit(max_upload_bytes: u64) -> usize {
    usize::try_from(max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(MULTIPART_OVERHEAD)
}

pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    let body_limit = upload_body_limit(max_upload_bytes);
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

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("File object", id)
}

/// The tenant's file of this id.
async fn file_of(state: &AppState, tenant: &str, id: &str) -> Result<FileMeta, ApiError> {
    match state.store.get_file_meta(tenant, id).await {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) | Err(StoreError::Name(_)) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// Upload a file
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = FileObject,
            links(
                ("GetFile" = (operation_id = "get_file", parameters(("id" = "$response.body#/id")))),
                ("GetFileContent" = (operation_id = "file_content", parameters(("id" = "$response.body#/id")))),
                ("DeleteFile" = (operation_id = "delete_file", parameters(("id" = "$response.body#/id")))),
            ),
        ),
        (status = 400, description = "Not a multipart form, or a missing file or purpose", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "File too large, or larger than what the tenant's storage quota leaves (`storage_quota_exceeded`)", body = ErrorBody),
        (status = 429, description = "Rate limited, or the uploads in progress hold all the memory the tenant (or the server) gives them (`upload_capacity_exceeded`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn upload_file(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let multipart = multipart.map_err(|r| {
        ApiError::invalid(
            format!("Expected a multipart/form-data body: {}", r.body_text()),
            None,
        )
    })?;
    let meta = upload::receive(&state, &caller.tenant, multipart).await?;
    state.store.put_file_meta(&meta).await?;
    Ok(Json(meta.into()))
}

/// The order of a list.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ListOrder {
    Asc,
    Desc,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFilesQuery {
    /// Only files with this purpose.
    purpose: Option<String>,
    /// How many files, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of the last file of the previous page.
    after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(value_type = Option<ListOrder>, inline)]
    order: Option<String>,
}

/// List files
#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "files",
    params(ListFilesQuery),
    responses(
        (status = 200, body = Page<FileObject>),
        (status = 400, description = "Invalid limit, order or cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListFilesQuery>,
) -> Result<Json<Page<FileObject>>, ApiError> {
    let limit = check_limit(query.limit)?;
    let newest_first = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("order is {other:?}; use asc or desc"),
                "order".to_string(),
            ));
        }
    };
    let after = query.after.as_deref();
    let Some(found) = state
        .store
        .list_files_page(
            &caller.tenant,
            query.purpose.as_deref(),
            after,
            limit,
            newest_first,
        )
        .await?
    else {
        let cursor = after.unwrap_or_default();
        return Err(ApiError::invalid(
            format!("after is {cursor:?}, which is not an id in this list"),
            "after".to_string(),
        ));
    };
    let data: Vec<FileObject> = found.files.into_iter().map(FileObject::from).collect();
    let page = Page {
        object: "list",
        first_id: data.first().map(|f| f.id.clone()),
        last_id: data.last().map(|f| f.id.clone()),
        has_more: found.has_more,
        data,
    };
    Ok(Json(page))
}

/// Retrieve a file
#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, body = FileObject),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such file for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
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
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such file for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let deleted = match state.store.delete_file(&caller.tenant, &id).await {
        Ok(deleted) => deleted,
        Err(StoreError::Name(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(deleted) = deleted else {
        return Err(not_found(&id));
    };
    crate::quota::record(&state, &caller.tenant, -(deleted.bytes as i64));
    Ok(Json(FileDeleted {
        id,
        object: "file".into(),
        deleted: true,
    }))
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
        (status = 200,
            description = "The file's bytes: an output file that is an image (judged by its bytes) as that image, anything else as bytes to download",
            content(
                (Vec<u8> = "application/octet-stream"),
                (Vec<u8> = "image/png"),
                (Vec<u8> = "image/jpeg"),
                (Vec<u8> = "image/gif"),
                (Vec<u8> = "image/webp"),
                (Vec<u8> = "image/svg+xml"),
            ),
        ),
        (status = 400, description = "An id that is not text, or `expires` not a whole number of seconds", body = ErrorBody),
        (status = 401, description = "No API key and no signed URL, or a wrong API key", body = ErrorBody),
        (status = 403, description = "A changed or expired signed URL", body = ErrorBody),
        (status = 404, description = "No such file (for this API key, or at all for a signed URL)", body = ErrorBody),
        (status = 429, description = "Too many downloads from this address", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
async fn file_content(
    State(state): State<AppState>,
    download: Download,
) -> Result<Response, ApiError> {
    let Download { tenant, id } = download;
    let meta = file_of(&state, &tenant, &id).await?;
    let bytes = match state.store.get_file_content(&tenant, &id).await {
        Ok(stream) => stream,
        // Deleted since its metadata was read.
        Err(StoreError::NotFound) => return Err(not_found(&id)),
        Err(e) => return Err(e.into()),
    };
    Ok(download_response(&meta, Body::from_stream(bytes)))
}

/// A file's bytes with the headers that keep them bytes: an image (judged from its bytes
/// when it was stored) is shown inline, anything else is only ever a download, never a page
/// of this origin.
pub(crate) fn download_response(meta: &FileMeta, body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let image = display_type(meta);
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
    response
}
