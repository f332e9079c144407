//! When this process first saw each step of a CodeRun and of a Pod, from watches.
//!
//! Kubernetes writes `creationTimestamp`, condition `lastTransitionTime`, the run's
//! `startedAt`/`completedAt` and a container's `startedAt`/`finishedAt` with whole seconds, too
//! coarse for steps that take tens of milliseconds. The benchmarks time steps by the local
//! clock at the moment a watch event first shows them instead (a few ms after the fact, the
//! same for every step and for the baseline).
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codeinterp_crds::CodeRun;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Steps of a CodeRun, as first seen.
#[derive(Clone, Debug, Default)]
pub struct RunSeen {
    pub uid: Option<String>,
    pub created: Option<Instant>,
    pub running: Option<Instant>,
    pub finished: Option<Instant>,
}

/// Steps of a Pod, as first seen, and every pod (by uid) that had the name. For the pod of a
/// run (looked up by the run), `created` is when it was first seen carrying the run's
/// label: created for it (cold) or claimed from a pool (warm); `uids` are every pod that
/// ever carried it.
#[derive(Clone, Debug, Default)]
pub struct PodSeen {
    pub created: Option<Instant>,
    /// The container running, or already ended (a short program may never be seen running).
    pub started: Option<Instant>,
    pub terminated: Option<Instant>,
    pub uids: BTreeSet<String>,
}

type Table<T> = Arc<Mutex<HashMap<String, T>>>;

/// Watches of the CodeRuns and Pods of one namespace, filled in the background.
pub struct Transitions {
    runs: Table<RunSeen>,
    pods: Table<PodSeen>,
    /// By the UID of the run the pod serves.
    bound: Table<PodSeen>,
    tasks: Vec<JoinHandle<()>>,
}

impl Transitions {
    /// Starts both watches and returns once each has listed what already exists.
    pub async fn watch(client: &Client, namespace: &str) -> anyhow::Result<Self> {
        let runs: Table<RunSeen> = Arc::default();
        let pods: Table<PodSeen> = Arc::default();
        let bound: Table<PodSeen> = Arc::default();
        let (runs_ready, runs_listed) = oneshot::channel();
        let (pods_ready, pods_listed) = oneshot::channel();

        let table = runs.clone();
        let run_task = spawn_watch(
            Api::<CodeRun>::namespaced(client.clone(), namespace),
            runs_ready,
            move |run: &CodeRun, at, deleted| {
                if deleted {
                    return;
                }
                let mut table = table.lock().unwrap();
                let seen = table.entry(run.name_any()).or_default();
                seen.created.get_or_insert(at);
                if seen.uid.is_none() {
                    seen.uid = run.uid();
                }
                let phase = run.phase();
                if phase == Some(codeinterp_crds::Phase::Running) || run.is_finished() {
                    seen.running.get_or_insert(at);
                }
                if run.is_finished() {
                    seen.finished.get_or_insert(at);
                }
            },
        );
        let (table, by_run) = (pods.clone(), bound.clone());
        let pod_task = spawn_watch(
            Api::<Pod>::namespaced(client.clone(), namespace),
            pods_ready,
            move |pod: &Pod, at, deleted| {
                note_pod(&mut table.lock().unwrap(), pod.name_any(), pod, at, deleted);
                if let Some(run) = pod.labels().get(codeinterp_crds::RUN_UID_LABEL) {
                    note_pod(&mut by_run.lock().unwrap(), run.clone(), pod, at, deleted);
                }
            },
        );
        let tasks = vec![run_task, pod_task];
        let listed = async {
            runs_listed.await?;
            pods_listed.await
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(60), listed).await {
            return Ok(Transitions {
                runs,
                pods,
                bound,
                tasks,
            });
        }
        tasks.iter().for_each(JoinHandle::abort);
        anyhow::bail!("the watches of CodeRuns and Pods in {namespace} did not list within 60 s")
    }

    pub fn run(&self, name: &str) -> RunSeen {
        self.runs
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub fn pod(&self, name: &str) -> PodSeen {
        self.pods
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The pod that served the run (created for it, or claimed from a pool).
    pub fn pod_of_run(&self, name: &str) -> PodSeen {
        let Some(uid) = self.run(name).uid else {
            return PodSeen::default();
        };
        self.bound
            .lock()
            .unwrap()
            .get(&uid)
            .cloned()
            .unwrap_or_default()
    }

    /// How many of these runs were seen finished, and when the last of them was.
    pub fn finished_among<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> (usize, Option<Instant>) {
        let table = self.runs.lock().unwrap();
        let times: Vec<Instant> = names
            .into_iter()
            .filter_map(|n| table.get(n).and_then(|s| s.finished))
            .collect();
        (times.len(), times.into_iter().max())
    }
}

impl Drop for Transitions {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn note_pod(
    table: &mut HashMap<String, PodSeen>,
    key: String,
    pod: &Pod,
    at: Instant,
    deleted: bool,
) {
    let seen = table.entry(key).or_default();
    if let Some(uid) = pod.uid() {
        seen.uids.insert(uid);
    }
    if deleted {
        return;
    }
    seen.created.get_or_insert(at);
    let (started, terminated) = container_progress(pod);
    if started {
        seen.started.get_or_insert(at);
    }
    if terminated {
        seen.terminated.get_or_insert(at);
    }
}

/// Whether the pod's container has started (or already ended), and whether it has ended.
fn container_progress(pod: &Pod) -> (bool, bool) {
    let status = pod.status.as_ref();
    let state = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref());
    let ended_pod = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let terminated = ended_pod || state.is_some_and(|s| s.terminated.is_some());
    let started = terminated || state.is_some_and(|s| s.running.is_some());
    (started, terminated)
}

/// Feeds every object the watch shows to `on_object` with the moment it arrived (and
/// whether it was a deletion); says `ready` once the initial listing is done.
fn spawn_watch<K, F>(api: Api<K>, ready: oneshot::Sender<()>, mut on_object: F) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&K, Instant, bool) + Send + 'static,
{
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let at = Instant::now();
            match event {
                Ok(Event::Apply(obj) | Event::InitApply(obj)) => on_object(&obj, at, false),
                Ok(Event::Delete(obj)) => on_object(&obj, at, true),
                Ok(Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Init) | Err(_) => {}
            }
        }
    })
}
