//! Start-up: settings checked, the metrics endpoint, leader election, the cluster's pods and
//! nodes watched, then the controller, the admission pump, the warm pools and the refresher
//! of places in line, until the lease is lost or a signal stops it.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use codeinterp_crds::{CodeRun, RUNNER_LABEL, SHARD_LABEL};
use codeinterp_store::Store;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::admission::{Caps, Queue};
use crate::config::Config;
use crate::context::{self, Context, Recent};
use crate::metrics::Metrics;
use crate::status::MANAGER;
use crate::{leader, pool, reconcile};

/// What the operator keeps of a pod: all of a runner pod (its spec is checked before a pool
/// pod is trusted), only placement and requests of any other.
fn slim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.annotations_mut().clear();
    if pod.labels().contains_key(RUNNER_LABEL) {
        return;
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.init_containers = None;
        spec.tolerations = None;
        spec.affinity = None;
        for c in &mut spec.containers {
            let resources = c.resources.take();
            *c = k8s_openapi::api::core::v1::Container {
                name: std::mem::take(&mut c.name),
                resources,
                ..Default::default()
            };
        }
    }
    if let Some(status) = pod.status.as_mut() {
        let phase = status.phase.take();
        *status = k8s_openapi::api::core::v1::PodStatus {
            phase,
            ..Default::default()
        };
    }
}

fn slim_node(node: &mut Node) {
    node.managed_fields_mut().clear();
    node.annotations_mut().clear();
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

/// A stream that yields whenever `notify` is notified.
fn notifications(notify: Arc<Notify>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(notify, |n| async move {
        n.notified().await;
        Some(((), n))
    })
}

/// A client whose every write is counted under `purpose` (and its verb and resource), so the
/// API cost of a run can be measured, and told apart from clean-up, pool and event writes.
fn counted_client(
    config: &kube::Config,
    metrics: &Metrics,
    purpose: &'static str,
) -> anyhow::Result<Client> {
    let counted = metrics.clone();
    let counting =
        tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            counted.count_request(purpose, req.method(), req.uri().path());
            req
        });
    Ok(kube::client::ClientBuilder::try_from(config.clone())
        .context("connecting to the Kubernetes API")?
        .with_layer(&counting)
        .build())
}

/// The whole cluster's pods and nodes, cached: room for admission, the runs' pods, the pools.
struct Cluster {
    pods: reflector::Store<Pod>,
    nodes: reflector::Store<Node>,
    /// Notified on every change (the queue's pump waits on it) ...
    changed: Arc<Notify>,
    /// ... and this one too (the pools' tending waits on it).
    pool_changed: Arc<Notify>,
    /// Wakes a run's reconcile; `woken` is what the controller reads.
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<CodeRun>>,
    woken: futures::channel::mpsc::UnboundedReceiver<ObjectRef<CodeRun>>,
}

fn watch_cluster(client: &Client) -> Cluster {
    let changed = Arc::new(Notify::new());
    let pool_changed = Arc::new(Notify::new());
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(slim_pod)
        .reflect(pods_writer);
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(slim_node)
        .reflect(nodes_writer);
    // Runs are reconciled on their pods' changes from this same cache (not from a second
    // watch of the pods that could be ahead of it and show a step the cache has not).
    let (wake, woken) = futures::channel::mpsc::unbounded();
    {
        let (changed, pool_changed, wake) = (changed.clone(), pool_changed.clone(), wake.clone());
        let mut pod_events = pod_events.boxed();
        tokio::spawn(async move {
            while let Some(event) = pod_events.next().await {
                match event {
                    Err(e) => warn!(watch = "pods", error = %e, "watching the cluster"),
                    Ok(
                        watcher::Event::Apply(pod)
                        | watcher::Event::Delete(pod)
                        | watcher::Event::InitApply(pod),
                    ) => {
                        if let Some(run) = crate::pod_spec::run_of(&pod) {
                            let _ = wake.unbounded_send(run);
                        }
                    }
                    Ok(_) => {}
                }
                changed.notify_one();
                pool_changed.notify_one();
            }
        });
    }
    {
        let (changed, pool_changed) = (changed.clone(), pool_changed.clone());
        let mut node_events = node_events.boxed();
        tokio::spawn(async move {
            while let Some(event) = node_events.next().await {
                if let Err(e) = event {
                    warn!(watch = "nodes", error = %e, "watching the cluster");
                }
                changed.notify_one();
                pool_changed.notify_one();
            }
        });
    }
    Cluster {
        pods,
        nodes,
        changed,
        pool_changed,
        wake,
        woken,
    }
}

