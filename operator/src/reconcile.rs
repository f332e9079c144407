//! The CodeRun reconciler: one idempotent pass from whatever state the run and its pod are in
//! to the next step. Everything it needs to resume lives in the API (the CodeRun's status and
//! the pod), so an operator restarted mid-run neither loses nor repeats a run.
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use codeinterp_crds::{CodeRun, CodeRunStatus, Maxima, Phase, Usage};
use codeinterp_store::Store;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::Error;
use crate::config::{AppArmorMode, Config};
use crate::metrics::{LanguageLabels, Metrics, RunLabels};
use crate::outcome::{self, Outcome, PodProgress};
use crate::pod_spec::{self, ResolvedInputs};
use crate::results;

/// Field manager for everything the operator applies.
pub const MANAGER: &str = "codeinterp-operator";
/// Kubernetes refuses Secrets over 1 MiB; leave room for keys and metadata.
const MAX_SECRET_BYTES: usize = 1000 * 1024;
const PREVIEW_BYTES: usize = 4096;
/// How long a finished run's results may keep failing to reach object storage before the
/// run is failed (it is retried every few seconds until then).
const STORE_GIVE_UP_SECS: u64 = 300;

pub struct Context {
    pub client: Client,
    pub cfg: Config,
    pub maxima: Maxima,
    pub store: Store,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Whether the nodes enforce AppArmor, and when that was last read: a cluster-wide node
    /// list per run would put the whole node set on every run's path.
    pub apparmor_nodes: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

/// How long the nodes' AppArmor answer is reused.
const APPARMOR_CHECK_TTL: Duration = Duration::from_secs(60);

fn now() -> Time {
    Time(Timestamp::now())
}

fn secs_since(t: Option<&Time>) -> u64 {
    t.map(|t| (Timestamp::now().as_second() - t.0.as_second()).max(0) as u64)
        .unwrap_or(0)
}

#[instrument(skip_all, fields(run = %run.name_any(), ns = run.namespace().unwrap_or_default()))]
pub async fn reconcile(run: Arc<CodeRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let runs: Api<CodeRun> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = run.status.clone().unwrap_or_default();

    if run.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    if let Some(phase) = status.phase.filter(|p| p.is_terminal()) {
        let _ = phase;
        cleanup_children(&ctx, &ns, &name).await?;
        let age = secs_since(
            status
                .completed_at
                .as_ref()
                .or(run.meta().creation_timestamp.as_ref()),
        );
        let ttl = ttl_seconds(&ctx.cfg, &run);
        if age >= ttl {
            info!("deleting finished run after its TTL; its record stays in object storage");
            match runs.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(Error::Kube(e)),
            }
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(ttl - age + 1)));
    }

    let limits = run.spec.limits.clamp(&ctx.maxima);
    let pod = pods.get_opt(&name).await.map_err(Error::Kube)?;
    let Some(pod) = pod else {
        if run.cancel_requested() {
            let outcome = Outcome::without_record(
                Phase::Cancelled,
                "cancelled",
                "cancelled before it started",
            );
            return finish(&ctx, &run, status, outcome, None, None).await;
        }
        if status.pod_name.is_some() {
            let outcome = Outcome::failed(
                "pod_failed",
                "the runner pod was deleted before the run finished",
            );
            return finish(&ctx, &run, status, outcome, None, None).await;
        }
        return start(&ctx, &run, status, &limits).await;
    };

    let waited = secs_since(pod.meta().creation_timestamp.as_ref());
    let progress = outcome::progress(&pod, waited, ctx.cfg.start_timeout_seconds);

    if run.cancel_requested() && !matches!(progress, PodProgress::Finished { .. }) {
        return cancel(&ctx, &run, status, &pods, &pod, &progress).await;
    }

    match progress {
        PodProgress::Waiting => {
            let left = ctx.cfg.start_timeout_seconds.saturating_sub(waited).max(1);
            Ok(Action::requeue(Duration::from_secs(left)))
        }
        PodProgress::Stuck { reason, message } => {
            warn!(reason, %message, "runner pod cannot start");
            let outcome = Outcome::failed(reason, message);
            finish(&ctx, &run, status, outcome, None, None).await
        }
        PodProgress::Running { started_at } => {
            if status.phase != Some(Phase::Running) {
                status.phase = Some(Phase::Running);
                status.started_at = started_at.clone().or_else(|| Some(now()));
                set_condition(
                    &mut status,
                    "Started",
                    "True",
                    "ProgramStarted",
                    "the runner container is running",
                );
                apply_status(&runs, &name, &status).await?;

                publish(
                    &ctx,
                    &run,
                    EventType::Normal,
                    "Started",
                    "Run",
                    "the program started",
                )
                .await;
            }
            let budget = limits.timeout_ms.div_ceil(1000) + ctx.cfg.deadline_slack_seconds + 5;
            Ok(Action::requeue(Duration::from_secs(budget)))
        }
        PodProgress::Finished {
            terminated,
            pod_reason,
        } => {
            if status.started_at.is_none() {
                status.started_at = terminated.as_ref().and_then(|t| t.started_at.clone());
            }
            let log = match results::read_log(&pods, &name).await {
                Ok(log) => Some(log),
                Err(e) => {
                    warn!(error = %e, "could not read the runner's log");
                    None
                }
            };
            let parsed = log.as_deref().map(|l| results::parse(l, &limits));
            let record = match parsed {
                Some(Ok(rec)) => Some(rec),
                Some(Err(msg)) => {
                    warn!(%msg, "runner record failed validation");
                    let outcome = Outcome::failed("invalid_runner_output", msg);
                    return finish(
                        &ctx,
                        &run,
                        status,
                        outcome,
                        None,
                        terminated.and_then(|t| t.finished_at),
                    )
                    .await;
                }
                None => None,
            };
            let outcome = outcome::decide(
                record.as_ref(),
                terminated.as_ref(),
                pod_reason.as_deref(),
                run.cancel_requested(),
            );
            let finished_at = terminated.and_then(|t| t.finished_at);
            let ended_secs_ago = secs_since(finished_at.as_ref());
            match finish(
                &ctx,
                &run,
                status.clone(),
                outcome,
                record.as_ref(),
                finished_at,
            )
            .await
            {
                // Object storage has refused the results for long enough: the run must not
                // stay Running forever. Say so in its status (which lives in the API).
                Err(Error::Store(e)) if ended_secs_ago >= STORE_GIVE_UP_SECS => {
                    warn!(error = %e, "giving up on storing the results");
                    status.phase = Some(Phase::Failed);
                    status.reason = Some("storage_failed".into());
                    status.message = Some(format!("the results could not be stored: {e}"));
                    status.completed_at = Some(now());
                    set_condition(
                        &mut status,
                        "Finished",
                        "True",
                        "Failed",
                        "the results could not be stored",
                    );
                    apply_status(&runs, &name, &status).await?;
                    publish(
                        &ctx,
                        &run,
                        EventType::Warning,
                        "Failed",
                        "Finish",
                        "the results could not be stored",
                    )
                    .await;
                    cleanup_children(&ctx, &ns, &name).await?;
                    Ok(Action::await_change())
                }
                other => other,
            }
        }
    }
}

