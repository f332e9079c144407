//! Start-up and the tasks of a running operator: settings checked, the metrics endpoint,
//! leader election, the cluster's pods and nodes watched, then the controller, the queue's
//! pump, the housekeeping, the pools, the event writer and the pod remover, every one owned
//! by the supervisor, until the lease is lost, a signal stops it, or a service task ends.
use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use codeinterp_crds::{CodeContainer, CodeRun, RUNNER_LABEL, RunnerPool};
use codeinterp_store::Store;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::time::Duration;
use tracing::{info, warn};

use crate::admission::{Caps, Queue};
use crate::config::Config;
use crate::context::{Cluster, Context, Settings};
use crate::index::Index;
use crate::kube_io::{Clients, counted_client};
use crate::metrics::Metrics;
use crate::status::MANAGER;
use crate::streams::KubeStreams;
use crate::tasks::{Kind, Tasks};
use crate::{containers, events, leader, pool, steps, tasks};

/// What the operator keeps of a pod: all of a runner pod (its spec is checked before a pool
/// pod is trusted), only placement and requests of any other.
pub fn slim_pod(pod: &mut Pod) {
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

/// The watches of the whole cluster's pods and nodes, before they are started.
struct Watches {
    pods: reflector::Store<Pod>,
    nodes: reflector::Store<Node>,
    pools: reflector::Store<RunnerPool>,
    pod_writer: reflector::store::Writer<Pod>,
    node_writer: reflector::store::Writer<Node>,
    pool_writer: reflector::store::Writer<RunnerPool>,
    pod_changes: watch::Sender<u64>,
    /// Notified on every change: the queue's pump waits on one, the pools on the other.
    changed: Arc<Notify>,
    pool_changed: Arc<Notify>,
}

fn watches() -> Watches {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pools, pool_writer) = reflector::store::<RunnerPool>();
    Watches {
        pods,
        nodes,
        pools,
        pod_writer,
        node_writer,
        pool_writer,
        pod_changes: watch::Sender::new(0),
        changed: Arc::new(Notify::new()),
        pool_changed: Arc::new(Notify::new()),
    }
}

/// How every watch starts: with a streaming list, the objects there are arrive one by one
/// as watch events, each projected before the next is read. A paged list would hold a
/// whole page first (500 objects, up to 1.5 MiB each: tenants make CodeRuns and pods that
/// large), which a new leader or a relisting watch would read in one piece.
fn listing() -> watcher::Config {
    watcher::Config::default().streaming_lists()
}

/// Watches pods: the cache, the index's map of runs to pods, and a wake for the run a
/// changed pod serves (from this same cache, so a reconcile never sees a step the cache has
/// not).
async fn watch_pods(
    ctx: Arc<Context>,
    client: Client,
    writer: reflector::store::Writer<Pod>,
    changes: watch::Sender<u64>,
    changed: [Arc<Notify>; 2],
) {
    let events = watcher(Api::<Pod>::all(client), listing())
        .default_backoff()
        .modify(slim_pod)
        .reflect(writer);
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match &event {
            Err(e) => warn!(watch = "pods", error = %e, "watching the cluster"),
            Ok(watcher::Event::Apply(pod)) => ctx.note_pod(pod, false),
            Ok(watcher::Event::Delete(pod)) => ctx.note_pod(pod, true),
            Ok(watcher::Event::Init) => ctx.cluster.ledger().relist_begins(),
            Ok(watcher::Event::InitApply(pod)) => ctx.note_relisted_pod(pod),
            Ok(watcher::Event::InitDone) => ctx.cluster.ledger().relist_done(),
        }
        changes.send_modify(|n| *n = n.wrapping_add(1));
        changed.iter().for_each(|n| n.notify_one());
    }
}

async fn watch_nodes(
    client: Client,
    writer: reflector::store::Writer<Node>,
    changed: [Arc<Notify>; 2],
) {
    let events = watcher(Api::<Node>::all(client), listing())
        .default_backoff()
        .modify(slim_node)
        .reflect(writer);
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            warn!(watch = "nodes", error = %e, "watching the cluster");
        }
        changed.iter().for_each(|n| n.notify_one());
    }
}

/// Watches the warm pools (the shard's RunnerPools of the sandbox namespace); a change of
/// one is tended at once.
async fn watch_pools(
    client: Client,
    (ns, shard): (String, String),
    writer: reflector::store::Writer<RunnerPool>,
    changed: Arc<Notify>,
) {
    let config = listing().labels(&shard);
    let events = watcher(Api::<RunnerPool>::namespaced(client, &ns), config)
        .default_backoff()
        .reflect(writer);
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            warn!(watch = "runnerpools", error = %e, "watching the pools");
        }
        changed.notify_one();
    }
}

