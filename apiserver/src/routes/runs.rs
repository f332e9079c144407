//! `/v1/runs`: create a run (and by default wait for it), read one, list them, cancel one.
//! A live run is read from the reflector cache; a finished one from its stored record,
//! prepared once and kept in memory. A run is the tenant's only if the REST API bound its id
//! to that CodeRun's UID when it created it: no other CodeRun of the same name answers.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use codeinterp_crds::{CodeRun, CodeRunSpec, InputFile, SHARD_LABEL, TENANT_LABEL};
use codeinterp_store::{RunBinding, RunRecord, StoreError};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::pagination::{Page, check_limit};
use crate::run_object::{Prepared, Run, from_coderun, list_item};
use crate::run_request::{
    CreateRunRequest, ValidRun, check_idempotency_key, check_input_size, idempotent_run_name,
    input_file_name, random_run_name, validate, wait_budget,
};
use crate::state::AppState;

/// Field manager of the CodeRuns the API creates and patches.
pub const MANAGER: &str = "codeinterp-apiserver";
/// How long a new CodeRun may take to reach the cache before the API answers without it.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);
/// What a client told its queue is full should wait before trying again.
const QUEUE_FULL_RETRY_SECS: u64 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route(
            "/v1/runs/{id}/events",
            get(crate::routes::events::get_events),
        )
}

/// A run as answered: live (from its CodeRun), or finished (prepared from its record).
pub enum Answer {
    Live(Box<Run>),
    Done(Arc<Prepared>),
}

impl Answer {
    pub fn status(&self) -> crate::run_object::RunStatus {
        match self {
            Answer::Live(run) => run.status,
            Answer::Done(p) => p.status,
        }
    }

    pub fn language(&self) -> &str {
        match self {
            Answer::Live(run) => &run.language,
            Answer::Done(p) => &p.language,
        }
    }