/// First pass: the deny-all policy, the inputs Secret, then the pod.
async fn start(
    ctx: &Context,
    run: &CodeRun,
    mut status: CodeRunStatus,
    limits: &codeinterp_crds::EffectiveLimits,
) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let runs: Api<CodeRun> = Api::namespaced(ctx.client.clone(), &ns);

    ensure_deny_all(ctx, &ns).await?;

    let apparmor_on_nodes = match ctx.cfg.apparmor_mode {
        AppArmorMode::Off => false,
        _ => nodes_report_apparmor(ctx).await?,
    };
    let applied = match pod_spec::decide_isolation(&ctx.cfg, apparmor_on_nodes) {
        Ok(applied) => applied,
        Err(msg) => {
            return finish(
                ctx,
                run,
                status,
                Outcome::failed("apparmor_unavailable", msg),
                None,
                None,
            )
            .await;
        }
    };

    let inputs = match resolve_inputs(ctx, run).await {
        Ok(inputs) => inputs,
        Err(msg) => {
            return finish(
                ctx,
                run,
                status,
                Outcome::failed("invalid_input", msg),
                None,
                None,
            )
            .await;
        }
    };
    let secret = pod_spec::secret(run, limits, &inputs);
    if pod_spec::secret_size(&secret) > MAX_SECRET_BYTES {
        let msg = format!(
            "code, stdin and input files together exceed {} KiB, the most a run can be given for now",
            MAX_SECRET_BYTES / 1024
        );
        return finish(
            ctx,
            run,
            status,
            Outcome::failed("inputs_too_large", msg),
            None,
            None,
        )
        .await;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pod_spec::pod(run, limits, &ctx.cfg, &applied);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let created = match create_if_missing(&secrets, &secret).await {
        Ok(()) => create_if_missing(&pods, &pod).await,
        Err(e) => Err(e),
    };
    // The API refusing the objects (an admission policy, a quota, an invalid value) will not
    // change by retrying: the run fails with the API's reason instead of waiting forever.
    if let Err(Error::Kube(kube::Error::Api(s))) = &created
        && (400..500).contains(&s.code)
        && s.code != 429
    {
        let msg = format!("the cluster refused the runner pod: {}", s.message);
        return finish(
            ctx,
            run,
            status,
            Outcome::failed("pod_rejected", msg),
            None,
            None,
        )
        .await;
    }
    created?;

    status.phase = Some(Phase::Queued);
    status.pod_name = Some(name.clone());
    status.applied = Some(applied.clone());
    status.observed_generation = run.meta().generation;
    set_condition(
        &mut status,
        "PodCreated",
        "True",
        "PodCreated",
        "runner pod and inputs created",
    );
    apply_status(&runs, &name, &status).await?;
    let note = format!(
        "runner pod created (seccomp {}, apparmor {}, network policy {})",
        applied.seccomp, applied.apparmor, applied.network_policy
    );
    publish(
        ctx,
        run,
        EventType::Normal,
        "PodCreated",
        "CreatePod",
        &note,
    )
    .await;
    Ok(Action::requeue(Duration::from_secs(
        ctx.cfg.start_timeout_seconds,
    )))
}

