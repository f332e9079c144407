//! The run service behind `/v1/runs` and its event streams: creating a CodeRun and binding
//! its id, finding the tenant's run by id (live from the reflector cache, finished from its
//! stored record), waiting for it and answering it. A run is the tenant's only if the REST
//! API bound its id to that CodeRun's UID when it created it: no other CodeRun of the same
//! name answers.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use codeinterp_crds::{CodeRun, CodeRunSpec, InputFile, SHARD_LABEL, TENANT_LABEL};
use codeinterp_store::{RunBinding, RunRecord, StoreError};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::pagination::Page;
use crate::run_cache::Load;
use crate::runs::joining::Ticket;
use crate::runs::model::{Prepared, Run, RunStatus, from_coderun, list_item};
use crate::runs::request::{
    ValidRun, check_idempotency_key, idempotent_run_name, input_file_name, random_run_name,
    wait_budget,
};
use crate::state::AppState;

/// Field manager of the CodeRuns the API creates and patches.
pub const MANAGER: &str = "codeinterp-apiserver";
/// How long a new CodeRun may take to reach the cache before the API answers without it.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);
/// What a client told its queue is full should wait before trying again.
const QUEUE_FULL_RETRY_SECS: u64 = 10;

/// A run as answered whole: live (from its CodeRun), or finished (prepared from its record,
/// all its output included).
pub enum Answer {
    Live(Box<Run>),
    Done(Arc<Prepared>),
}

