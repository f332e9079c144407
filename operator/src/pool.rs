//! Warm pools: pods started ahead of time, each waiting on stdin for one job. A run whose
//! limits match a pool's shape claims an idle pod (an optimistic write guarded by the pod's
//! resourceVersion: of two claims one wins, the other tries another pod or goes cold),
//! becomes its owner, gets its job over attach, and the pod is deleted when the run ends:
//! never reused. The manager keeps each pool at its size, replaces idle pods past their age,
//! and refills only with room no waiting run needs.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use codeinterp_crds::{Applied, CodeRun, EffectiveLimits, POOL_LABEL, RUN_UID_LABEL};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{AttachedProcess, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use crate::admission::Demand;
use crate::config::PoolSpec;
use crate::context::Context;
use crate::metrics::PoolLabels;
use crate::pod_spec::{self, Shape};
use crate::status::MANAGER;

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

/// The unclaimed, live pods carrying the pool's label in the pools' namespace.
fn pool_pods(ctx: &Context, pool: &PoolSpec) -> Vec<Arc<Pod>> {
    let name = pool.name();
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ctx.cfg.sandbox_namespace.as_str())
                && p.labels().get(POOL_LABEL) == Some(&name)
                && !p.labels().contains_key(RUN_UID_LABEL)
                && p.owner_references().is_empty()
                && !is_gone_or_going(p)
        })
        .collect()
}

/// Idle pods a run may claim now: running (the wrapper waits on stdin) with a session of this
/// process open to them (so not being claimed), exactly what this operator would create.
fn claimable(ctx: &Context, pool: &PoolSpec, applied: &Applied) -> Vec<Arc<Pod>> {
    let mut pods: Vec<_> = pool_pods(ctx, pool)
        .into_iter()
        .filter(|p| is_running(p) && ctx.held.is_open(&p.uid().unwrap_or_default()))
        .filter(|p| pod_spec::is_trusted_pool_pod(p, pool, &ctx.cfg, applied))
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
    ctx.pools
        .iter()
        .map(|p| (p.name(), claimable(ctx, p, &applied).len()))
        .collect()
}

/// Claims an idle pod of the pool for the run, with the session held open to it; `None` when
/// none could be had.
pub async fn claim(
    ctx: &Context,
    run: &CodeRun,
    limits: &EffectiveLimits,
    pool: &PoolSpec,
    applied: &Applied,
) -> Option<(Pod, AttachedProcess)> {
    let api = ctx.pods_api(&ctx.cfg.sandbox_namespace);
    for candidate in claimable(ctx, pool, applied).into_iter().take(3) {
        let name = candidate.name_any();
        let uid = candidate.uid().unwrap_or_default();
        // Taken first: no other claim gets the pod, and the pool's tending cannot close the
        // session while the claim is in flight.
        let Some(session) = ctx.held.take(&uid) else {
            continue;
        };
        let idle = pod_spec::seconds_since_start(
            &candidate,
            k8s_openapi::jiff::Timestamp::now().as_second(),
        );
        let patch = pod_spec::claim_patch(run, &candidate, limits, &ctx.cfg, idle);
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(pod) => return Some((pod, session)),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(pod = %name, "lost a claim race; trying another pod");
                ctx.held.put_back(&uid, session);
            }
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "claiming a pool pod");
                ctx.held.put_back(&uid, session);
            }
        }
    }
    None
}

async fn delete(ctx: &Context, pod: &Pod, why: &str) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    let ns = pod.namespace().unwrap_or_default();
    match ctx.pool_pods(&ns).delete(&pod.name_any(), &dp).await {
        Ok(_) => tracing::info!(pod = %pod.name_any(), why, "deleted a pool pod"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "deleting a pool pod"),
    }
}