/// Cancelling a running program lowers the pod's deadline: the kubelet then stops the
/// container (SIGTERM to the wrapper, which kills the program and still writes what it
/// printed) and keeps the pod, so its log can be read. A pod not yet started is deleted.
async fn cancel(
    ctx: &Context,
    run: &CodeRun,
    status: CodeRunStatus,
    pods: &Api<Pod>,
    pod: &Pod,
    progress: &PodProgress,
) -> Result<Action, Error> {
    let name = run.name_any();
    if !matches!(progress, PodProgress::Running { .. }) {
        cleanup_children(ctx, &run.namespace().unwrap_or_default(), &name).await?;
        let outcome = Outcome::without_record(
            Phase::Cancelled,
            "cancelled",
            "cancelled before the program started",
        );
        return finish(ctx, run, status, outcome, None, None).await;
    }
    let deadline = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    if deadline != Some(1) {
        let patch = json!({"spec": {"activeDeadlineSeconds": 1}});
        pods.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(Error::Kube)?;
        publish(
            ctx,
            run,
            EventType::Normal,
            "Cancelling",
            "Cancel",
            "stopping the program; its output so far is kept",
        )
        .await;
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// Stores the results, writes the final status, then removes the pod and Secret.
async fn finish(
    ctx: &Context,
    run: &CodeRun,
    mut status: CodeRunStatus,
    outcome: Outcome,
    record: Option<&runner_protocol::RunRecord>,
    finished_at: Option<Time>,
) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let runs: Api<CodeRun> = Api::namespaced(ctx.client.clone(), &ns);
    let completed = finished_at.unwrap_or_else(now);
    let started = status.started_at.as_ref().map(|t| t.0.as_second());
    let (artifacts, record_key) = results::store(
        &ctx.store,
        run,
        record,
        &outcome,
        started,
        completed.0.as_second(),
    )
    .await?;

    status.phase = Some(outcome.phase);
    status.reason = outcome.reason.clone();
    status.message = outcome.message.clone();
    status.exit_code = outcome.exit_code;
    status.signal = outcome.signal;
    if outcome.usage != Usage::default() {
        status.usage = Some(outcome.usage.clone());
        status.duration = Some(format!("{:.2}s", outcome.usage.wall_ms as f64 / 1000.0));
    }
    status.completed_at = Some(completed);
    if let Some(rec) = record {
        status.stdout_preview = Some(preview(&rec.stdout));
        status.stderr_preview = Some(preview(&rec.stderr));
        status.stdout_truncated = rec.stdout_truncated;
        status.stderr_truncated = rec.stderr_truncated;
    }
    status.artifacts = artifacts;
    status.record_key = Some(record_key);
    let phase = outcome.phase.as_str();
    let message = outcome
        .message
        .clone()
        .unwrap_or_else(|| format!("exit code {}", outcome.exit_code.unwrap_or(-1)));
    set_condition(&mut status, "Finished", "True", phase, &message);
    apply_status(&runs, &name, &status).await?;

    let language = run.spec.language.as_str().to_string();
    // Observed once, at the end: a short run may finish before a pass ever sees it running.
    if let (Some(created), Some(started)) = (
        run.meta().creation_timestamp.as_ref(),
        status.started_at.as_ref(),
    ) {
        let queued = (started.0.as_second() - created.0.as_second()).max(0) as f64;
        ctx.metrics
            .queue_duration
            .get_or_create(&LanguageLabels {
                language: language.clone(),
            })
            .observe(queued);
    }
    ctx.metrics
        .runs
        .get_or_create(&RunLabels {
            language: language.clone(),
            phase: phase.into(),
        })
        .inc();
    let total = secs_since(run.meta().creation_timestamp.as_ref()) as f64;
    ctx.metrics
        .run_duration
        .get_or_create(&LanguageLabels { language })
        .observe(total);
    let kind = if outcome.phase == Phase::Completed {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let note = match &outcome.reason {
        Some(r) => format!("{phase}: {r}: {message}"),
        None => format!("{phase}: {message}; results stored"),
    };
    publish(ctx, run, kind, phase, "Finish", &note).await;
    info!(
        phase,
        reason = outcome.reason.as_deref().unwrap_or(""),
        "run finished"
    );

    cleanup_children(ctx, &ns, &name).await?;
    Ok(Action::requeue(Duration::from_secs(
        ttl_seconds(&ctx.cfg, run) + 1,
    )))
}

/// How long a finished run is kept: its own setting, else the operator's.
fn ttl_seconds(cfg: &Config, run: &CodeRun) -> u64 {
    run.spec
        .ttl_seconds_after_finished
        .unwrap_or(cfg.run_ttl_seconds)
}

fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

fn set_condition(
    status: &mut CodeRunStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
) {
    let message: String = message.chars().take(1000).collect();
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value || c.reason != reason || c.message != message {
            *c = Condition {
                type_: type_.into(),
                status: value.into(),
                reason: reason.into(),
                message,
                last_transition_time: now(),
                observed_generation: None,
            };
        }
        return;
    }
    status.conditions.push(Condition {
        type_: type_.into(),
        status: value.into(),
        reason: reason.into(),
        message,
        last_transition_time: now(),
        observed_generation: None,
    });
}

/// Writes the whole status under the operator's field manager (server-side apply).
async fn apply_status(
    runs: &Api<CodeRun>,
    name: &str,
    status: &CodeRunStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "codeinterp.dev/v1alpha1",
        "kind": "CodeRun",
        "status": status,
    });
    runs.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    run: &CodeRun,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &run.object_ref(&())).await {
        warn!(error = %e, "could not publish an event");
    }
}

