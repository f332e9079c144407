//! The task that serves a container: its pod (made when missing, its files put back from
//! object storage when it is new), its line (attached and synced; a run the container was
//! in the middle of is read to its end first), then its work, one item at a time: file
//! operations in order, then runs in the order they were made. The task ends when the
//! container does; a line that breaks is opened again.
use std::sync::Arc;

use codeinterp_crds::{CodeContainer, CodeRun};
use codeinterp_store::FileSource;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio::time::{Duration, Instant};

use super::line::{Line, LineError};
use super::{files, run, status};
use crate::context::Context;
use crate::outcome::{self, PodProgress};
use crate::pod_spec;
use crate::status::MANAGER;
use crate::tasks::Kind;

/// How long to wait before opening a broken line again.
/// Pods the container may go through in a row, none of them running, before it fails.
const POD_ATTEMPTS: u32 = 3;
const RETRY: Duration = Duration::from_secs(2);

/// Starts a task serving the container, unless one serves it already.
pub fn start(ctx: &Arc<Context>, container: &CodeContainer) {
    let uid = container.uid().unwrap_or_default();
    if !ctx.index.begin_serving(&uid) {
        return;
    }
    let key = ObjectRef::from_obj(container);
    let guard = Serving {
        ctx: ctx.clone(),
        uid,
        key: key.clone(),
    };
    let ctx = ctx.clone();
    let name = format!("serving container {key}");
    ctx.tasks.clone().spawn(name, Kind::Work, async move {
        let _guard = guard;
        serve(&ctx, &key).await;
    });
}

/// However the task ends, the container is no longer served and its reconcile looks again.
struct Serving {
    ctx: Arc<Context>,
    uid: String,
    key: ObjectRef<CodeContainer>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.ctx.index.end_serving(&self.uid);
        self.ctx.wake_container(self.key.clone());
    }
}