/// `/metrics` and `/healthz` on their own address (never the REST API's).
async fn serve_metrics(addr: &str, metrics: &Metrics) -> anyhow::Result<()> {
    let served = metrics.clone();
    let metrics_app = Router::new()
        .route("/metrics", get(move || std::future::ready(served.encode())))
        .route("/healthz", get(|| std::future::ready("ok")));
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding the metrics address {}", addr))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics_app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// Once the runs are listed, those that hold a pod count against their tenants' caps from
/// the start; then the queue admits in order whenever the cluster's pods or nodes change.
fn spawn_pump(ctx: &Arc<Context>, runs: reflector::Store<CodeRun>, changed: Arc<Notify>) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if runs.wait_until_ready().await.is_err() {
            return;
        }
        {
            let mut queue = ctx.queue.lock().expect("lock");
            for run in runs.state() {
                if run.is_finished() {
                    continue;
                }
                if ctx.find_pod(&run).is_some() {
                    queue.hold(&run.uid().unwrap_or_default(), &ctx.tenant(&run));
                }
            }
        }
        let mut changes = std::pin::pin!(notifications(changed));
        loop {
            ctx.pump();
            if changes.next().await.is_none() {
                return;
            }
            // Gather a burst of changes into one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Every few seconds: runs deleted while they waited or held room give it back, the queue
/// is pumped, and waiting runs' places in line are refreshed.
fn spawn_housekeeping(ctx: &Arc<Context>) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if ctx.runs.wait_until_ready().await.is_err() {
                continue;
            }
            // Runs deleted while they waited or held room give it back.
            let uids: HashSet<String> = ctx.runs.state().iter().filter_map(|r| r.uid()).collect();
            ctx.queue
                .lock()
                .expect("lock")
                .retain(|uid| uids.contains(uid));
            ctx.pump();
            reconcile::start::refresh_positions(&ctx).await;
        }
    });
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.check().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::default();
    let kube_config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API's address and credentials")?;
    let client = counted_client(&kube_config, &metrics, "run")?;
    let store = Store::open(&cfg.storage_url).context("opening object storage")?;

    serve_metrics(&cfg.metrics_addr, &metrics).await?;

    let runs_api: Api<CodeRun> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Fail fast with a clear message when the CRD is not installed.
    runs_api
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing CodeRuns (is the CRD installed?)")?;

    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
                std::process::id()
            )
        });
    let mut leadership = tokio::select! {
        l = leader::acquire(counted_client(&kube_config, &metrics, "lease")?, &cfg, &identity) => l?,
        _ = leader::stop_signal() => return Ok(()),
    };
    metrics.is_leader.set(1);

    let Cluster {
        pods,
        nodes,
        changed,
        pool_changed,
        wake,
        woken,
    } = watch_cluster(&client);
    pods.wait_until_ready().await.context("listing pods")?;
    nodes.wait_until_ready().await.context("listing nodes")?;

    let shard = match &cfg.shard {
        Some(shard) => format!("{SHARD_LABEL}={shard}"),
        None => format!("!{SHARD_LABEL}"),
    };
    let controller = Controller::new(runs_api, watcher::Config::default().labels(&shard))
        .reconcile_on(woken)
        .with_config(ControllerConfig::default().concurrency(cfg.concurrency));
    let runs = controller.store();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        tidy_client: counted_client(&kube_config, &metrics, "tidy")?,
        pool_client: counted_client(&kube_config, &metrics, "pool")?,
        maxima: cfg.maxima(),
        pools: cfg.pools(),
        recorder: Recorder::new(counted_client(&kube_config, &metrics, "event")?, reporter),
        store,
        metrics: metrics.clone(),
        pods,
        nodes,
        runs: runs.clone(),
        queue: Mutex::new(Queue::new(Caps {
            running_per_tenant: cfg.max_running_per_tenant,
            queued_per_tenant: cfg.max_queued_per_tenant,
            concurrent: cfg.max_concurrent_runs,
        })),
        sessions: Mutex::new(HashSet::new()),
        fresh_pods: Mutex::new(HashSet::new()),
        removing: Recent::new(context::FINISHED_MEMORY),
        created: Recent::new(context::CREATED_MEMORY),
        starts: Default::default(),
        held: Default::default(),
        identity: identity.clone(),
        wake,
        policies: Recent::new(context::POLICY_RECHECK),
        finished: Recent::new(context::FINISHED_MEMORY),
        cfg: cfg.clone(),
    });

    spawn_pump(&ctx, runs, changed);
    tokio::spawn(pool::run(ctx.clone(), notifications(pool_changed)));
    spawn_housekeeping(&ctx);

    info!(
        namespace = cfg.namespace.as_deref().unwrap_or("*"),
        pools = ctx.pools.len(),
        "operator started"
    );
    let controlling = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    // Asked to stop, this replica stops at once and hands the lease over: what its sessions
    // were reading, the next leader reads from the pods' logs.
    tokio::select! {
        _ = controlling => {
            leadership.step_down().await;
            info!("operator stopped");
            Ok(())
        }
        _ = leader::stop_signal() => {
            metrics.is_leader.set(0);
            leadership.step_down().await;
            info!("operator stopped; a standby takes over");
            Ok(())
        }
        _ = leadership.lost() => {
            metrics.is_leader.set(0);
            anyhow::bail!("lost the lease: stopping so that only the new leader acts")
        }
    }
}