async fn create_if_missing<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// The deny-all policy must select runner pods before any exists in the namespace. It is
/// checked before every pod (a namespace may have been recreated, or the policy deleted),
/// and applied when missing or changed.
async fn ensure_deny_all(ctx: &Context, ns: &str) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let want = pod_spec::deny_all_policy(ns);
    let have = api
        .get_opt(pod_spec::DENY_ALL_POLICY)
        .await
        .map_err(Error::Kube)?;
    if have.is_some_and(|p| p.spec == want.spec) {
        return Ok(());
    }
    api.patch(
        pod_spec::DENY_ALL_POLICY,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&want),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// The kubelet says "AppArmor enabled" in its Ready condition on nodes that can enforce it.
/// Read at most once a minute.
async fn nodes_report_apparmor(ctx: &Context) -> Result<bool, Error> {
    if let Some((at, enabled)) = *ctx.apparmor_nodes.lock().expect("lock")
        && at.elapsed() < APPARMOR_CHECK_TTL
    {
        return Ok(enabled);
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?;
    let enabled = !list.items.is_empty()
        && list.items.iter().all(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.message.as_deref())
                .is_some_and(|m| m.contains("AppArmor enabled"))
        });
    *ctx.apparmor_nodes.lock().expect("lock") = Some((std::time::Instant::now(), enabled));
    Ok(enabled)
}

async fn resolve_inputs(ctx: &Context, run: &CodeRun) -> Result<ResolvedInputs, String> {
    let tenant = results::tenant(run);
    let mut files = Vec::new();
    for f in &run.spec.files {
        let bytes = match (&f.content_base64, &f.file_id) {
            (Some(b64), _) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| {
                    format!("input file {:?}: contentBase64 is not valid base64", f.name)
                })?,
            (None, Some(id)) => ctx
                .store
                .get_file_bytes(&tenant, id)
                .await
                .map_err(|_| format!("input file {:?}: no file {id:?}", f.name))?
                .to_vec(),
            (None, None) => return Err(format!("input file {:?} has no content", f.name)),
        };
        files.push((f.name.clone(), bytes));
    }
    Ok(ResolvedInputs { files })
}

async fn cleanup_children(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    };
    for result in [
        pods.delete(name, &dp).await.map(|_| ()),
        secrets.delete(name, &dp).await.map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Ok(())
}

pub fn error_policy(run: Arc<CodeRun>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(run = %run.name_any(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            error: error.metric_label().into(),
        })
        .inc();
    Action::requeue(Duration::from_secs(2))
}
