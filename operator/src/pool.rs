//! Warm pools (`RunnerPool`s): pods started ahead of time, each with its interpreter waiting
//! (its modules imported) for one job on stdin. A run whose limits match a pool's shape
//! claims an idle pod (an optimistic write guarded by the pod's resourceVersion: of two
//! claims one wins, the other tries another pod or goes cold), becomes its owner, gets its
//! job over the attach session this process holds open to the pod, and the pod is deleted
//! when the run ends: never reused. The pools are tended as the cluster's pods change: each
//! kept at its target size (from the arrival rate of its runs and the time its pods take to
//! be ready, within its minimum and maximum), idle pods past their age replaced, refills made
//! only with room no waiting run needs.
//!
//! Runner containers have `stdinOnce`: when a session closes, the pod's stdin closes for
//! good, its wrapper sees no job and exits. So a session is never dropped while its pod
//! could still be claimed, and pods another process (an earlier leader) held are replaced.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use codeinterp_crds::{
    Applied, CodeContainer, CodeRun, EffectiveLimits, HELD_LABEL, POOL_LABEL, RUN_UID_LABEL,
    RunnerPool, RunnerPoolStatus,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokio::time::Duration;

use crate::config::PoolSpec;
use crate::context::Context;
use crate::kube_io::delete_by_uid;
use crate::metrics::PoolLabels;
use crate::pod_spec;
use crate::status::MANAGER;
use crate::streams::Attached;

fn is_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn is_gone_or_going(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The pool's idle pods that ended without a job (their stdin closed with an earlier
/// leader's session, or their interpreter died): nothing will use them.
/// The pods carrying the pool's label, wherever they are (from the ledger's index of them:
/// never a pass over every pod of the cluster).
fn labelled(ctx: &Context, pool: &PoolSpec) -> Vec<Arc<Pod>> {
    let at = ctx.cluster.ledger().pool_pods(&pool.name());
    at.into_iter()
        .filter_map(|(ns, name)| {
            ctx.cluster
                .pods
                .get(&kube::runtime::reflector::ObjectRef::new(&name).within(&ns))
        })
        .collect()
}

fn ended_pool_pods(ctx: &Context, pool: &PoolSpec) -> Vec<Arc<Pod>> {
    labelled(ctx, pool)
        .into_iter()
        .filter(|p| {
            pod_spec::owned_by_pool(p, pool)
                && p.metadata.deletion_timestamp.is_none()
                && is_gone_or_going(p)
        })
        .collect()
}

/// The unclaimed, live pods carrying the pool's label in the pools' namespace.
fn pool_pods(ctx: &Context, pool: &PoolSpec) -> Vec<Arc<Pod>> {
    let name = pool.name();
    let ns = ctx.settings.sandbox_namespace();
    labelled(ctx, pool)
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(POOL_LABEL) == Some(&name)
                && !p.labels().contains_key(RUN_UID_LABEL)
                && pod_spec::owned_by_pool(p, pool)
                && !is_gone_or_going(p)
                // Claimed by a container, the claim not yet in the cache.
                && !(pool.container && ctx.index.is_a_containers_pod(&p.name_any()))
        })
        .collect()
}

/// Idle pods a run may claim now: running (the wrapper waits on stdin) with a session of this
/// process open to them (so not being claimed), exactly what this operator would create.
fn claimable(ctx: &Context, pool: &PoolSpec, applied: &Applied) -> Vec<Arc<Pod>> {
    // A container pool's pods need no session held open: their stdin stays open.
    let mut pods: Vec<_> = pool_pods(ctx, pool)
        .into_iter()
        .filter(|p| {
            is_running(p)
                && (pool.container || ctx.index.slot_is_open(&p.uid().unwrap_or_default()))
        })
        .filter(|p| pod_spec::is_trusted_pool_pod(p, pool, ctx.cfg(), applied))
        .collect();
    // The oldest first: they are the next to age out anyway.
    pods.sort_by_key(|p| p.creation_timestamp().map(|t| t.0));
    pods
}

