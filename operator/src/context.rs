//! What every step shares: the settings, the clients and streams, the watched cluster, the
//! index of what this process knows, and handles to its tasks.
use std::sync::Arc;

use codeinterp_crds::{
    Applied, CodeContainer, CodeRun, EffectiveLimits, Maxima, POOL_LABEL, RUNNER_LABEL, RunnerPool,
};
use codeinterp_store::Store;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use crate::Error;
use crate::admission::{Demand, Entry, Room};
use crate::churn::Churn;
use crate::config::{AppArmorMode, Config, PoolSpec};
use crate::decide::{Facts, Step, Timing, decide};
use crate::events::Events;
use crate::index::Index;
use crate::kube_io::{self, Clients};
use crate::metrics::Metrics;
use crate::placement::Placement;
use crate::pod_spec::{self, Shape};
use crate::streams::PodStreams;
use crate::tasks::Tasks;

/// The settings, decided once.
pub struct Settings {
    pub cfg: Config,
    pub maxima: Maxima,
    /// Where runner pods may go (the nodes that count as room).
    pub placement: Placement,
    /// This process, as it holds the lease (and marks the pool pods it holds).
    pub identity: String,
}

impl Settings {
    pub fn new(cfg: Config, identity: String) -> Self {
        Settings {
            maxima: cfg.maxima(),
            placement: cfg.placement(),
            cfg,
            identity,
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            start_timeout_secs: self.cfg.start_timeout_seconds,
            queue_timeout_secs: self.cfg.queue_timeout_seconds,
            ttl_secs: self.cfg.run_ttl_seconds,
        }
    }

    pub fn sandbox_namespace(&self) -> &str {
        &self.cfg.shared.sandbox_namespace
    }
}

/// The cluster as watched: every pod (the requests of all, the whole spec of runner pods),
/// the nodes, and the runs this operator serves.
#[derive(Clone)]
pub struct Cluster {
    pub pods: Cache<Pod>,
    pub nodes: Cache<Node>,
    pub runs: Cache<CodeRun>,
    /// The warm pools (RunnerPools of the sandbox namespace).
    pub pools: Cache<RunnerPool>,
    /// The containers this operator serves.
    pub containers: Cache<CodeContainer>,
    /// Counts pod changes: a step waiting for a pod to change waits on it.
    pub pod_changes: watch::Receiver<u64>,
    /// What every pod takes, node by node (the room is worked out from it).
    pub ledger: std::sync::Arc<std::sync::Mutex<crate::ledger::Ledger>>,
}

impl Cluster {
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, crate::ledger::Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `done` holds for the pod as the cache shows it (`None`: gone), or until
    /// `deadline`. Woken by the pod watch, never by a timer.
    pub async fn wait_for_pod(
        &self,
        ns: &str,
        name: &str,
        deadline: Instant,
        done: impl Fn(Option<&Pod>) -> bool,
    ) -> Option<Arc<Pod>> {
        let mut changes = self.pod_changes.clone();
        loop {
            changes.borrow_and_update();
            let pod = self.pods.get(&ObjectRef::new(name).within(ns));
            if done(pod.as_deref()) {
                return pod;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .map_or(true, |changed| changed.is_err())
            {
                return pod;
            }
        }
    }
}

/// Wakes a run's reconcile.
pub type Wake = futures::channel::mpsc::UnboundedSender<ObjectRef<CodeRun>>;
/// Wakes a container's reconcile.
pub type WakeContainer = futures::channel::mpsc::UnboundedSender<ObjectRef<CodeContainer>>;

pub struct Context {
    pub settings: Settings,
    pub api: Clients,
    pub streams: Arc<dyn PodStreams>,
    pub store: Store,
    pub events: Events,
    pub metrics: Metrics,
    pub cluster: Cluster,
    pub index: Index,
    pub churn: Churn,
    pub tasks: Tasks,
    pub tidy: crate::steps::collect::Tidy,
    pub wake: Wake,
    pub wake_container: WakeContainer,
    /// What each tenant stores, against `STORAGE_QUOTA_MB` ([`crate::quota`]).
    pub quota: codeinterp_store::Quota,
}

impl Context {
    pub fn cfg(&self) -> &Config {
        &self.settings.cfg
    }

    pub fn limits(&self, run: &CodeRun) -> EffectiveLimits {
        run.spec.limits.clamp(&self.settings.maxima)
    }