/// `/metrics` and `/healthz` on their own address (never the REST API's).
async fn metrics_server(
    addr: &str,
    metrics: &Metrics,
) -> anyhow::Result<impl Future<Output = ()> + use<>> {
    let served = metrics.clone();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(served.encode())))
        .route("/healthz", get(|| std::future::ready("ok")));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    })
}

/// Once the runs are listed, those that hold a pod take their seats (they count against
/// their tenants' caps from the start); then the queue admits in order whenever the
/// cluster's pods or nodes change.
async fn pump(ctx: Arc<Context>, changed: Arc<Notify>) {
    if ctx.cluster.runs.wait_until_ready().await.is_err() {
        return;
    }
    for run in ctx.cluster.runs.state() {
        if !run.is_finished() && ctx.pod_of(&run).is_some() {
            ctx.index
                .seat(&run.uid().unwrap_or_default(), &ctx.tenant(&run));
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
}

/// Every few seconds: what concerns runs deleted meanwhile is forgotten (their room given
/// back), the queue is pumped, and waiting runs' places in line are refreshed.
async fn housekeeping(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if ctx.cluster.runs.wait_until_ready().await.is_err() {
            continue;
        }
        let uids: HashSet<String> = ctx
            .cluster
            .runs
            .state()
            .iter()
            .filter_map(|r| r.uid())
            .collect();
        ctx.index.retain_runs(|uid| uids.contains(uid));
        if ctx.cluster.containers.wait_until_ready().await.is_err() {
            continue;
        }
        let containers: HashSet<String> = ctx
            .cluster
            .containers
            .state()
            .iter()
            .filter_map(|c| c.uid())
            .collect();
        ctx.index.retain_containers(|uid| containers.contains(uid));
        ctx.metrics
            .runs_tracked
            .set(ctx.index.runs_tracked() as i64);
        ctx.pump();
        steps::admit::refresh_positions(&ctx).await;
    }
}

fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
                std::process::id()
            )
        })
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.check().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::default();
    let kube_config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API's address and credentials")?;
    let client = counted_client(&kube_config, &metrics, "run")?;
    let store = Store::open(&cfg.shared.storage_url).context("opening object storage")?;
    let serving = metrics_server(&cfg.metrics_addr, &metrics).await?;
    let runs_api: Api<CodeRun> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let containers_api: Api<CodeContainer> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Fail fast with a clear message when the CRD is not installed.
    runs_api
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing CodeRuns (is the CRD installed?)")?;
    let identity = identity();
    let lease_client = counted_client(&kube_config, &metrics, "lease")?;
    // The supervisor runs from here on: a standby answers its health checks too, and the
    // watches serve() waits for are its tasks.
    let (tasks, supervisor) = tasks::supervisor();
    tasks.spawn("metrics server", Kind::Service, serving);
    let supervising = tokio::spawn(supervisor.run());
    let mut leadership = tokio::select! {
        l = leader::acquire(lease_client, &cfg, &identity) => l?,
        _ = leader::stop_signal() => return Ok(()),
    };
    metrics.is_leader.set(1);
    let clients = Clients {
        run: client.clone(),
        tidy: counted_client(&kube_config, &metrics, "tidy")?,
        pool: counted_client(&kube_config, &metrics, "pool")?,
    };
    let parts = Parts {
        recorder_client: counted_client(&kube_config, &metrics, "event")?,
        metrics: metrics.clone(),
        cfg,
        identity,
        clients,
        runs_api: Some(runs_api),
        containers_api: Some(containers_api),
        store,
    };
    serve(parts, tasks).await?;
    let ended = async {
        supervising
            .await
            .unwrap_or_else(|e| format!("the supervisor ({e})"))
    };
    // Asked to stop, or the lease lost, this replica stops at once and hands the lease over:
    // what it was reading, the next leader reads from the pods' logs.
    tokio::select! {
        name = ended => {
            leadership.step_down().await;
            anyhow::bail!("{name} ended; stopping so that the standby takes over")
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

/// What the running operator is made of, once it leads.
struct Parts {
    cfg: Config,
    identity: String,
    clients: Clients,
    recorder_client: Client,
    runs_api: Option<Api<CodeRun>>,
    containers_api: Option<Api<CodeContainer>>,
    store: Store,
    metrics: Metrics,
}

/// What the writer tasks read from.
struct Queues {
    events: events::EventQueue,
    tidy: steps::collect::TidyQueue,
    /// Where the event writer publishes, and as whom.
    recorder: (Client, Reporter),
}

/// The controllers' caches and wakes.
struct Controlled {
    runs: reflector::Store<CodeRun>,
    containers: reflector::Store<CodeContainer>,
    wake: crate::context::Wake,
    wake_container: crate::context::WakeContainer,
}

/// The context every step shares.
fn context(parts: Parts, w: &Watches, c: Controlled, tasks: &Tasks) -> (Arc<Context>, Queues) {
    let Parts {
        cfg,
        identity,
        clients,
        recorder_client,
        store,
        metrics,
        ..
    } = parts;
    let (events, event_queue) = events::channel();
    let (tidy, tidy_queue) = steps::collect::tidy();
    let queue = Queue::new(Caps {
        running_per_tenant: cfg.max_running_per_tenant,
        concurrent: cfg.max_concurrent_runs,
    });
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let quota = cfg.shared.storage_quota_bytes();
    let ctx = Arc::new(Context {
        settings: Settings::new(cfg, identity),
        streams: Arc::new(KubeStreams(clients.run.clone())),
        cluster: Cluster {
            pods: w.pods.clone(),
            nodes: w.nodes.clone(),
            pools: w.pools.clone(),
            runs: c.runs,
            containers: c.containers,
            pod_changes: w.pod_changes.subscribe(),
            ledger: Default::default(),
        },
        index: Index::new(queue),
        churn: Default::default(),
        tasks: tasks.clone(),
        api: clients,
        store,
        events,
        metrics,
        tidy,
        wake: c.wake,
        wake_container: c.wake_container,
        quota: codeinterp_store::Quota::new(quota),
    });
    let queues = Queues {
        events: event_queue,
        tidy: tidy_queue,
        recorder: (recorder_client, reporter),
    };
    (ctx, queues)
}

/// Starts the pod and node watches and waits for their first lists.
async fn start_watches(ctx: &Arc<Context>, tasks: &Tasks, w: Watches) -> anyhow::Result<()> {
    let both = [w.changed.clone(), w.pool_changed.clone()];
    let client = ctx.api.run.clone();
    let pods = watch_pods(
        ctx.clone(),
        client.clone(),
        w.pod_writer,
        w.pod_changes,
        both.clone(),
    );
    tasks.spawn("pods watch", Kind::Service, pods);
    tasks.spawn(
        "nodes watch",
        Kind::Service,
        watch_nodes(client.clone(), w.node_writer, both),
    );
    let scope = (
        ctx.settings.sandbox_namespace().to_string(),
        ctx.cfg().shared.shard_selector(),
    );
    let pools = watch_pools(client, scope, w.pool_writer, w.pool_changed.clone());
    tasks.spawn("pools watch", Kind::Service, pools);
    w.pods.wait_until_ready().await.context("listing pods")?;
    w.nodes.wait_until_ready().await.context("listing nodes")?;
    tasks.spawn("queue pump", Kind::Service, pump(ctx.clone(), w.changed));
    let pools = pool::run(ctx.clone(), notifications(w.pool_changed));
    tasks.spawn("warm pools", Kind::Service, pools);
    Ok(())
}

/// Starts the watches, the controllers and every service task (in the running supervisor).
async fn serve(mut parts: Parts, tasks: Tasks) -> anyhow::Result<()> {
    let w = watches();
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let (wake_container, woken_containers) = futures::channel::mpsc::unbounded();
    let selector = parts.cfg.shared.shard_selector();
    let concurrency = parts.cfg.concurrency;
    let runs_api = parts.runs_api.take().expect("the runs API");
    // The cache keeps what decisions need, not what a tenant may make large.
    let (runs, runs_writer) = reflector::store();
    let run_changes = watcher(runs_api, listing().labels(&selector))
        .default_backoff()
        .modify(crate::projection::project)
        .reflect(runs_writer)
        .touched_objects();
    let controller = Controller::for_stream(run_changes, runs)
        .reconcile_on(woken)
        .with_config(ControllerConfig::default().concurrency(concurrency));
    let containers_api = parts.containers_api.take().expect("the containers API");
    let container_controller = Controller::new(containers_api, listing().labels(&selector))
        .reconcile_on(woken_containers)
        .with_config(ControllerConfig::default().concurrency(concurrency));
    let controlled = Controlled {
        runs: controller.store(),
        containers: container_controller.store(),
        wake,
        wake_container,
    };
    let (ctx, queues) = context(parts, &w, controlled, &tasks);
    start_watches(&ctx, &tasks, w).await?;
    let (client, reporter) = queues.recorder;
    let writing = queues.events.write(client, reporter);
    tasks.spawn("event writer", Kind::Service, writing);
    let removing = queues.tidy.run(ctx.api.tidy.clone(), ctx.churn.clone());
    tasks.spawn("pod remover", Kind::Service, removing);
    tasks.spawn("housekeeping", Kind::Service, housekeeping(ctx.clone()));
    info!("operator started");
    let controlling = controller
        .run(steps::reconcile, steps::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    tasks.spawn("controller", Kind::Service, controlling);
    let containing = container_controller
        .run(containers::reconcile, containers::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "container reconcile");
            }
        });
    tasks.spawn("container controller", Kind::Service, containing);
    Ok(())
}
