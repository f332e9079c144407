//! `/v1/containers` (OpenAI's Containers API): sessions that keep their interpreters and
//! their folder (`/mnt/data`) between runs; a run names one with `"container": id`. A
//! container is a CodeContainer the operator serves. The handlers here only translate
//! HTTP; [`service`] finds, creates, lists and deletes containers, [`fileops`] changes
//! their files through the operator, [`model`] is the wire objects and the ids,
//! [`request`] the bodies and their validation, [`files`] the handlers of a container's
//! files, [`runs`] the runs made in it, in order.
pub mod fileops;
pub mod files;
pub mod model;
pub mod request;
pub mod runs;
pub mod service;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::files::{ListOrder, upload_body_limit};
use crate::pagination::{Page, check_limit, paginate};
use crate::state::AppState;
use model::{Container, ContainerDeleted, from_cr};
use request::{CreateContainerRequest, validate};

pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/containers",
            get(list_containers).post(create_container),
        )
        .route(
            "/v1/containers/{container_id}",
            get(get_container).delete(delete_container),
        )
        .route(
            "/v1/containers/{container_id}/files",
            get(files::list_files)
                .post(files::create_file)
                .layer(DefaultBodyLimit::max(upload_body_limit(max_upload_bytes))),
        )
        .route(
            "/v1/containers/{container_id}/files/{file_id}",
            get(files::get_file).delete(files::delete_file),
        )
        .route(
            "/v1/containers/{container_id}/files/{file_id}/content",
            get(files::file_content),
        )
        .route("/v1/containers/{container_id}/runs", get(runs::list_runs))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of the last item of the previous page.
    after: Option<String>,
    /// `desc` (newest first, the default) or `asc`, by `created_at`.
    #[param(value_type = Option<ListOrder>, inline)]
    order: Option<String>,
}

/// Whether `order` asks for the newest first (the default).
fn newest_first(order: Option<&str>) -> Result<bool, ApiError> {
    match order {
        None | Some("desc") => Ok(true),
        Some("asc") => Ok(false),
        Some(other) => Err(ApiError::invalid(
            format!("order is {other:?}; use asc or desc"),
            "order".to_string(),
        )),
    }
}

/// Create a container
///
/// A container of its own for the caller: its pod starts at once, the files named are
/// copied into `/mnt/data`, and runs that name it (`"container": id` in `POST /v1/runs`)
/// run in it one at a time, keeping each language's state. It expires after
/// `expires_after.minutes` without a run or a file change. A tenant has a limited number
/// of live containers (429 `container_limit_reached` beyond).
#[utoipa::path(
    post,
    path = "/v1/containers",
    tag = "containers",
    request_body = CreateContainerRequest,
    responses(
        (status = 200, body = Container,
            links(
                ("GetContainer" = (operation_id = "get_container", parameters(("container_id" = "$response.body#/id")))),
                ("ListContainerFiles" = (operation_id = "list_container_files", parameters(("container_id" = "$response.body#/id")))),
                ("DeleteContainer" = (operation_id = "delete_container", parameters(("container_id" = "$response.body#/id")))),
            ),
        ),
        (status = 400, description = "Invalid request (the field is named), a memory limit over the service's, or a file this key cannot read (`file_not_found`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not a JSON body", body = ErrorBody),
        (status = 429, description = "Rate limited, or the tenant has as many live containers as it may (`container_limit_reached`)", body = ErrorBody),
        (status = 503, description = "The cluster is busy or cannot be reached; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_container(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateContainerRequest>,
) -> Result<Json<Container>, ApiError> {
    let valid = validate(request, state.settings.container_max_memory)?;
    let created = service::create(&state, &caller.tenant, &valid).await?;
    from_cr(&created)
        .map(Json)
        .ok_or_else(|| ApiError::Internal("a new container has no container id".into()))
}

/// List containers
///
/// The caller's containers, newest first by default; ended ones stay listed (status
/// `expired`, `deleted` or `failed`) for an hour.
#[utoipa::path(
    get,
    path = "/v1/containers",
    tag = "containers",
    params(ListQuery),
    responses(
        (status = 200, body = Page<Container>),
        (status = 400, description = "Invalid limit, order or cursor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_containers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<Container>>, ApiError> {
    let limit = check_limit(query.limit)?;
    let newest_first = newest_first(query.order.as_deref())?;
    let all = service::list(&state, &caller.tenant, newest_first);
    let page = paginate(all, |c| c.id.as_str(), limit, query.after.as_deref())?;
    Ok(Json(page))
}

/// Retrieve a container
#[utoipa::path(
    get,
    path = "/v1/containers/{container_id}",
    tag = "containers",
    params(("container_id" = String, Path, description = "The container's id")),
    responses(
        (status = 200, body = Container),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 404, description = "No such container for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_container(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Container>, ApiError> {
    let container = service::find(&state, &caller.tenant, &id, "container_id")?;
    from_cr(&container)
        .map(Json)
        .ok_or_else(|| service::not_found(&id, "container_id"))
}

/// Delete a container
///
/// Ends the container and deletes it: its pod and its folder go, runs waiting for it
/// fail. Files it held stay the tenant's files (`/v1/files`).
#[utoipa::path(
    delete,
    path = "/v1/containers/{container_id}",
    tag = "containers",
    params(("container_id" = String, Path, description = "The container's id")),
    responses(
        (status = 200, body = ContainerDeleted),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 404, description = "No such container for this API key", body = ErrorBody),
        (status = 503, description = "The cluster is busy or cannot be reached; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_container(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ContainerDeleted>, ApiError> {
    service::delete(&state, &caller.tenant, &id).await?;
    Ok(Json(ContainerDeleted {
        id,
        object: "container.deleted".into(),
        deleted: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_newest_first_unless_asc_is_asked() {
        assert!(newest_first(None).unwrap());
        assert!(newest_first(Some("desc")).unwrap());
        assert!(!newest_first(Some("asc")).unwrap());
        let e = newest_first(Some("random")).unwrap_err();
        assert_eq!(e.body().error.param.as_deref(), Some("order"));
    }
}