    pub fn tenant(&self, run: &CodeRun) -> String {
        run.tenant_in(self.settings.sandbox_namespace())
    }

    /// Whether the run may use its tenant's uploaded files: only a run the REST API created
    /// (in its namespace, with a tenant label only it may set).
    pub fn is_rest_run(&self, run: &CodeRun) -> bool {
        run.namespace().as_deref() == Some(self.settings.sandbox_namespace())
            && run
                .tenant_label()
                .is_some_and(codeinterp_crds::is_api_tenant)
    }

    pub fn runs_api(&self, ns: &str) -> Api<CodeRun> {
        Api::namespaced(self.api.run.clone(), ns)
    }

    pub fn pods_api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.api.run.clone(), ns)
    }

    pub fn wake(&self, run: ObjectRef<CodeRun>) {
        let _ = self.wake.unbounded_send(run);
    }

    pub fn wake_container(&self, container: ObjectRef<CodeContainer>) {
        let _ = self.wake_container.unbounded_send(container);
    }

    /// Records an event about the run (written a moment later).
    pub fn record(&self, run: &CodeRun, type_: EventType, reason: &str, action: &str, note: &str) {
        self.events
            .record(run.object_ref(&()), type_, reason, action, note);
    }

    /// The run's pod in the cache, if it has one: the pod this process knows the run owns
    /// (from the watch, or created here), and only if its controller is the run.
    pub fn pod_of(&self, run: &CodeRun) -> Option<Arc<Pod>> {
        let uid = run.uid()?;
        let name = self.index.pod_of(&uid)?;
        let ns = run.namespace()?;
        self.cluster
            .pods
            .get(&ObjectRef::new(&name).within(&ns))
            .filter(|p| pod_spec::owned_by(p, &uid))
    }

    /// The next step for the run, from the facts.
    pub fn next_step(&self, run: &CodeRun) -> Step {
        let uid = run.uid().unwrap_or_default();
        let known = self.index.known(&uid);
        let pod = self.pod_of(run);
        let pod_leaving = pod.as_ref().is_some_and(|p| {
            p.metadata.deletion_timestamp.is_some()
                || p.uid().is_some_and(|u| self.index.is_removing(&u))
        });
        decide(&Facts {
            run,
            pod: pod.as_deref(),
            pod_leaving,
            known: &known,
            now: k8s_openapi::jiff::Timestamp::now().as_second(),
            timing: self.settings.timing(),
        })
    }

    /// The isolation pods get now (AppArmor depends on what the nodes runner pods may go to
    /// report; a tainted pool of other workloads does not count).
    pub fn isolation(&self) -> Result<Applied, String> {
        let apparmor_on_nodes = self.cfg().apparmor_mode != AppArmorMode::Off && {
            let nodes = self.cluster.nodes.state();
            let mut ours = nodes.iter().filter(|n| self.settings.placement.admits(n));
            let first = ours.next();
            first.is_some_and(|n| reports_apparmor(n)) && ours.all(|n| reports_apparmor(n))
        };
        pod_spec::decide_isolation(self.cfg(), apparmor_on_nodes)
    }

    /// The warm pools as they are now (those the operator cannot run are left out, with a
    /// warning at most once a minute).
    pub fn pools(&self) -> Vec<PoolSpec> {
        let ns = self.settings.sandbox_namespace();
        let mut pools: Vec<PoolSpec> = self
            .cluster
            .pools
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns))
            .filter_map(|p| match PoolSpec::of(p, &self.settings.maxima) {
                Ok(spec) => Some(spec),
                Err(why) => {
                    if self.index.once_a_minute(&format!("pool: {why}")) {
                        tracing::warn!(%why, "a RunnerPool is left out");
                    }
                    None
                }
            })
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }

    /// The pool whose pods fit the run, if the run may use one (pools live in the REST
    /// API's namespace).
    pub fn pool_for(&self, run: &CodeRun, limits: &EffectiveLimits) -> Option<PoolSpec> {
        if run.namespace().as_deref() != Some(self.settings.sandbox_namespace()) {
            return None;
        }
        self.pools()
            .into_iter()
            .find(|p| p.max > 0 && p.serves(run.spec.language, limits))
    }

    /// The run as a candidate for admission.
    pub fn entry(&self, run: &CodeRun) -> Entry {
        let limits = self.limits(run);
        let shape = Shape::of_run(run.spec.language, &limits);
        Entry {
            key: ObjectRef::from_obj(run),
            uid: run.uid().unwrap_or_default(),
            tenant: self.tenant(run),
            demand: Demand {
                cpu_millicores: shape.cpu_request_millicores(),
                memory_bytes: shape.memory_bytes(),
            },
            pool: self.pool_for(run, &limits).map(|p| p.name),
            created: run
                .creation_timestamp()
                .map(|t| t.0.as_second())
                .unwrap_or_default(),
            revision: run
                .resource_version()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
        }
    }

    /// The room the cluster has now, less what admitted runs will take.
    pub fn room(&self) -> Room {
        let nodes = self.cluster.nodes.state();
        let reserved = self.index.reservations();
        Room::of_ledger(
            nodes.iter().map(|n| n.as_ref()),
            &self.cluster.ledger(),
            reserved,
            &self.settings.placement,
        )
    }

    /// Admits what the room allows and wakes the admitted runs.
    pub fn pump(&self) {
        let mut free_warm = crate::pool::free_counts(self);
        let mut room = self.room();
        let (admitted, waiting, seated) = self.index.admit(&mut room, &mut free_warm);
        self.metrics.queue_waiting.set(waiting as i64);
        self.metrics.runs_holding.set(seated as i64);
        for entry in admitted {
            self.wake(entry.key);
        }
    }

    /// The run was ended here: its room goes to the next in line, and until the cache shows
    /// its final status it is not taken for unfinished.
    pub fn ended(&self, run_uid: &str) {
        self.index.ended(run_uid);
        self.pump();
    }

    /// The run is finished in the cache (or gone): nothing of it is kept, and its room goes
    /// to the next in line.
    pub fn forget(&self, run_uid: &str) {
        self.index.forget(run_uid);
        self.pump();
    }

    /// The deny-all policy must select runner pods before any exists in the namespace: it
    /// is applied when the namespace is new to this process and checked again now and then
    /// (a namespace may have been recreated, or the policy deleted).
    pub async fn ensure_deny_all(&self, ns: &str) -> Result<(), Error> {
        if !self.index.policy_due(ns) {
            return Ok(());
        }
        kube_io::apply_deny_all(&self.api.run, ns).await?;
        self.index.policy_checked(ns);
        Ok(())
    }

    /// Runner pods and what they serve: which run, or which container, a pod change
    /// concerns (and is woken for).
    pub fn note_pod(&self, pod: &Pod, deleted: bool) {
        {
            let mut ledger = self.cluster.ledger();
            match deleted {
                true => ledger.delete(pod),
                false => ledger.apply(pod),
            }
        }
        self.note_runner_pod(pod, deleted);
    }

    /// A pod of a relist of the watch (see [`crate::ledger::Ledger::relisted`]).
    pub fn note_relisted_pod(&self, pod: &Pod) {
        self.cluster.ledger().relisted(pod);
        self.note_runner_pod(pod, false);
    }

    fn note_runner_pod(&self, pod: &Pod, deleted: bool) {
        if pod.labels().get(RUNNER_LABEL).map(String::as_str) != Some("true") {
            return;
        }
        let Some(owner) = pod.owner_references().iter().find(|o| {
            o.controller == Some(true) && (o.kind == "CodeRun" || o.kind == "CodeContainer")
        }) else {
            return;
        };
        if owner.kind == "CodeRun" {
            self.index.pod_seen(&owner.uid, &pod.name_any(), deleted);
        } else {
            self.index
                .container_pod_seen(&owner.uid, &pod.name_any(), deleted);
        }
        let Some(ns) = pod.namespace() else {
            return;
        };
        if owner.kind == "CodeRun" {
            self.wake(ObjectRef::new(&owner.name).within(&ns));
        } else {
            self.wake_container(ObjectRef::new(&owner.name).within(&ns));
        }
    }

    /// Whether the pod was a pool pod (claimed or not): how a run that claimed it started.
    pub fn is_pool_pod(pod: &Pod) -> bool {
        pod.labels().contains_key(POOL_LABEL)
    }
}

fn reports_apparmor(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.message.as_deref())
        .is_some_and(|m| m.contains("AppArmor enabled"))
}

/// How long to wait before looking at a run again when a step has nothing more to do.
pub const RECHECK: Duration = Duration::from_secs(300);
