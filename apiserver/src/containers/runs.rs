//! A container's runs, in the order they were made, like a notebook's cells: the REST API
//! indexes each run it makes in a container (a finished run's record does not name its
//! container), and `GET /v1/containers/{id}/runs` reads that index back with each run as it
//! is now.
use axum::Json;
use axum::extract::State;
use codeinterp_crds::CodeRun;
use codeinterp_store::ContainerRun as IndexEntry;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::service;
use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::files::ListOrder;
use crate::pagination::{Page, check_limit};
use crate::runs::model::Run;
use crate::runs::unknown_cursor;
use crate::state::AppState;

/// A run in a container: the run object (as `GET /v1/runs` lists it) and the code it ran.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct ContainerRun {
    #[serde(flatten)]
    pub run: Run,
    /// The code the run was given (its first 16 KiB).
    pub code: String,
    /// Whether `code` holds only the first 16 KiB of it.
    pub code_truncated: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// How many, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of the last run of the previous page.
    after: Option<String>,
    /// `asc` (oldest first, the default: the order they ran in) or `desc`.
    #[param(value_type = Option<ListOrder>, inline)]
    order: Option<String>,
}

/// Adds a run the REST API just made to its container's index of runs, if it names one.
/// Only the notebook view depends on it: a failure is logged, the run goes on.
pub async fn remember(state: &AppState, tenant: &str, created: &CodeRun) {
    let Some(container) = created.spec.container.as_deref() else {
        return;
    };
    let entry = IndexEntry::new(
        &created.name_any(),
        created
            .creation_timestamp()
            .map(|t| t.0.as_second())
            .unwrap_or_default(),
        created
            .resource_version()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        &created.spec.code,
    );
    if let Err(e) = state
        .store
        .put_container_run(tenant, container, &entry)
        .await
    {
        tracing::warn!(run = %entry.id, container, error = %e, "indexing a container's run");
    }
}

/// List a container's runs
///
/// The runs made in the container through this API, oldest first by default (the order
/// they ran in, like a notebook's cells), each with the code it ran. Each run is as
/// `GET /v1/runs` lists it: `stdout` and `stderr` hold at most their first 4 KiB (retrieve
/// the run for all of it), and `container` names this container. Runs made with kubectl (a
/// CodeRun's `spec.container`) are not listed. The list goes with the container when it is
/// deleted.
#[utoipa::path(
    get,
    path = "/v1/containers/{container_id}/runs",
    operation_id = "list_container_runs",
    tag = "containers",
    params(("container_id" = String, Path, description = "The container's id"), RunsQuery),
    responses(
        (status = 200, body = Page<ContainerRun>),
        (status = 400, description = "Invalid limit, order or cursor", body = ErrorBody),
        (status = 404, description = "No such container for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(container_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<Page<ContainerRun>>, ApiError> {
    let limit = check_limit(query.limit)?;
    let newest_first = match query.order.as_deref() {
        None => false,
        order => super::newest_first(order)?,
    };
    let tenant = caller.tenant.as_str();
    let container = service::find(&state, tenant, &container_id, "container_id")?;
    let after = query.after.as_deref();
    let Some(page) = state
        .store
        .list_container_runs(tenant, &container.name_any(), after, limit, newest_first)
        .await?
    else {
        return Err(unknown_cursor(after));
    };
    let mut data = Vec::with_capacity(page.runs.len());
    for entry in page.runs {
        let Some(summary) = crate::runs::service::summary(&state, tenant, &entry.id).await? else {
            // Its CodeRun was collected before its record was stored: nothing to show.
            continue;
        };
        let mut run = summary.to_run(&state);
        run.container = Some(container_id.clone());
        data.push(ContainerRun {
            run,
            code: entry.code,
            code_truncated: entry.code_truncated,
        });
    }
    Ok(Json(Page {
        object: "list",
        first_id: data.first().map(|r| r.run.id.clone()),
        last_id: data.last().map(|r| r.run.id.clone()),
        has_more: page.has_more,
        data,
    }))
}