impl Answer {
    pub fn status(&self) -> RunStatus {
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

    /// The answer naming the container the run was made in (a CodeRun's name): a finished
    /// run's record does not.
    pub fn in_container(self, state: &AppState, container: Option<&str>) -> Answer {
        let Some(id) = container.and_then(crate::containers::model::id_of) else {
            return self;
        };
        match self {
            Answer::Done(prepared) => {
                let mut run = prepared.to_run(&state.links());
                run.container = Some(id);
                Answer::Live(Box::new(run))
            }
            live => live,
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
}

/// A run as lists and events show it: what it takes to answer with its heads only, so it
/// stays small whatever the program printed.
pub enum Summary {
    /// Its CodeRun: live, or finished while its record cannot be read.
    Status(Arc<CodeRun>),
    /// Its stored record (the run has finished).
    Record(Box<RunRecord>),
}

impl Summary {
    /// The run with at most the first 4 KiB of each stream.
    pub fn to_run(&self, state: &AppState) -> Run {
        match self {
            Summary::Status(run) => from_coderun(run).with_heads(),
            Summary::Record(rec) => list_item(rec, &state.links()),
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
pub async fn live_run(
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
pub async fn answer_for(state: &AppState, tenant: &str, run: &CodeRun) -> Result<Answer, ApiError> {
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
    Ok(Answer::Live(Box::new(from_coderun(run))))
}

/// The run of the tenant with this id as lists and events show it; `None` if it has none.
/// Reads at most its small record, never its output.
pub async fn summary(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Option<Summary>, ApiError> {
    let live = live_run(state, tenant, id).await?;
    if let Some(run) = &live
        && !run.is_finished()
    {
        return Ok(Some(Summary::Status(run.clone())));
    }
    match state.store.get_run_by_id(tenant, id).await {
        Ok(Some(rec)) => Ok(Some(Summary::Record(Box::new(rec)))),
        // Finished but not stored yet, or collected before it could be: its status.
        Ok(None) | Err(StoreError::Name(_)) => Ok(live.map(Summary::Status)),
        Err(e) if live.is_some() => {
            tracing::warn!(run = %id, error = %e, "reading the run record; answering from the status");
            Ok(live.map(Summary::Status))
        }
        Err(e) => Err(e.into()),
    }
}

/// A page of the tenant's runs, newest first, as list items; `None` when `after` is not one
/// of its runs.
pub async fn list(
    state: &AppState,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<Page<Run>>, ApiError> {
    let Some(page) = state.store.list_run_ids(tenant, after, limit).await? else {
        return Ok(None);
    };
    let mut data = Vec::with_capacity(page.ids.len());
    for id in &page.ids {
        if let Some(summary) = summary(state, tenant, id).await? {
            data.push(summary.to_run(state));
        }
    }
    Ok(Some(Page {
        object: "list",
        first_id: data.first().map(|r| r.id.clone()),
        last_id: data.last().map(|r| r.id.clone()),
        has_more: page.has_more,
        data,
    }))
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
            container: run.container.clone(),
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

/// Resolves the input files of the tenant into the names they get in /work, with their
/// sizes.
pub async fn input_files(
    state: &AppState,
    tenant: &str,
    run: &ValidRun,
) -> Result<(Vec<InputFile>, Vec<u64>), ApiError> {
    let mut files: Vec<InputFile> = Vec::new();
    let mut sizes = Vec::new();
    for (i, id) in run.file_ids.iter().enumerate() {
        let Some(meta) = state.store.get_file_meta(tenant, id).await? else {
            return Err(ApiError::invalid_with_code(
                format!("No such file: {id}"),
                format!("files[{i}]"),
                "file_not_found",
            ));
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

/// The CodeRun name an `Idempotency-Key` header fixes for the tenant, if one was given.
pub fn idempotent_name(headers: &HeaderMap, tenant: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("\u{0}");
    check_idempotency_key(key)?;
    Ok(Some(idempotent_run_name(tenant, key)))
}

/// The answer of a run an earlier request with the same idempotency key created, finished
/// and collected since: only its record is left.
pub async fn collected(
    state: &AppState,
    tenant: &str,
    name: &str,
) -> Result<Option<Answer>, ApiError> {
    if state.runs.get_for(tenant, name).is_some() {
        return Ok(None);
    }
    answer(state, tenant, name).await
}

/// The bytes of code, stdin and arguments a run will hold in its CodeRun.
pub fn run_bytes(run: &ValidRun) -> u64 {
    crate::run_cache::input_bytes(&run.code, run.stdin.as_deref(), &run.args)
}

/// Refuses a new run while the tenant has as many waiting for room as it may, the line of
/// all tenants is as long as it may be, or the tenant's unfinished runs hold as many bytes
/// of code, stdin and arguments as they may; else takes its place until the cache shows it.
pub fn check_queue_room(state: &AppState, tenant: &str, bytes: u64) -> Result<Ticket, ApiError> {
    let load = || state.runs.load_of(tenant);
    let known = |name: &str| state.runs.counts(name);
    state.joining.check(tenant, bytes, load, known, |load| {
        match queue_refusal(&state.settings, load) {
            Some(message) => Err(ApiError::QueueFull {
                message,
                retry_after_secs: QUEUE_FULL_RETRY_SECS,
            }),
            None => Ok(()),
        }
    })
}

/// Why a new run cannot join the line now, if it cannot.
fn queue_refusal(settings: &crate::config::Settings, load: Load) -> Option<String> {
    if load.waiting >= settings.max_queued_per_tenant {
        return Some(format!(
            "You already have {} runs waiting for room, the most allowed. Retry when some have started.",
            load.waiting
        ));
    }
    if load.waiting_total >= settings.max_queued_total {
        return Some(format!(
            "The service has {} runs waiting for room, the most it takes. Retry when some have started.",
            load.waiting_total
        ));
    }
    match settings.max_live_spec_bytes_per_tenant {
        Some(cap) if load.live_spec_bytes >= cap => Some(format!(
            "Your unfinished runs hold {:.1} MiB of code, stdin and arguments, the most allowed ({:.1} MiB). Retry when some have finished.",
            load.live_spec_bytes as f64 / 1_048_576.0,
            cap as f64 / 1_048_576.0
        )),
        _ => None,
    }
}

/// Creates the CodeRun and binds its id to it, then waits (briefly) for the cache to know
/// it, so a GET or a stream right after the answer finds it. With an idempotency key the
/// name is fixed, and a CodeRun that already has it is the run to return.
pub async fn create(
    state: &AppState,
    tenant: &str,
    fixed_name: Option<&str>,
    run: &ValidRun,
    files: Vec<InputFile>,
) -> Result<Arc<CodeRun>, ApiError> {
    let created = create_bound(state, tenant, fixed_name, run, files).await?;
    let arrived = state
        .runs
        .wait_for_arrival(&created.name_any(), Instant::now() + CACHE_CATCH_UP)
        .await;
    Ok(arrived.unwrap_or(created))
}

async fn create_bound(
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
        let (namespace, shard) = (state.runs.namespace(), state.runs.shard());
        let object = coderun(&name, namespace, shard, tenant, run, files.clone());
        match api.create(&params, &object).await {
            Ok(created) => {
                bind(state, tenant, &created).await?;
                crate::containers::runs::remember(state, tenant, &created).await;
                return Ok(Arc::new(created));
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() && fixed_name.is_some() => {
                return existing(state, tenant, &name).await;
            }
            // A random name that is taken: draw another.
            Err(kube::Error::Api(s)) if s.is_already_exists() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal("no free run name after 3 tries".into()))
}

/// The run an earlier request with the same idempotency key created.
async fn existing(state: &AppState, tenant: &str, name: &str) -> Result<Arc<CodeRun>, ApiError> {
    let deadline = Instant::now() + CACHE_CATCH_UP;
    match state.runs.wait_for_arrival(name, deadline).await {
        Some(existing) if existing.tenant_label() == Some(tenant) => Ok(existing),
        Some(_) => Err(ApiError::Conflict(
            "this Idempotency-Key names a run of another tenant".into(),
        )),
        None => Err(ApiError::Conflict(
            "a run with this Idempotency-Key is being created; retry shortly".into(),
        )),
    }
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

/// Waits for a run just created to finish (up to its timeout plus slack, counted from when
/// the request arrived) and answers it as far as it got.
pub async fn wait_for_end(
    state: &AppState,
    tenant: &str,
    created: Arc<CodeRun>,
    run: &ValidRun,
    received: Instant,
) -> Result<Answer, ApiError> {
    let name = created.name_any();
    let mut current = created;
    if !current.is_finished() {
        let settings = &state.settings;
        let budget = wait_budget(
            &run.limits,
            &settings.maxima,
            settings.wait_slack,
            settings.max_wait,
        );
        let deadline = received + budget;
        match state
            .runs
            .wait_until(&name, deadline, CodeRun::is_finished)
            .await
        {
            Some(latest) => current = latest,
            // Finished and already collected: the record is all that is left.
            None => {
                if let Some(done) = answer(state, tenant, &name).await? {
                    count_finished(state, &done, received);
                    return Ok(done);
                }
            }
        }
    }
    let reply = answer_for(state, tenant, &current).await?;
    count_finished(state, &reply, received);
    Ok(reply)
}

fn count_finished(state: &AppState, answer: &Answer, received: Instant) {
    if answer.status().is_terminal() {
        state.metrics.run_finished(
            answer.language(),
            answer.status().as_str(),
            received.elapsed().as_secs_f64(),
        );
    }
}

/// Asks the tenant's run to stop, and answers it as it is now (a finished run unchanged);
/// `None` if the tenant has no such run.
pub async fn cancel(state: &AppState, tenant: &str, id: &str) -> Result<Option<Answer>, ApiError> {
    if let Some(run) = live_run(state, tenant, id).await?
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
            .patch(id, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(patched) => return answer_for(state, tenant, &patched).await.map(Some),
            // Collected between the look and the patch: the record answers.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    answer(state, tenant, id).await
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
            container: None,
        }
    }

    fn settings(args: &[&str]) -> crate::config::Settings {
        use clap::Parser;
        let all = ["apiserver"].iter().chain(args).copied();
        crate::config::Config::parse_from(all).settings().unwrap()
    }

    #[test]
    fn a_run_is_refused_at_each_cap_of_the_line_and_let_in_below_them() {
        let s = settings(&[
            "--max-queued-per-tenant",
            "3",
            "--max-queued-total",
            "10",
            "--max-live-spec-mb-per-tenant",
            "1",
        ]);
        let below = Load {
            waiting: 2,
            waiting_total: 9,
            live_spec_bytes: (1 << 20) - 1,
        };
        assert_eq!(queue_refusal(&s, below), None);
        let mine = queue_refusal(
            &s,
            Load {
                waiting: 3,
                ..below
            },
        )
        .unwrap();
        assert!(mine.contains("You already have 3 runs waiting"), "{mine}");
        let all = queue_refusal(
            &s,
            Load {
                waiting_total: 10,
                ..below
            },
        )
        .unwrap();
        assert!(all.contains("The service has 10 runs waiting"), "{all}");
        let bytes = queue_refusal(
            &s,
            Load {
                live_spec_bytes: 1 << 20,
                ..below
            },
        )
        .unwrap();
        assert!(bytes.contains("hold 1.0 MiB of code"), "{bytes}");
        // 0: no cap on bytes.
        let open = settings(&["--max-live-spec-mb-per-tenant", "0"]);
        assert_eq!(
            queue_refusal(
                &open,
                Load {
                    live_spec_bytes: u64::MAX,
                    ..Load::default()
                }
            ),
            None
        );
    }

    #[test]
    fn a_cached_run_keeps_the_size_of_what_it_dropped() {
        use crate::run_cache::{Cached, spec_bytes};
        let mut run = valid();
        run.code = "é".repeat(10);
        run.stdin = Some("abc".into());
        run.args = vec!["--x".into()];
        let mut cr = coderun("run-a", "ns", None, "acme", &run, vec![]);
        assert_eq!(spec_bytes(&cr), 20 + 3 + 3);
        cr.slim();
        assert!(cr.spec.code.is_empty() && cr.spec.stdin.is_none());
        assert_eq!(
            cr.annotations()
                .get("codeinterp.dev/cached-spec-bytes")
                .map(String::as_str),
            Some("26")
        );
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

    #[test]
    fn an_idempotency_key_fixes_the_name_per_tenant_and_a_bad_one_is_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotent_name(&headers, "acme").unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("k1"));
        assert_eq!(
            idempotent_name(&headers, "acme").unwrap(),
            Some(idempotent_run_name("acme", "k1"))
        );
        headers.insert("idempotency-key", HeaderValue::from_static("has space"));
        let e = idempotent_name(&headers, "acme").unwrap_err();
        assert_eq!(e.body().error.param.as_deref(), Some("Idempotency-Key"));
    }
}