/// One pass over every pool: replace what is stale, fill what is short.
async fn tend(ctx: &Context, created: &mut HashMap<String, Vec<String>>) {
    let Ok(applied) = ctx.isolation() else {
        return;
    };
    let ns = ctx.cfg.sandbox_namespace.clone();
    if let Err(e) = ctx.ensure_deny_all(&ns).await {
        tracing::warn!(error = %e, "the deny-all policy of the pools' namespace");
        return;
    }
    let max_age = ctx.cfg.pool_max_idle_seconds as i64;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let me = crate::held::label_value(&ctx.identity);
    let mut idle = HashSet::new();
    for pool in &ctx.pools {
        let name = pool.name();
        let pods = pool_pods(ctx, pool);
        let (mut live, stale): (Vec<_>, Vec<_>) = pods.into_iter().partition(|p| {
            let young = p
                .creation_timestamp()
                .is_none_or(|t| now - t.0.as_second() < max_age);
            // Held by another process (an earlier leader): its stdin closes with that
            // process's session, so it cannot be handed a job.
            let foreign = p
                .labels()
                .get(codeinterp_crds::HELD_LABEL)
                .is_some_and(|by| *by != me);
            young && !foreign && pod_spec::is_trusted_pool_pod(p, pool, &ctx.cfg, &applied)
        });
        for pod in &stale {
            delete(ctx, pod, "stale, old, or held by another process").await;
        }
        let ready: Vec<(String, String)> = live
            .iter()
            .filter(|p| is_running(p))
            .filter_map(|p| Some((p.uid()?, p.name_any())))
            .collect();
        idle.extend(ready.iter().map(|(uid, _)| uid.clone()));
        ctx.held.open(
            &ctx.pods_api(&ns),
            &ctx.pool_pods(&ns),
            &ctx.identity,
            crate::session::STREAM_BUFFER,
            ready,
        );
        // Pods created a moment ago may not be in the cache yet.
        let seen: HashSet<String> = live.iter().map(|p| p.name_any()).collect();
        let mine = created.entry(name.clone()).or_default();
        mine.retain(|n| !seen.contains(n));
        let count = live.len() + mine.len();
        let held = live
            .iter()
            .filter(|p| ctx.held.is_open(&p.uid().unwrap_or_default()))
            .count();
        ctx.metrics
            .pool_idle
            .get_or_create(&PoolLabels { pool: name.clone() })
            .set(held as i64);
        if count > pool.size {
            live.sort_by_key(|p| std::cmp::Reverse(p.creation_timestamp().map(|t| t.0)));
            for pod in live.iter().take(count - pool.size) {
                delete(ctx, pod, "more than the pool's size").await;
            }
            continue;
        }
        if count == pool.size {
            continue;
        }
        // Runs waiting for room come first: a pool refills only with room left over.
        let mut room = {
            let mut queue = ctx.queue.lock().expect("lock");
            if queue.waiting() > 0 {
                continue;
            }
            ctx.room(&mut queue)
        };
        let shape = Shape::of_pool(pool);
        let demand = Demand {
            cpu_millicores: shape.cpu_request_millicores(),
            memory_bytes: shape.memory_bytes(),
        };
        let api = ctx.pool_pods(&ns);
        for _ in count..pool.size {
            if !room.take(demand) {
                break;
            }
            let pod = pod_spec::pool_pod(pool, &ns, &ctx.cfg, &applied);
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            match api.create(&params, &pod).await {
                Ok(p) => {
                    ctx.metrics
                        .pool_created
                        .get_or_create(&PoolLabels { pool: name.clone() })
                        .inc();
                    created.entry(name.clone()).or_default().push(p.name_any());
                }
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "creating a pool pod");
                    break;
                }
            }
        }
    }
    // Sessions of pods that left the pools (claimed ones were taken) are closed.
    ctx.held.retain(&idle);
}

/// Tends the pools whenever the cluster's pods change (and every few seconds).
pub async fn run(ctx: Arc<Context>, changes: impl Stream<Item = ()> + Send + 'static) {
    if ctx.pools.is_empty() {
        return;
    }
    let mut changes = std::pin::pin!(changes);
    let mut created: HashMap<String, Vec<String>> = HashMap::new();
    let mut rounds = 0u32;
    loop {
        ctx.starts.pause().await;
        tend(&ctx, &mut created).await;
        rounds = rounds.wrapping_add(1);
        // Pods created a while ago and still not seen are forgotten.
        if rounds.is_multiple_of(20) {
            created.clear();
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Gather a burst of changes into one pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the pod was a pool pod (claimed or not): how a run that claimed it started.
pub fn is_pool_pod_name(pod: &Pod) -> bool {
    pod.labels().contains_key(POOL_LABEL)
}
