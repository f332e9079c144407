//! `/v1/runs`: create a run (and by default wait for it), read one, list them, cancel one.
//! Reads come from the reflector cache and, once a CodeRun is gone, from its stored record.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use codeinterp_crds::{CodeRun, CodeRunSpec, InputFile, SHARD_LABEL, TENANT_LABEL};
use codeinterp_store::{RunRecord, StoreError};
use kube::api::{Patch, PatchParams, PostParams};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::pagination::{Page, check_limit, paginate};
use crate::run_object::{Run, from_coderun, from_record};
use crate::run_request::{
    CreateRunRequest, ValidRun, check_idempotency_key, check_input_size, idempotent_run_name,
    input_file_name, random_run_name, validate, wait_budget,
};
use crate::state::AppState;

/// Field manager of the CodeRuns the API creates and patches.
pub const MANAGER: &str = "codeinterp-apiserver";
/// How long a new CodeRun may take to reach the cache before the API answers without it.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
}

/// The stored record of a run of the tenant; ids that cannot be a run are simply not found.
async fn stored_run(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Option<RunRecord>, ApiError> {
    match state.store.get_run(tenant, id).await {
        Ok(rec) => Ok(rec),
        Err(StoreError::Name(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A CodeRun as the API shows it; a finished one is told by its record. While storage
/// cannot be read, the status (with its output preview) still answers.
async fn present(state: &AppState, tenant: &str, run: &CodeRun) -> Run {
    let record = if run.is_finished() {
        let id = run.metadata.name.clone().unwrap_or_default();
        stored_run(state, tenant, &id).await.unwrap_or_else(|e| {
            tracing::warn!(run = %id, error = %e, "reading the run record; answering from the status");
            None
        })
    } else {
        None
    };
    from_coderun(run, record.as_ref(), &state.links())
}

fn coderun(
    name: &str,
    namespace: &str,
    shard: Option<&str>,
    tenant: &str,
    run: &ValidRun,
    files: Vec<InputFile>,
) -> CodeRun {
    let mut cr = CodeRun::new(
        name,
        CodeRunSpec {
            language: run.language,
            code: run.code.clone(),
            stdin: run.stdin.clone(),
            args: run.args.clone(),
            files,
            limits: run.limits.clone(),
            ttl_seconds_after_finished: None,
            cancel: None,
        },
    );
    cr.metadata.namespace = Some(namespace.to_string());
    let mut labels: BTreeMap<String, String> =
        [(TENANT_LABEL.to_string(), tenant.to_string())].into();
    if let Some(shard) = shard {
        labels.insert(SHARD_LABEL.to_string(), shard.to_string());
    }
    cr.metadata.labels = Some(labels);
    cr
}

/// Resolves the input files of the tenant into the names they get in /work.
async fn input_files(
    state: &AppState,
    tenant: &str,
    run: &ValidRun,
) -> Result<(Vec<InputFile>, Vec<u64>), ApiError> {
    let mut files: Vec<InputFile> = Vec::new();
    let mut sizes = Vec::new();
    for (i, id) in run.file_ids.iter().enumerate() {
        let meta = match state.store.get_file_meta(tenant, id).await? {
            Some(m) => m,
            None => {
                return Err(ApiError::invalid_with_code(
                    format!("No such file: {id}"),
                    format!("files[{i}]"),
                    "file_not_found",
                ));
            }
        };
        let name = input_file_name(&meta.filename);
        if files.iter().any(|f| f.name == name) {
            return Err(ApiError::invalid(
                format!("two input files would both be named {name:?} in the working directory"),
                format!("files[{i}]"),
            ));
        }
        sizes.push(meta.bytes);
        files.push(InputFile {
            name,
            file_id: Some(id.clone()),
            content_base64: None,
        });
    }
    Ok((files, sizes))
}

/// Creates the CodeRun. With an idempotency key its name is fixed, and a CodeRun that
/// already has it is the run to return.
async fn create(
    state: &AppState,
    tenant: &str,
    fixed_name: Option<&str>,
    run: &ValidRun,
    files: Vec<InputFile>,
) -> Result<Arc<CodeRun>, ApiError> {
    let api = state.coderuns();
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    for _ in 0..3 {
        let name = fixed_name.map_or_else(random_run_name, str::to_string);
        let object = coderun(
            &name,
            state.runs.namespace(),
            state.runs.shard(),
            tenant,
            run,
            files.clone(),
        );
        match api.create(&params, &object).await {
            Ok(created) => return Ok(Arc::new(created)),
            Err(kube::Error::Api(s)) if s.is_already_exists() && fixed_name.is_some() => {
                let deadline = Instant::now() + CACHE_CATCH_UP;
                return match state.runs.wait_for_arrival(&name, deadline).await {
                    Some(existing) if existing.tenant() == tenant => Ok(existing),
                    Some(_) => Err(ApiError::Conflict(
                        "this Idempotency-Key names a run of another tenant".into(),
                    )),
                    None => Err(ApiError::Conflict(
                        "a run with this Idempotency-Key is being created; retry shortly".into(),
                    )),
                };
            }
            // A random name that is taken: draw another.
            Err(kube::Error::Api(s)) if s.is_already_exists() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal("no free run name after 3 tries".into()))
}

/// Create a run
///
/// Validates the request, creates a CodeRun and, unless `wait` is false, waits for the run
/// to finish (up to its timeout plus slack) and returns it with its output.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    request_body = CreateRunRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Repeating a request with the same key returns the run the first one created")),
    responses(
        (status = 200, description = "The run: finished, or as far as it got within the wait", body = Run),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_run(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateRunRequest>,
) -> Result<Json<Run>, ApiError> {
    let received = Instant::now();
    let tenant = caller.tenant.as_str();
    let run = validate(request, &state.settings.maxima)?;
    let (files, sizes) = input_files(&state, tenant, &run).await?;
    check_input_size(&run, &sizes)?;

    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().unwrap_or("\u{0}");
            check_idempotency_key(key)?;
            Some(idempotent_run_name(tenant, key))
        }
    };
    if let Some(name) = &key
        && state.runs.get_for(tenant, name).is_none()
        && let Some(rec) = stored_run(&state, tenant, name).await?
    {
        // The first run finished and its CodeRun was collected: its record is the answer.
        return Ok(Json(from_record(&rec, &state.links())));
    }

    let created = create(&state, tenant, key.as_deref(), &run, files).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    // Answer only once the cache knows the run, so a GET right after finds it.
    let mut current = state
        .runs
        .wait_for_arrival(&name, Instant::now() + CACHE_CATCH_UP)
        .await
        .unwrap_or(created);
    if run.wait && !current.is_finished() {
        let budget = wait_budget(
            &run.limits,
            &state.settings.maxima,
            state.settings.wait_slack,
            state.settings.max_wait,
        );
        match state
            .runs
            .wait_until(&name, received + budget, CodeRun::is_finished)
            .await
        {
            Some(latest) => current = latest,
            // Finished and already collected: the record is all that is left.
            None => {
                if let Some(rec) = stored_run(&state, tenant, &name).await? {
                    let answer = from_record(&rec, &state.links());
                    state.metrics.run_finished(
                        &answer.language,
                        answer.status.as_str(),
                        received.elapsed().as_secs_f64(),
                    );
                    return Ok(Json(answer));
                }
            }
        }
    }
    let answer = present(&state, tenant, &current).await;
    if run.wait && answer.status.is_terminal() {
        state.metrics.run_finished(
            &answer.language,
            answer.status.as_str(),
            received.elapsed().as_secs_f64(),
        );
    }
    Ok(Json(answer))
}

/// Retrieve a run
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, body = Run),
        (status = 404, description = "No such run for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    if let Some(run) = state.runs.get_for(&caller.tenant, &id) {
        return Ok(Json(present(&state, &caller.tenant, &run).await));
    }
    match stored_run(&state, &caller.tenant, &id).await? {
        Some(rec) => Ok(Json(from_record(&rec, &state.links()))),
        None => Err(ApiError::not_found("run", &id)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// How many runs, 1 to 100 (default 20).
    limit: Option<i64>,
    /// The id of the last run of the previous page.
    after: Option<String>,
}

/// List runs
///
/// The caller's runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(ListRunsQuery),
    responses(
        (status = 200, body = Page<Run>),
        (status = 400, description = "Invalid limit or cursor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListRunsQuery>,
) -> Result<Json<Page<Run>>, ApiError> {
    let limit = check_limit(query.limit)?;
    let tenant = caller.tenant.as_str();
    let links = state.links();
    let mut records: HashMap<String, RunRecord> = state
        .store
        .list_runs(tenant)
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut runs: Vec<Run> = state
        .runs
        .list_for(tenant)
        .iter()
        .map(|cr| {
            let id = cr.metadata.name.clone().unwrap_or_default();
            let record = records.remove(&id);
            from_coderun(cr, record.as_ref(), &links)
        })
        .collect();
    runs.extend(records.values().map(|r| from_record(r, &links)));
    runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(Json(paginate(
        runs,
        |r| r.id.as_str(),
        limit,
        query.after.as_deref(),
    )?))
}

/// Cancel a run
///
/// Asks the run to stop; what it printed so far is kept. Returns the run as it is now (a
/// finished run is returned unchanged).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, body = Run),
        (status = 404, description = "No such run for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    let tenant = caller.tenant.as_str();
    if let Some(run) = state.runs.get_for(tenant, &id) {
        if run.is_finished() || run.cancel_requested() {
            return Ok(Json(present(&state, tenant, &run).await));
        }
        let patch = serde_json::json!({"spec": {"cancel": true}});
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match state
            .coderuns()
            .patch(&id, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(patched) => return Ok(Json(present(&state, tenant, &patched).await)),
            // Collected between the look and the patch: the record answers.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    match stored_run(&state, tenant, &id).await? {
        Some(rec) => Ok(Json(from_record(&rec, &state.links()))),
        None => Err(ApiError::not_found("run", &id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{Language, Limits};

    fn valid() -> ValidRun {
        ValidRun {
            language: Language::Python,
            code: "print(1)".into(),
            stdin: None,
            args: vec![],
            file_ids: vec![],
            limits: Limits::default(),
            wait: true,
        }
    }

    #[test]
    fn a_sharded_server_labels_its_runs_with_the_shard_and_the_tenant() {
        let cr = coderun("run-a", "ns", Some("s3-x"), "acme", &valid(), vec![]);
        let labels = cr.metadata.labels.unwrap();
        assert_eq!(labels.get(TENANT_LABEL).map(String::as_str), Some("acme"));
        assert_eq!(labels.get(SHARD_LABEL).map(String::as_str), Some("s3-x"));
        assert_eq!(cr.metadata.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn an_unsharded_server_leaves_the_shard_label_off() {
        let cr = coderun("run-a", "ns", None, "acme", &valid(), vec![]);
        assert!(!cr.metadata.labels.unwrap().contains_key(SHARD_LABEL));
    }
}
