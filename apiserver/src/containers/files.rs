//! `/v1/containers/{container_id}/files`: the files of a container's folder (`/mnt/data`).
//! Listing and reading come from the store's index of the folder (the operator keeps it);
//! adding and removing one is a file operation the operator carries out ([`fileops`]),
//! answered once it is done. The handlers only translate HTTP.
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::Multipart;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use codeinterp_crds::{CodeContainer, FileOpKind};
use codeinterp_store::{ContainerFile, FileMeta, FileSource, StoreError};
use kube::ResourceExt;
use tokio::time::Instant;

use super::fileops::{self, Change, Outcome};
use super::model::{ContainerFileDeleted, ContainerFileObject, file_object};
use super::request::{AddFileForm, AddFileRequest};
use super::service::{self, expired, is_live};
use super::{ListQuery, newest_first};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::files::{download_response, upload};
use crate::pagination::{Page, check_limit, paginate};
use crate::runs::request::input_file_name;
use crate::state::{AppState, now_unix};

fn file_not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("No such container file: {id}"),
        param: Some("file_id".into()),
    }
}

/// The tenant's container and its file of this id.
async fn file_of(
    state: &AppState,
    tenant: &str,
    container_id: &str,
    file_id: &str,
) -> Result<(std::sync::Arc<CodeContainer>, ContainerFile), ApiError> {
    let container = service::find(state, tenant, container_id, "container_id")?;
    match state
        .store
        .container_file_by_id(tenant, &container.name_any(), file_id)
        .await
    {
        Ok(Some(file)) => Ok((container, file)),
        Ok(None) | Err(StoreError::Name(_)) => Err(file_not_found(file_id)),
        Err(e) => Err(e.into()),
    }
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// The tenant's file the request puts into the container: uploaded now (multipart), or
/// named by id (JSON). It must fit the container's folder.
async fn file_to_add(state: &AppState, tenant: &str, req: Request) -> Result<FileMeta, ApiError> {
    if is_multipart(&req) {
        let multipart = Multipart::from_request(req, state).await.map_err(|r| {
            ApiError::invalid(format!("Invalid multipart body: {}", r.body_text()), None)
        })?;
        let meta = upload::receive_file(state, tenant, multipart).await?;
        if let Err(too_big) = fits_folder(state, meta.bytes) {
            if let Err(e) = state.store.discard_upload(tenant, &meta.id).await {
                tracing::warn!(error = %e, "could not remove a refused upload");
            }
            return Err(too_big);
        }
        state.store.put_file_meta(&meta).await?;
        return Ok(meta);
    }
    let ApiJson(body) = ApiJson::<AddFileRequest>::from_request(req, state)
        .await
        .map_err(|e| match e {
            ApiError::UnsupportedMediaType(_) => ApiError::UnsupportedMediaType(
                "Expected a multipart/form-data body with a file, or a JSON body with a file_id"
                    .into(),
            ),
            other => other,
        })?;
    uploaded_file(state, tenant, &body.file_id).await
}

/// The tenant's uploaded file `file_id`, if it fits a container's folder.
pub async fn uploaded_file(
    state: &AppState,
    tenant: &str,
    file_id: &str,
) -> Result<FileMeta, ApiError> {
    let meta = match state.store.get_file_meta(tenant, file_id).await {
        Ok(Some(meta)) => meta,
        Ok(None) | Err(StoreError::Name(_)) => {
            return Err(ApiError::invalid_with_code(
                format!("No such file: {file_id}"),
                "file_id".to_string(),
                "file_not_found",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    fits_folder(state, meta.bytes)?;
    Ok(meta)
}

/// Refuses a file larger than a container's folder.
pub fn fits_folder(state: &AppState, bytes: u64) -> Result<(), ApiError> {
    let room = state.settings.container_disk_bytes;
    if bytes > room {
        return Err(ApiError::invalid_with_code(
            format!("the file is {bytes} bytes; a container's folder holds {room} bytes"),
            "file".to_string(),
            "file_too_large",
        ));
    }
    Ok(())
}

/// Add a file to a container
///
/// Upload a file into the container's folder (multipart: `file`), or copy an uploaded
/// file in (JSON: `{"file_id": "file-..."}`). It goes to `/mnt/data/<its filename>` (the
/// name made safe: letters, digits, `.`, `_`, `-` and spaces), replacing a file of that
/// name, and the answer (200) comes once the container has it; a container that has not
/// started yet takes it when it starts (202). An upload is also a file of the tenant
/// (`/v1/files`, purpose `user_data`).
#[utoipa::path(
    post,
    path = "/v1/containers/{container_id}/files",
    operation_id = "create_container_file",
    tag = "containers",
    params(("container_id" = String, Path, description = "The container's id")),
    request_body(content(
        (AddFileForm = "multipart/form-data"),
        (AddFileRequest = "application/json"),
    )),
    responses(
        (status = 200, body = ContainerFileObject,
            links(
                ("GetContainerFile" = (operation_id = "get_container_file", parameters(
                    ("container_id" = "$response.body#/container_id"), ("file_id" = "$response.body#/id")))),
                ("GetContainerFileContent" = (operation_id = "container_file_content", parameters(
                    ("container_id" = "$response.body#/container_id"), ("file_id" = "$response.body#/id")))),
            ),
        ),
        (status = 202, description = "Accepted: the container has not started yet (or is busy with the changes before this one) and will put the file in when it gets to it; it is listed from then on", body = ContainerFileObject),
        (status = 400, description = "A bad form or body, a file this key cannot read (`file_not_found`), a file larger than the folder, an expired container (`container_expired`), or a change the container refused", body = ErrorBody),
        (status = 404, description = "No such container for this API key", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
        (status = 415, description = "Neither a multipart form nor JSON", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many file changes waiting in the container (`container_busy`)", body = ErrorBody),
        (status = 503, description = "The cluster is busy", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(container_id): ApiPath<String>,
    req: Request,
) -> Result<(StatusCode, Json<ContainerFileObject>), ApiError> {
    let received = Instant::now();
    let tenant = caller.tenant.as_str();
    let container = service::find(&state, tenant, &container_id, "container_id")?;
    if !is_live(&container) {
        return Err(expired("container_id"));
    }
    let meta = file_to_add(&state, tenant, req).await?;
    let (object, outcome) = put(&state, tenant, &container, &container_id, meta, received).await?;
    Ok((outcome.status(), Json(object)))
}

/// Puts the tenant's stored file into the container's folder under its filename (made
/// safe), replacing a file of that name, and answers once the container has it (or, if it
/// has not got to it in the request's time, that it will: `Pending`).
pub async fn put(
    state: &AppState,
    tenant: &str,
    container: &CodeContainer,
    container_id: &str,
    meta: FileMeta,
    received: Instant,
) -> Result<(ContainerFileObject, Outcome), ApiError> {
    let name = container.name_any();
    let change = Change {
        kind: FileOpKind::Put,
        path: input_file_name(&meta.filename),
        file_id: Some(meta.id.clone()),
    };
    let deadline = received + fileops::wait_budget(state.settings.request_timeout);
    let outcome = fileops::carry_out(state, container_id, &name, &change, deadline).await?;
    let entry = match state
        .store
        .container_file(tenant, &name, &change.path)
        .await?
    {
        Some(entry) if entry.id == meta.id => entry,
        // Replaced or removed since (or not indexed): what was put.
        _ => ContainerFile {
            id: meta.id.clone(),
            container: name,
            tenant: tenant.to_string(),
            path: change.path,
            bytes: meta.bytes,
            created_at: now_unix(),
            source: FileSource::User,
        },
    };
    Ok((file_object(&entry, container_id), outcome))
}

/// List a container's files
///
/// The files of the container's folder, newest first by default: uploaded ones
/// (`source: user`) and those its runs wrote (`source: assistant`).
#[utoipa::path(
    get,
    path = "/v1/containers/{container_id}/files",
    operation_id = "list_container_files",
    tag = "containers",
    params(("container_id" = String, Path, description = "The container's id"), ListQuery),
    responses(
        (status = 200, body = Page<ContainerFileObject>),
        (status = 400, description = "Invalid limit, order or cursor", body = ErrorBody),
        (status = 404, description = "No such container for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(container_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<ContainerFileObject>>, ApiError> {
    let limit = check_limit(query.limit)?;
    let newest_first = newest_first(query.order.as_deref())?;
    let tenant = caller.tenant.as_str();
    let container = service::find(&state, tenant, &container_id, "container_id")?;
    let mut files = folder(&state, tenant, &container, &container_id).await?;
    if !newest_first {
        files.reverse();
    }
    let page = paginate(files, |f| f.id.as_str(), limit, query.after.as_deref())?;
    Ok(Json(page))
}

/// The files of the container's folder, newest first.
pub async fn folder(
    state: &AppState,
    tenant: &str,
    container: &CodeContainer,
    container_id: &str,
) -> Result<Vec<ContainerFileObject>, ApiError> {
    let mut files: Vec<ContainerFileObject> = state
        .store
        .list_container_files(tenant, &container.name_any())
        .await?
        .iter()
        .map(|f| file_object(f, container_id))
        .collect();
    files.sort_by(|a, b| (b.created_at, &b.path).cmp(&(a.created_at, &a.path)));
    Ok(files)
}

/// Retrieve a container's file
#[utoipa::path(
    get,
    path = "/v1/containers/{container_id}/files/{file_id}",
    operation_id = "get_container_file",
    tag = "containers",
    params(
        ("container_id" = String, Path, description = "The container's id"),
        ("file_id" = String, Path, description = "The file's id"),
    ),
    responses(
        (status = 200, body = ContainerFileObject),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 404, description = "No such container for this API key, or no such file in it", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((container_id, file_id)): ApiPath<(String, String)>,
) -> Result<Json<ContainerFileObject>, ApiError> {
    let (_, file) = file_of(&state, &caller.tenant, &container_id, &file_id).await?;
    Ok(Json(file_object(&file, &container_id)))
}

/// Download a container's file
///
/// The file's bytes: an image a run wrote (judged by its bytes) as that image, anything
/// else as bytes to download.
#[utoipa::path(
    get,
    path = "/v1/containers/{container_id}/files/{file_id}/content",
    operation_id = "container_file_content",
    tag = "containers",
    params(
        ("container_id" = String, Path, description = "The container's id"),
        ("file_id" = String, Path, description = "The file's id"),
    ),
    responses(
        (status = 200, description = "The file's bytes",
            content(
                (Vec<u8> = "application/octet-stream"),
                (Vec<u8> = "image/png"),
                (Vec<u8> = "image/jpeg"),
                (Vec<u8> = "image/gif"),
                (Vec<u8> = "image/webp"),
                (Vec<u8> = "image/svg+xml"),
            ),
        ),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 404, description = "No such container for this API key, or no such file in it", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn file_content(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((container_id, file_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant.as_str();
    let (_, file) = file_of(&state, tenant, &container_id, &file_id).await?;
    let meta = match state.store.get_file_meta(tenant, &file.id).await {
        Ok(Some(meta)) => meta,
        Ok(None) | Err(StoreError::Name(_)) => return Err(file_not_found(&file_id)),
        Err(e) => return Err(e.into()),
    };
    let bytes = match state.store.get_file_content(tenant, &file.id).await {
        Ok(stream) => stream,
        Err(StoreError::NotFound) => return Err(file_not_found(&file_id)),
        Err(e) => return Err(e.into()),
    };
    Ok(download_response(&meta, Body::from_stream(bytes)))
}

/// Delete a container's file
///
/// Removes the file from the container's folder; the answer (200) comes once it is gone. A
/// container that has not started yet removes it when it starts (202, `deleted: false`
/// until then).
#[utoipa::path(
    delete,
    path = "/v1/containers/{container_id}/files/{file_id}",
    operation_id = "delete_container_file",
    tag = "containers",
    params(
        ("container_id" = String, Path, description = "The container's id"),
        ("file_id" = String, Path, description = "The file's id"),
    ),
    responses(
        (status = 200, body = ContainerFileDeleted),
        (status = 202, description = "Accepted: the container has not started yet (or is busy with the changes before this one) and will remove the file when it gets to it", body = ContainerFileDeleted),
        (status = 400, description = "An id that is not text, an expired container (`container_expired`), or a change the container refused", body = ErrorBody),
        (status = 404, description = "No such container for this API key, or no such file in it", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many file changes waiting in the container (`container_busy`)", body = ErrorBody),
        (status = 503, description = "The cluster is busy", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((container_id, file_id)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<ContainerFileDeleted>), ApiError> {
    let received = Instant::now();
    let (container, file) = file_of(&state, &caller.tenant, &container_id, &file_id).await?;
    if !is_live(&container) {
        return Err(expired("container_id"));
    }
    let change = Change {
        kind: FileOpKind::Delete,
        path: file.path,
        file_id: None,
    };
    let deadline = received + fileops::wait_budget(state.settings.request_timeout);
    let name = container.name_any();
    let outcome = fileops::carry_out(&state, &container_id, &name, &change, deadline).await?;
    let deleted = ContainerFileDeleted {
        id: file_id,
        object: "container.file.deleted".into(),
        deleted: outcome == Outcome::Done,
    };
    Ok((outcome.status(), Json(deleted)))
}
