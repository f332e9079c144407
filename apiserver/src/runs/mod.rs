//! `/v1/runs`: create a run (and by default wait for it), read one, list them, cancel one,
//! follow its events. The handlers here only translate HTTP; [`service`] finds, creates and
//! waits for runs, [`model`] is the run object of the wire, [`request`] the body of
//! `POST /v1/runs` and its validation, [`joining`] the places in line the cache does not
//! show yet, [`events`] the event streams, [`finished`] the
//! answers of finished runs kept in memory.
pub mod events;
pub mod finished;
pub mod joining;
pub mod model;
pub mod request;
pub mod service;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::pagination::{Page, check_limit};
use crate::runs::model::Run;
use crate::runs::request::{CreateRunRequest, check_input_size, validate};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/events", get(events::get_events))
}

fn run_not_found(id: &str) -> ApiError {
    ApiError::not_found("run", id)
}

/// Create a run
///
/// Validates the request, creates a CodeRun and, unless `wait` is false, waits for the run
/// to finish (up to its timeout plus slack) and returns it with its output. With `"stream":
/// true` the answer is the run's events as they happen (`text/event-stream`, as
/// `GET /v1/runs/{id}/events`). A tenant with as many runs waiting for room as it may have
/// gets 429 `queue_full`.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    request_body = CreateRunRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "Repeating a request with the same key returns the run the first one created (1 to 255 visible ASCII characters)")),
    responses(
        (status = 200,
            description = "The run: finished, or as far as it got within the wait (JSON); with `stream`, its events as they happen",
            content(
                (Run = "application/json"),
                (events::RunEventMessage = "text/event-stream"),
            ),
            links(
                ("GetRun" = (operation_id = "get_run", parameters(("id" = "$response.body#/id")))),
                ("CancelRun" = (operation_id = "cancel_run", parameters(("id" = "$response.body#/id")))),
                ("GetRunEvents" = (operation_id = "get_events", parameters(("id" = "$response.body#/id")))),
            ),
        ),
        (status = 400, description = "Invalid request, an input file this key cannot read (`file_not_found`), or a container that has ended (`container_expired`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The `container` named is not this API key's (or does not exist)", body = ErrorBody),
        (status = 409, description = "The `Idempotency-Key` names another tenant's run, or one still being created", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not a JSON body", body = ErrorBody),
        (status = 429, description = "Rate limited, the tenant's queue is full (`queue_full`), its storage quota is used up (`storage_quota_exceeded`), or with `stream` too many open streams", body = ErrorBody),
        (status = 503, description = "The cluster is busy or cannot be reached, or the run could not be recorded; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_run(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateRunRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let tenant = caller.tenant.as_str();
    let run = validate(request, &state.settings.maxima)?;
    if let Some(container) = &run.container {
        crate::containers::service::for_run(&state, tenant, container)?;
    }
    let (files, sizes) = service::input_files(&state, tenant, &run).await?;
    check_input_size(&run, &sizes, &state.settings.maxima)?;
    let key = service::idempotent_name(&headers, tenant)?;
    if let Some(name) = &key
        && let Some(done) = service::collected(&state, tenant, name).await?
    {
        // The first run finished and its CodeRun was collected: its record is the answer.
        return Ok(done.into_response(&state));
    }
    crate::quota::check_run_room(&state, tenant)?;
    let place = match key {
        None => Some(service::check_queue_room(
            &state,
            tenant,
            service::run_bytes(&run),
        )?),
        Some(_) => None,
    };
    // A stream's slot is taken before the run exists: a refused stream starts nothing.
    let slot = run
        .stream
        .then(|| events::take_slot(&state, tenant))
        .transpose()?;
    let created = service::create(&state, tenant, key.as_deref(), &run, files).await?;
    if let Some(place) = place {
        place.created(&created.name_any(), |n| state.runs.counts(n));
    }
    if let Some(slot) = slot {
        let id = created.metadata.name.clone().unwrap_or_default();
        return Ok(events::respond(&state, tenant, &id, &headers, slot));
    }
    let reply = if run.wait {
        service::wait_for_end(&state, tenant, created, &run, received).await?
    } else {
        service::answer_for(&state, tenant, &created).await?
    };
    let reply = reply.in_container(&state, run.container.as_deref());
    Ok(reply.into_response(&state))
}

/// Retrieve a run
///
/// The run with all its output.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id", max_length = 63)),
    responses(
        (status = 200, body = Run),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such run for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    match service::answer(&state, &caller.tenant, &id).await? {
        Some(a) => Ok(a.into_response(&state)),
        None => Err(run_not_found(&id)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// How many runs, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of the last run of the previous page.
    #[param(max_length = 63)]
    after: Option<String>,
}

/// List runs
///
/// The caller's runs, newest first. A list item carries at most the first 4 KiB of the
/// run's stdout and stderr; retrieve the run for all of it.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(ListRunsQuery),
    responses(
        (status = 200, body = Page<Run>),
        (status = 400, description = "Invalid limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListRunsQuery>,
) -> Result<Json<Page<Run>>, ApiError> {
    let limit = check_limit(query.limit)?;
    let after = query.after.as_deref();
    match service::list(&state, &caller.tenant, after, limit).await? {
        Some(page) => Ok(Json(page)),
        None => Err(unknown_cursor(after)),
    }
}

/// A list's `after` that is not one of its ids.
pub fn unknown_cursor(after: Option<&str>) -> ApiError {
    ApiError::invalid(
        format!(
            "after is {:?}, which is not an id in this list",
            after.unwrap_or_default()
        ),
        "after".to_string(),
    )
}

/// Cancel a run
///
/// Asks the run to stop; what it printed so far is kept. Returns the run as it is now (a
/// finished run is returned unchanged).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id", max_length = 63)),
    responses(
        (status = 200, body = Run),
        (status = 400, description = "An id that is not text", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such run for this API key", body = ErrorBody),
        (status = 503, description = "The cluster is busy or cannot be reached; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    match service::cancel(&state, &caller.tenant, &id).await? {
        Some(a) => Ok(a.into_response(&state)),
        None => Err(run_not_found(&id)),
    }
}