    pub fn into_response(self, state: &AppState) -> Response {
        match self {
            Answer::Live(run) => Json(*run).into_response(),
            Answer::Done(prepared) => {
                let mut response = prepared.body(&state.links()).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
        }
    }

    pub fn into_run(self, state: &AppState) -> Run {
        match self {
            Answer::Live(run) => *run,
            Answer::Done(prepared) => prepared.to_run(&state.links()),
        }
    }
}

/// Whether the REST API bound this id of the tenant to this CodeRun.
async fn is_bound(state: &AppState, tenant: &str, id: &str, uid: &str) -> Result<bool, ApiError> {
    if let Some(bound) = state.bindings.get(&(tenant.to_string(), id.to_string())) {
        return Ok(bound == uid);
    }
    match state.store.binding(tenant, id).await? {
        Some(b) => {
            state
                .bindings
                .insert((tenant.to_string(), id.to_string()), b.uid.clone());
            Ok(b.uid == uid)
        }
        None => Ok(false),
    }
}

/// The tenant's live CodeRun of this id, if the REST API created it.
async fn live_run(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Option<Arc<CodeRun>>, ApiError> {
    let Some(run) = state.runs.get_for(tenant, id) else {
        return Ok(None);
    };
    let uid = run.uid().unwrap_or_default();
    Ok(is_bound(state, tenant, id, &uid).await?.then_some(run))
}

async fn prepare(
    state: &AppState,
    tenant: &str,
    rec: &RunRecord,
) -> Result<Arc<Prepared>, ApiError> {
    Ok(state
        .finished
        .load(&state.store, tenant, rec, &state.links())
        .await?)
}

/// The run of the tenant with this id, as the API answers it; `None` if it has none.
pub async fn answer(state: &AppState, tenant: &str, id: &str) -> Result<Option<Answer>, ApiError> {
    if let Some(done) = state.finished.get(tenant, id) {
        return Ok(Some(Answer::Done(done)));
    }
    if let Some(run) = live_run(state, tenant, id).await? {
        return answer_for(state, tenant, &run).await.map(Some);
    }
    match state.store.get_run_by_id(tenant, id).await {
        Ok(Some(rec)) => Ok(Some(Answer::Done(prepare(state, tenant, &rec).await?))),
        Ok(None) | Err(StoreError::Name(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A CodeRun of the tenant as the API answers it; a finished one by its record, while
/// storage cannot be read by its status (with its output preview).
async fn answer_for(state: &AppState, tenant: &str, run: &CodeRun) -> Result<Answer, ApiError> {
    if run.is_finished() {
        let (ns, uid) = (
            run.namespace().unwrap_or_default(),
            run.uid().unwrap_or_default(),
        );
        match state.store.get_run(tenant, &ns, &uid).await {
            Ok(Some(rec)) => return Ok(Answer::Done(prepare(state, tenant, &rec).await?)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(run = %run.name_any(), error = %e, "reading the run record; answering from the status")
            }
        }
    }
    Ok(Answer::Live(Box::new(from_coderun(run, &state.links()))))
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

/// Creates the CodeRun and binds its id to it. With an idempotency key the name is fixed,
/// and a CodeRun that already has it is the run to return.
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
            Ok(created) => {
                bind(state, tenant, &created).await?;
                return Ok(Arc::new(created));
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() && fixed_name.is_some() => {
                let deadline = Instant::now() + CACHE_CATCH_UP;
                return match state.runs.wait_for_arrival(&name, deadline).await {
                    Some(existing) if existing.tenant_label() == Some(tenant) => Ok(existing),
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

/// Binds the run's id to the CodeRun just created. A run that cannot be bound is deleted:
/// the client is told to retry rather than given a run it could never read back.
async fn bind(state: &AppState, tenant: &str, created: &CodeRun) -> Result<(), ApiError> {
    let id = created.name_any();
    let uid = created.uid().unwrap_or_default();
    let binding = RunBinding {
        uid: uid.clone(),
        namespace: created.namespace().unwrap_or_default(),
        created_ms: created
            .creation_timestamp()
            .map(|t| t.0.as_millisecond())
            .unwrap_or_default(),
        legacy: false,
    };
    match state.store.bind_run(tenant, &id, &binding).await {
        Ok(_) => {
            state.bindings.insert((tenant.to_string(), id), uid);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(run = %id, error = %e, "binding the run's id; deleting the run");
            let _ = state
                .coderuns()
                .delete(&id, &DeleteParams::background())
                .await;
            Err(ApiError::Unavailable(
                "the run could not be recorded; try again shortly".into(),
            ))
        }
    }
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
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Repeating a request with the same key returns the run the first one created")),
    responses(
        (status = 200, description = "The run: finished, or as far as it got within the wait", body = Run),
        (status = 200, description = "With `stream`: the run's events", content_type = "text/event-stream", body = crate::routes::events::RunEvent),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not a JSON body", body = ErrorBody),
        (status = 429, description = "Rate limited, or the tenant's queue is full (`queue_full`)", body = ErrorBody),
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
    let (files, sizes) = input_files(&state, tenant, &run).await?;
    check_input_size(&run, &sizes, &state.settings.maxima)?;

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
        && let Some(done) = answer(&state, tenant, name).await?
    {
        // The first run finished and its CodeRun was collected: its record is the answer.
        return Ok(done.into_response(&state));
    }
    let waiting = state.runs.waiting_for(tenant);
    if key.is_none() && waiting >= state.settings.max_queued_per_tenant {
        return Err(ApiError::QueueFull {
            message: format!(
                "You already have {waiting} runs waiting for room, the most allowed. Retry when some have started."
            ),
            retry_after_secs: QUEUE_FULL_RETRY_SECS,
        });
    }

    let created = create(&state, tenant, key.as_deref(), &run, files).await?;
    let name = created.name_any();
    if run.stream {
        // The run is bound to its id: its events can be read from the start.
        let _ = state
            .runs
            .wait_for_arrival(&name, Instant::now() + CACHE_CATCH_UP)
            .await;
        return crate::routes::events::stream_response(&state, tenant, &name, &headers);
    }
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
                if let Some(done) = answer(&state, tenant, &name).await? {
                    finished(&state, &done, received);
                    return Ok(done.into_response(&state));
                }
            }
        }
    }
    let reply = answer_for(&state, tenant, &current).await?;
    if run.wait {
        finished(&state, &reply, received);
    }
    Ok(reply.into_response(&state))
}

fn finished(state: &AppState, answer: &Answer, received: Instant) {
    if answer.status().is_terminal() {
        state.metrics.run_finished(
            answer.language(),
            answer.status().as_str(),
            received.elapsed().as_secs_f64(),
        );
    }
}

/// Retrieve a run
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id", max_length = 63)),
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
) -> Result<Response, ApiError> {
    match answer(&state, &caller.tenant, &id).await? {
        Some(a) => Ok(a.into_response(&state)),
        None => Err(ApiError::not_found("run", &id)),
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
    let Some(page) = state
        .store
        .list_run_ids(tenant, query.after.as_deref(), limit)
        .await?
    else {
        let cursor = query.after.unwrap_or_default();
        return Err(ApiError::invalid(
            format!("after is {cursor:?}, which is not an id in this list"),
            "after".to_string(),
        ));
    };
    let links = state.links();
    let mut data = Vec::with_capacity(page.ids.len());
    for id in &page.ids {
        if let Some(run) = live_run(&state, tenant, id).await?
            && !run.is_finished()
        {
            data.push(from_coderun(&run, &links));
            continue;
        }
        match state.store.get_run_by_id(tenant, id).await? {
            Some(rec) => data.push(list_item(&rec, &links)),
            // Finished but not stored yet, or collected before it could be: its status.
            None => {
                if let Some(run) = live_run(&state, tenant, id).await? {
                    data.push(from_coderun(&run, &links));
                }
            }
        }
    }
    Ok(Json(Page {
        object: "list",
        first_id: data.first().map(|r| r.id.clone()),
        last_id: data.last().map(|r| r.id.clone()),
        has_more: page.has_more,
        data,
    }))
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
        (status = 404, description = "No such run for this API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant.as_str();
    if let Some(run) = live_run(&state, tenant, &id).await?
        && !run.is_finished()
        && !run.cancel_requested()
    {
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
            Ok(patched) => {
                return Ok(answer_for(&state, tenant, &patched)
                    .await?
                    .into_response(&state));
            }
            // Collected between the look and the patch: the record answers.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    match answer(&state, tenant, &id).await? {
        Some(a) => Ok(a.into_response(&state)),
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
            stream: false,
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
