//! What a simulated round watches: the shard's CodeRuns (when each was first seen, its place
//! in the order the API server stored them, whether it waited for room, the phases it
//! reached) and the runner pods of the sandbox namespace (when a run's first pod was seen,
//! bound to a node, marked Running; whether the scheduler found no node for it). Times are
//! this process's clock when a watch event first showed a step (see `transitions`).
//!
//! A run whose pod is seen Running has reached the end of what a simulated node can show:
//! it is handed to the deleter, which deletes the CodeRun (its pod goes with it), as if its
//! program had ended at once. Nothing of it is ever reported completed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, RUNNER_LABEL, SHARD_LABEL, TENANT_LABEL};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One run, as the watches saw it.
#[derive(Clone, Debug, Default)]
pub struct Track {
    pub tenant: String,
    pub created: Option<Instant>,
    /// The resourceVersion it was first seen with (etcd's revision: the order of creation).
    pub revision: u64,
    pub waited: bool,
    pub phases: BTreeSet<String>,
    /// Every pod (by UID) it ever had.
    pub pods: BTreeSet<String>,
    pub admitted: Option<Instant>,
    pub bound: Option<Instant>,
    pub node: Option<String>,
    pub started: Option<Instant>,
    /// One of its pods was found unschedulable: admitted to room no node had.
    pub unschedulable: bool,
    pub deleted: bool,
}

type Table = Arc<Mutex<HashMap<String, Track>>>;

pub struct Observer {
    table: Table,
    pub deletes_failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Observer {
    /// Starts the watches and the deleter; returns once both watches have listed.
    pub async fn start(client: &Client, namespace: &str, shard: &str) -> anyhow::Result<Self> {
        let table: Table = Arc::default();
        let (started_tx, started_rx) = mpsc::unbounded_channel::<String>();
        let runs = Api::<CodeRun>::namespaced(client.clone(), namespace);
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let (runs_ready, runs_listed) = tokio::sync::oneshot::channel();
        let (pods_ready, pods_listed) = tokio::sync::oneshot::channel();
        let run_config = watcher::Config::default().labels(&format!("{SHARD_LABEL}={shard}"));
        let pod_config = watcher::Config::default().labels(&format!("{RUNNER_LABEL}=true"));
        let t = table.clone();
        let run_task = tokio::spawn(watch(runs, run_config, runs_ready, move |run, at| {
            note_run(&mut t.lock().unwrap(), run, at)
        }));
        let t = table.clone();
        let pod_task = tokio::spawn(watch(pods, pod_config, pods_ready, move |pod, at| {
            if note_pod(&mut t.lock().unwrap(), pod, at) {
                let owner = controller_run(pod).unwrap_or_default();
                let _ = started_tx.send(owner);
            }
        }));
        let deletes_failed = Arc::new(Mutex::new(Vec::new()));
        let deleter = tokio::spawn(delete_started(
            Api::namespaced(client.clone(), namespace),
            started_rx,
            table.clone(),
            deletes_failed.clone(),
        ));
        let tasks = vec![run_task, pod_task, deleter];
        let listed = async { runs_listed.await.and(pods_listed.await) };
        if !matches!(
            tokio::time::timeout(Duration::from_secs(60), listed).await,
            Ok(Ok(()))
        ) {
            tasks.iter().for_each(JoinHandle::abort);
            anyhow::bail!("the watches of {namespace} did not list within 60 s");
        }
        Ok(Observer {
            table,
            deletes_failed,
            tasks,
        })
    }

    /// The runs seen so far, by name.
    pub fn snapshot(&self) -> HashMap<String, Track> {
        self.table.lock().unwrap().clone()
    }

    /// How many of `names` were seen started, deleted, and ended without a start.
    pub fn progress(&self, names: &[String]) -> Progress {
        let table = self.table.lock().unwrap();
        let mut p = Progress::default();
        for t in names.iter().filter_map(|n| table.get(n)) {
            p.started += usize::from(t.started.is_some());
            p.deleted += usize::from(t.deleted);
            p.ended_unstarted += usize::from(t.started.is_none() && t.ended());
        }
        p
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub started: usize,
    pub deleted: usize,
    pub ended_unstarted: usize,
}

impl Track {
    /// Seen in a final phase.
    pub fn ended(&self) -> bool {
        ["Completed", "Failed", "TimedOut", "Cancelled"]
            .iter()
            .any(|p| self.phases.contains(*p))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    ready: tokio::sync::oneshot::Sender<()>,
    mut note: impl FnMut(&K, Instant) + Send,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut ready = Some(ready);
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let at = Instant::now();
        match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => note(&o, at),
            Ok(Event::InitDone) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            _ => {}
        }
    }
}

fn note_run(table: &mut HashMap<String, Track>, run: &CodeRun, at: Instant) {
    let t = table.entry(run.name_any()).or_default();
    if t.created.is_none() {
        t.created = Some(at);
        t.revision = run
            .resource_version()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        t.tenant = run.labels().get(TENANT_LABEL).cloned().unwrap_or_default();
    }
    let status = run.status.as_ref();
    t.waited |= status.is_some_and(|s| s.queue_position.is_some());
    if let Some(phase) = run.phase() {
        t.phases.insert(phase.as_str().to_string());
    }
}

/// The name of the CodeRun that controls the pod.
fn controller_run(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "CodeRun")
        .map(|o| o.name.clone())
}

/// Notes the pod's steps under its run; true when this is the first time one of the run's
/// pods is seen Running.
fn note_pod(table: &mut HashMap<String, Track>, pod: &Pod, at: Instant) -> bool {
    let Some(run) = controller_run(pod) else {
        return false;
    };
    let t = table.entry(run).or_default();
    if let Some(uid) = pod.uid() {
        t.pods.insert(uid);
    }
    t.admitted.get_or_insert(at);
    let spec = pod.spec.as_ref();
    if let Some(node) = spec.and_then(|s| s.node_name.clone()) {
        t.bound.get_or_insert(at);
        t.node.get_or_insert(node);
    }
    let status = pod.status.as_ref();
    t.unschedulable |= status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        });
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    running && t.started.is_none() && {
        t.started = Some(at);
        true
    }
}

/// Deletes each run whose pod was seen Running, a few at a time.
async fn delete_started(
    runs: Api<CodeRun>,
    started: mpsc::UnboundedReceiver<String>,
    table: Table,
    failed: Arc<Mutex<Vec<String>>>,
) {
    let names = tokio_stream_of(started);
    names
        .for_each_concurrent(16, |name| {
            let (runs, table, failed) = (runs.clone(), table.clone(), failed.clone());
            async move {
                match runs.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {
                        if let Some(t) = table.lock().unwrap().get_mut(&name) {
                            t.deleted = true;
                        }
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => failed.lock().unwrap().push(format!("{name}: {e}")),
                }
            }
        })
        .await;
}

fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<String>) -> impl futures::Stream<Item = String> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How many runs had none, one, or more pods.
pub fn pods_per_run<'a>(tracks: impl Iterator<Item = &'a Track>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in tracks {
        let key = match t.pods.len() {
            0 => "0",
            1 => "1",
            2 => "2",
            _ => "3+",
        };
        *out.entry(key.to_string()).or_insert(0) += 1;
    }
    out
}