/// Free warm pods by pool name, for admission.
pub fn free_counts(ctx: &Context) -> HashMap<String, usize> {
    let Ok(applied) = ctx.isolation() else {
        return HashMap::new();
    };
    ctx.pools()
        .iter()
        .filter(|p| !p.container)
        .map(|p| (p.name(), claimable(ctx, p, &applied).len()))
        .collect()
}

/// Claims an idle pod of a container pool of the container's memory limit: the container
/// becomes its controller. `None` when no pool has one free (the container gets a pod of
/// its own); the pool's demand counts the claim either way.
pub async fn claim_for_container(ctx: &Context, container: &CodeContainer) -> Option<Pod> {
    let applied = ctx.isolation().ok()?;
    let pool = pool_for_container(ctx.pools(), container, ctx.settings.sandbox_namespace())?;
    let api = ctx.pods_api(ctx.settings.sandbox_namespace());
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    for candidate in claimable(ctx, &pool, &applied).into_iter().take(3) {
        let patch = pod_spec::container_claim_patch(container, &candidate);
        match api
            .patch(&candidate.name_any(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                ctx.index.pool_arrival(&pool.name, true);
                return Some(pod);
            }
            Err(e) => {
                tracing::debug!(pod = %candidate.name_any(), error = %e, "a container's claim failed; trying another pod")
            }
        }
    }
    ctx.index.pool_arrival(&pool.name, false);
    None
}

/// The container pool whose pods the container may claim: one of its memory limit, in its
/// namespace. Pools live in the sandbox namespace, and a pod can neither change namespace
/// nor be owned from another (the garbage collector deletes it): a container elsewhere
/// always gets a pod of its own.
fn pool_for_container(
    pools: Vec<PoolSpec>,
    container: &CodeContainer,
    sandbox: &str,
) -> Option<PoolSpec> {
    if container.namespace().as_deref() != Some(sandbox) {
        return None;
    }
    let mb = container.spec.memory_limit.mb();
    pools
        .into_iter()
        .find(|p| p.container && p.memory_mb == mb && p.max > 0)
}

/// Claims an idle pod of the pool for the run, with the session held open to it; `None` when
/// none could be had.
pub async fn claim(
    ctx: &Context,
    run: &CodeRun,
    limits: &EffectiveLimits,
    pool: &PoolSpec,
    applied: &Applied,
) -> Option<(Pod, Attached)> {
    let api = ctx.pods_api(ctx.settings.sandbox_namespace());
    for candidate in claimable(ctx, pool, applied).into_iter().take(3) {
        let uid = candidate.uid().unwrap_or_default();
        // Taken first: no other claim gets the pod, and the pool's tending cannot close the
        // session while the claim is in flight.
        let Some(session) = ctx.index.take_slot(&uid) else {
            continue;
        };
        match try_claim(&api, run, &candidate, limits, ctx.cfg()).await {
            Ok(pod) => return Some((pod, session)),
            Err(e) => {
                tracing::debug!(pod = %candidate.name_any(), error = %e, "a claim failed; trying another pod");
                ctx.index.put_back_slot(&uid, session);
            }
        }
    }
    None
}

/// The claim itself: a merge patch guarded by the pod's resourceVersion that makes the run
/// the pod's controller, labels it with the run's UID and sets the deadline backstop. Of two
/// claims of one pod, one wins; the other gets a conflict.
pub async fn try_claim(
    api: &Api<Pod>,
    run: &CodeRun,
    pod: &Pod,
    limits: &EffectiveLimits,
    cfg: &crate::config::Config,
) -> Result<Pod, kube::Error> {
    let idle = pod_spec::seconds_since_start(pod, k8s_openapi::jiff::Timestamp::now().as_second());
    let patch = pod_spec::claim_patch(run, pod, limits, cfg, idle);
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api.patch(&pod.name_any(), &params, &Patch::Merge(&patch))
        .await
}