async fn serve(ctx: &Context, key: &ObjectRef<CodeContainer>) {
    let mut failures = 0;
    loop {
        let Some(container) = live(ctx, key) else {
            return;
        };
        let pod = match pod(ctx, &container).await {
            Ok(pod) => {
                failures = 0;
                pod
            }
            // A pod that ended or was refused gets a successor, a few times in a row;
            // past that the container has failed.
            Err(why) if failures + 1 < POD_ATTEMPTS => {
                failures += 1;
                tracing::info!(container = %key, why, "the container's pod failed; another is made");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(why) => {
                status::failed(ctx, &container, "pod_failed", &why).await;
                return;
            }
        };
        match connect(ctx, &container, &pod).await {
            Ok(mut line) => {
                if work(ctx, key, &mut line).await.is_ok() {
                    return;
                }
            }
            Err(e) => tracing::debug!(container = %key, error = %e, "opening the container's line"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The container as the cache shows it, while it is to be served.
fn live(ctx: &Context, key: &ObjectRef<CodeContainer>) -> Option<Arc<CodeContainer>> {
    ctx.cluster.containers.get(key).filter(|c| {
        !c.is_ended() && c.spec.stop != Some(true) && c.metadata.deletion_timestamp.is_none()
    })
}

/// The container's pod, running: the one it has, or a new one (its files then put back).
async fn pod(ctx: &Context, container: &CodeContainer) -> Result<Arc<Pod>, String> {
    let uid = container.uid().unwrap_or_default();
    let ns = container.namespace().unwrap_or_default();
    let name = match ctx.index.container_pod(&uid) {
        Some(name) => name,
        None => match crate::pool::claim_for_container(ctx, container).await {
            Some(claimed) => {
                let name = claimed.name_any();
                ctx.index.container_pod_seen(&uid, &name, false);
                name
            }
            None => create(ctx, container).await?,
        },
    };
    let deadline = Instant::now() + Duration::from_secs(ctx.cfg().start_timeout_seconds);
    // The container's own (a pool pod it claimed shows the claim once the cache has it),
    // and started or ended.
    let settled = |p: Option<&Pod>| {
        p.is_some_and(|p| {
            pod_spec::owned_by_kind(p, "CodeContainer", &uid)
                && !matches!(outcome::progress(p, 0, u64::MAX), PodProgress::Waiting)
        })
    };
    let pod = ctx
        .cluster
        .wait_for_pod(&ns, &name, deadline, settled)
        .await;
    let Some(pod) = pod.filter(|p| pod_spec::owned_by_kind(p, "CodeContainer", &uid)) else {
        return Err("the container's pod did not start in time".into());
    };
    let applied = ctx.isolation()?;
    let differs =
        pod_spec::container_pod_differences(&pod, container, &ctx.pools(), ctx.cfg(), &applied);
    if !differs.is_empty() {
        // Never this container's work for a pod this operator would not have made.
        ctx.tidy.remove(&ctx.index, &pod);
        ctx.index.container_pod_seen(&uid, &name, true);
        return Err(format!(
            "the container's pod is not what this operator would make: {}",
            differs.join(", ")
        ));
    }
    match outcome::progress(&pod, 0, u64::MAX) {
        PodProgress::Running { .. } if pod.metadata.deletion_timestamp.is_none() => Ok(pod),
        PodProgress::Stuck { message, .. } => Err(message),
        _ => {
            // Its interpreters are gone: the next pod gets the files put back.
            ctx.tidy.remove(&ctx.index, &pod);
            ctx.index.container_pod_seen(&uid, &name, true);
            Err("the container's pod ended; a new one is made".into())
        }
    }
}

/// Creates the container's pod; returns its (generated) name.
async fn create(ctx: &Context, container: &CodeContainer) -> Result<String, String> {
    let ns = container.namespace().unwrap_or_default();
    ctx.ensure_deny_all(&ns).await.map_err(|e| e.to_string())?;
    let applied = ctx.isolation()?;
    let pod = pod_spec::container_pod(container, ctx.cfg(), &applied);
    let api: Api<Pod> = Api::namespaced(ctx.api.run.clone(), &ns);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let created = api
        .create(&params, &pod)
        .await
        .map_err(|e| format!("the cluster refused the container's pod: {e}"))?;
    let name = created.name_any();
    ctx.index
        .container_pod_seen(&container.uid().unwrap_or_default(), &name, false);
    Ok(name)
}

/// Attaches to the pod, syncs the line, finishes the run the container was in the middle
/// of, and puts its files back if the pod is new to the container.
async fn connect(ctx: &Context, container: &CodeContainer, pod: &Pod) -> Result<Line, LineError> {
    let ns = pod.namespace().unwrap_or_default();
    let session = ctx
        .streams
        .attach(&ns, &pod.name_any())
        .await
        .map_err(|e| LineError::Write(std::io::Error::other(e)))?;
    let (mut line, busy) = Line::open(session, pod.name_any()).await?;
    let fresh_pod = container
        .status
        .as_ref()
        .and_then(|s| s.pod_name.as_deref())
        != Some(pod.name_any().as_str())
        || container.status.as_ref().is_some_and(|s| s.runs == 0);
    if let Some(busy) = busy
        && let Some(run) = run_by_uid(ctx, container, &busy)
    {
        run::read(ctx, container, &mut line, &run).await?;
    }
    if fresh_pod {
        restore(ctx, container, &mut line).await?;
    }
    status::running(ctx, container, &pod.name_any()).await;
    Ok(line)
}

/// Puts every file the container's folder has in storage into a pod new to it.
async fn restore(
    ctx: &Context,
    container: &CodeContainer,
    line: &mut Line,
) -> Result<(), LineError> {
    let tenant = container.tenant_in(ctx.settings.sandbox_namespace());
    let files = ctx
        .store
        .list_container_files(&tenant, &container.name_any())
        .await
        .unwrap_or_default();
    for (i, file) in files.iter().enumerate() {
        let op = codeinterp_crds::FileOp {
            seq: 0,
            kind: codeinterp_crds::FileOpKind::Put,
            path: file.path.clone(),
            file_id: Some(file.id.clone()),
        };
        let id = format!("restore-{i}");
        if let Err(e) = files::put_now(ctx, container, line, &op, &id).await? {
            tracing::warn!(file = %file.path, error = %e, source = ?file.source == FileSource::User, "putting a container's file back");
        }
    }
    Ok(())
}

/// Does the container's work until it ends (`Ok`) or its line breaks (`Err`).
async fn work(
    ctx: &Context,
    key: &ObjectRef<CodeContainer>,
    line: &mut Line,
) -> Result<(), LineError> {
    let Some(first) = live(ctx, key) else {
        return Ok(());
    };
    let wake = ctx.index.container_wake(&first.uid().unwrap_or_default());
    loop {
        let Some(container) = live(ctx, key) else {
            return Ok(());
        };
        if let Some(op) = files::next(&container) {
            files::apply(ctx, &container, line, op).await?;
            // The status write reaches the cache before the next look.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if let Some(next) = next_run(ctx, &container) {
            if next.cancel_requested() {
                let outcome = crate::outcome::Outcome::ended(
                    codeinterp_crds::Reason::Cancelled,
                    "cancelled before it started",
                );
                let _ = crate::steps::finish::end(ctx, &next, None, outcome).await;
                continue;
            }
            run::run(ctx, &container, line, &next).await?;
            status::ran(ctx, &container).await;
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// The container's runs not ended yet, oldest first: the next to run.
fn next_run(ctx: &Context, container: &CodeContainer) -> Option<CodeRun> {
    waiting_runs(ctx, container).first().map(|r| (**r).clone())
}

/// The runs that name the container (of its tenant) and have not ended, oldest first.
pub fn waiting_runs(ctx: &Context, container: &CodeContainer) -> Vec<Arc<CodeRun>> {
    let ns = container.namespace();
    let name = container.name_any();
    let tenant = container.tenant_in(ctx.settings.sandbox_namespace());
    let mut waiting: Vec<Arc<CodeRun>> = ctx
        .cluster
        .runs
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace() == ns
                && r.spec.container.as_deref() == Some(name.as_str())
                && !r.is_finished()
                && ctx.index.known(&r.uid().unwrap_or_default()) != crate::index::Known::Ended
                && ctx.tenant(r) == tenant
        })
        .collect();
    waiting.sort_by_key(|r| {
        (
            r.creation_timestamp().map(|t| t.0.as_second()),
            r.resource_version().and_then(|v| v.parse::<u64>().ok()),
        )
    });
    waiting
}

fn run_by_uid(ctx: &Context, container: &CodeContainer, uid: &str) -> Option<CodeRun> {
    ctx.cluster
        .runs
        .state()
        .into_iter()
        .find(|r| r.uid().as_deref() == Some(uid) && r.namespace() == container.namespace())
        .map(|r| (*r).clone())
}

/// An interrupt for a run in the container (its task passes it on while the run goes).
pub fn interrupt(ctx: &Context, container: &CodeContainer, run: &CodeRun) {
    ctx.index.interrupt(
        &container.uid().unwrap_or_default(),
        &run.uid().unwrap_or_default(),
    );
}