/// Tends the pools whenever the cluster's pods change (and every few seconds).
pub async fn run(ctx: Arc<Context>, changes: impl Stream<Item = ()> + Send + 'static) {
    let mut changes = std::pin::pin!(changes);
    loop {
        ctx.churn.quiet().await;
        tend(&ctx).await;
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Gather a burst of changes into one pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One pass over every pool: replace what is stale, hold sessions to the idle, fill what is
/// short.
async fn tend(ctx: &Context) {
    let Ok(applied) = ctx.isolation() else {
        return;
    };
    let ns = ctx.settings.sandbox_namespace().to_string();
    if let Err(e) = ctx.ensure_deny_all(&ns).await {
        tracing::warn!(error = %e, "the deny-all policy of the pools' namespace");
        return;
    }
    let mut idle = HashSet::new();
    for pool in &ctx.pools() {
        let live = keep_fresh(ctx, pool, &applied).await;
        if !pool.container {
            idle.extend(hold_sessions(ctx, pool, &live).await);
        }
        resize(ctx, pool, live, &applied).await;
    }
    // Sessions of pods that left the pools (claimed ones were taken) are closed.
    ctx.index.retain_slots(&idle);
}

/// The pool's pods that may stay; the others (old, not what this operator would make, held
/// by another process) are deleted.
async fn keep_fresh(ctx: &Context, pool: &PoolSpec, applied: &Applied) -> Vec<Arc<Pod>> {
    let max_age = ctx.cfg().pool_max_idle_seconds as i64;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let me = crate::identity_label(&ctx.settings.identity);
    let mut live = Vec::new();
    for pod in pool_pods(ctx, pool) {
        let young = pod
            .creation_timestamp()
            .is_none_or(|t| now - t.0.as_second() < max_age);
        // Held by another process: its stdin closes with that process's session.
        let foreign = pod.labels().get(HELD_LABEL).is_some_and(|by| *by != me);
        let differs = pod_spec::pool_pod_differences(&pod, pool, ctx.cfg(), applied);
        match (young, foreign, differs.is_empty()) {
            (true, false, true) => live.push(pod),
            (_, _, false) => {
                let why = format!(
                    "not what this operator would create: {}",
                    differs.join(", ")
                );
                remove(ctx, &pod, &why).await;
            }
            _ => remove(ctx, &pod, "old, or held by another process").await,
        }
    }
    for pod in ended_pool_pods(ctx, pool) {
        remove(ctx, &pod, "it ended without a job").await;
    }
    live
}

/// Opens a session to each running idle pod that has none, and marks the pod as held by
/// this process; how long each took to be ready is noted for the pool's sizing. Returns the
/// UIDs of the running idle pods.
async fn hold_sessions(ctx: &Context, pool: &PoolSpec, live: &[Arc<Pod>]) -> Vec<String> {
    let ready: Vec<(String, String)> = live
        .iter()
        .filter(|p| is_running(p))
        .filter_map(|p| Some((p.uid()?, p.name_any())))
        .collect();
    let made: HashMap<String, i64> = live
        .iter()
        .filter_map(|p| Some((p.uid()?, p.creation_timestamp()?.0.as_second())))
        .collect();
    let opens = ctx
        .index
        .slots_to_open(&ready)
        .into_iter()
        .map(|(uid, name)| {
            let made = made.get(&uid).copied();
            async move {
                let session = open_session(ctx, &uid, &name).await;
                match (&session, made) {
                    (Err(e), _) => {
                        tracing::debug!(pod = %name, error = %e, "holding an attach session")
                    }
                    (Ok(_), Some(made)) => {
                        let now = k8s_openapi::jiff::Timestamp::now().as_second();
                        ctx.index.pool_ready(&pool.name, (now - made).max(0) as f64);
                    }
                    (Ok(_), None) => {}
                }
                ctx.index.slot_opened(&uid, session.ok());
            }
        });
    futures::future::join_all(opens).await;
    ready.into_iter().map(|(uid, _)| uid).collect()
}

async fn open_session(ctx: &Context, uid: &str, name: &str) -> Result<Attached, kube::Error> {
    let ns = ctx.settings.sandbox_namespace();
    let session = ctx.streams.attach(ns, name).await?;
    // Guarded by the UID: never a pod of the same name made since.
    let patch = serde_json::json!({
        "metadata": {"uid": uid, "labels": {HELD_LABEL: crate::identity_label(&ctx.settings.identity)}}
    });
    let pods: Api<Pod> = Api::namespaced(ctx.api.pool.clone(), ns);
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(session)
}

/// How many idle pods a pool needs: enough that a steady stream of runs at `rate_per_sec`
/// never finds it empty while claimed pods are replaced (`ready_secs` each, with a margin),
/// within its minimum and maximum.
pub fn target(pool: &PoolSpec, rate_per_sec: f64, ready_secs: f64) -> usize {
    let needed = if rate_per_sec > 0.0 {
        (rate_per_sec * ready_secs * 1.5).ceil() as usize + 1
    } else {
        0
    };
    needed.clamp(pool.min, pool.max.max(pool.min))
}

/// Idle pods above the target go only after it has stayed below for this long, so a pause
/// in a stream does not throw away the pods its next runs need.
pub const SCALE_DOWN_AFTER: Duration = Duration::from_secs(60);
/// A pool's pods are assumed to take this long to be ready until one was measured.
const READY_SECS_GUESS: f64 = 2.0;

/// Keeps the pool at its target: extra pods go (the newest first) once the target has been
/// below for a while; missing ones are made while there is room no waiting run needs.
async fn resize(ctx: &Context, pool: &PoolSpec, mut live: Vec<Arc<Pod>>, applied: &Applied) {
    let name = pool.name();
    let seen: HashSet<String> = live.iter().map(|p| p.name_any()).collect();
    let count = live.len() + ctx.index.pool_pending(&name, &seen);
    let demand = ctx.index.pool_demand(&name);
    let want = target(
        pool,
        demand.rate_per_sec,
        demand.ready_secs.unwrap_or(READY_SECS_GUESS),
    );
    let held = live
        .iter()
        .filter(|p| ctx.index.slot_is_open(&p.uid().unwrap_or_default()))
        .count();
    let labels = PoolLabels { pool: name.clone() };
    ctx.metrics
        .pool
        .idle
        .get_or_create(&labels)
        .set(held as i64);
    ctx.metrics
        .pool
        .target
        .get_or_create(&labels)
        .set(want as i64);
    report(ctx, pool, held, want).await;
    let above = ctx.index.pool_above_target(&name, count > want);
    if above.is_some_and(|since| since.elapsed() >= SCALE_DOWN_AFTER) {
        live.sort_by_key(|p| std::cmp::Reverse(p.creation_timestamp().map(|t| t.0)));
        for pod in live.iter().take(count - want) {
            remove(ctx, pod, "more than the pool needs").await;
        }
    } else if count < want && ctx.index.waiting() == 0 {
        refill(ctx, pool, want - count, applied).await;
    }
}

/// Writes the pool's status when it changed (its idle pods, target, hits and misses, the
/// rate and ready time it is sized from, and the selector the scale subresource reports).
async fn report(ctx: &Context, pool: &PoolSpec, idle: usize, target: usize) {
    let demand = ctx.index.pool_demand(&pool.name);
    let status = RunnerPoolStatus {
        replicas: idle as u32,
        target: target as u32,
        hits: demand.hits,
        misses: demand.misses,
        arrivals_per_minute: (demand.rate_per_sec * 600.0).round() / 10.0,
        ready_seconds: (demand.ready_secs.unwrap_or(0.0) * 10.0).round() / 10.0,
        selector: format!("{POOL_LABEL}={}", pool.name),
    };
    let ns = ctx.settings.sandbox_namespace();
    let key = kube::runtime::reflector::ObjectRef::new(&pool.name).within(ns);
    let shown = ctx.cluster.pools.get(&key).and_then(|p| p.status.clone());
    if shown.as_ref() == Some(&status) {
        return;
    }
    let api: Api<RunnerPool> = Api::namespaced(ctx.api.pool.clone(), ns);
    let patch = serde_json::json!({ "status": status });
    if let Err(e) = api
        .patch_status(&pool.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(pool = %pool.name, error = %e, "writing a pool's status");
    }
}

async fn refill(ctx: &Context, pool: &PoolSpec, missing: usize, applied: &Applied) {
    let ns = ctx.settings.sandbox_namespace();
    let mut room = ctx.room();
    let demand = crate::admission::pod_demand(&pod_spec::pool_pod(pool, ns, ctx.cfg(), applied));
    let api: Api<Pod> = Api::namespaced(ctx.api.pool.clone(), ns);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    for _ in 0..missing {
        if !room.take(demand) {
            break;
        }
        let pod = pod_spec::pool_pod(pool, ns, ctx.cfg(), applied);
        match api.create(&params, &pod).await {
            Ok(p) => {
                ctx.metrics
                    .pool
                    .created
                    .get_or_create(&PoolLabels { pool: pool.name() })
                    .inc();
                ctx.index.pool_created(&pool.name(), &p.name_any());
            }
            Err(e) => {
                tracing::warn!(pool = %pool.name(), error = %e, "creating a pool pod");
                break;
            }
        }
    }
}

async fn remove(ctx: &Context, pod: &Pod, why: &str) {
    let api: Api<Pod> = Api::namespaced(ctx.api.pool.clone(), &pod.namespace().unwrap_or_default());
    match delete_by_uid(&api, &pod.name_any(), pod.uid(), Some(0)).await {
        Ok(()) => tracing::info!(pod = %pod.name_any(), why, "deleted a pool pod"),
        Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "deleting a pool pod"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::Language;

    fn pool(min: usize, max: usize) -> PoolSpec {
        PoolSpec {
            name: "python".into(),
            uid: "pool-uid".into(),
            language: Language::Python,
            min,
            max,
            memory_mb: 512,
            cpu_millicores: 1000,
            disk_mb: 64,
            kernel: true,
            preload: vec![],
            preload_memory_mb: 160,
            container: false,
        }
    }

    #[test]
    fn only_a_container_in_the_pools_namespace_claims_from_a_pool_of_its_memory_limit() {
        let boxes = PoolSpec {
            name: "containers".into(),
            memory_mb: 1024,
            container: true,
            ..pool(1, 4)
        };
        let pools = vec![pool(2, 8), boxes];
        let container = |ns: &str, memory: &str| -> CodeContainer {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
                "metadata": {"name": "box", "namespace": ns, "uid": "box-uid"},
                "spec": {"memoryLimit": memory},
            }))
            .unwrap()
        };
        let found = pool_for_container(pools.clone(), &container("sandbox", "1g"), "sandbox");
        assert_eq!(found.map(|p| p.name), Some("containers".to_string()));
        // Another namespace: the pod would be deleted by the garbage collector once owned.
        assert!(pool_for_container(pools.clone(), &container("team-a", "1g"), "sandbox").is_none());
        // No pool of its size; a run pool is never one.
        assert!(
            pool_for_container(pools.clone(), &container("sandbox", "4g"), "sandbox").is_none()
        );
        let runs_only = vec![pool(2, 8)];
        assert!(pool_for_container(runs_only, &container("sandbox", "1g"), "sandbox").is_none());
    }

    #[test]
    fn a_pool_holds_what_a_stream_claims_while_its_pods_are_replaced() {
        // 3 runs a second, pods ready in 2 s: 6 claimed per refill, half again as margin.
        assert_eq!(target(&pool(2, 16), 3.0, 2.0), 10);
        // Within its bounds.
        assert_eq!(target(&pool(2, 8), 3.0, 2.0), 8);
        assert_eq!(target(&pool(2, 8), 0.0, 2.0), 2);
        assert_eq!(target(&pool(0, 8), 0.1, 1.0), 2);
        // A minimum above the maximum (a scale past it) keeps the minimum.
        assert_eq!(target(&pool(5, 3), 0.0, 1.0), 5);
    }
}
