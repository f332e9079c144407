//! What every step shares: clients, settings, the watched cluster, the admission queue, and
//! the runs whose records are being read.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codeinterp_crds::{Applied, CodeRun, EffectiveLimits, Maxima, RUN_UID_LABEL};
use codeinterp_store::Store;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::{Api, Client, Resource, ResourceExt};

use crate::Error;
use crate::admission::{Entry, Queue, Room};
use crate::config::{AppArmorMode, Config, PoolSpec};
use crate::metrics::Metrics;
use crate::pod_spec::{self, Shape};
use crate::status::MANAGER;

pub struct Context {
    /// For what a run needs on its way to its answer.
    pub client: Client,
    /// For removing what finished runs leave (their pods, expired runs).
    pub tidy_client: Client,
    /// For creating and removing warm pool pods (claims go through `client`).
    pub pool_client: Client,
    pub cfg: Config,
    pub maxima: Maxima,
    pub pools: Vec<PoolSpec>,
    pub store: Store,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Every pod of the cluster (the requests of all, the whole spec of runner pods).
    pub pods: Cache<Pod>,
    pub nodes: Cache<Node>,
    /// The CodeRuns this operator serves (the controller's cache).
    pub runs: Cache<CodeRun>,
    pub queue: Mutex<Queue>,
    /// Runs whose record a session of this process is reading, by UID.
    pub sessions: Mutex<HashSet<String>>,
    /// Pods this process created for a run and has not handed a job yet: no need to look in
    /// their log for one.
    pub fresh_pods: Mutex<HashSet<String>>,
    /// Wakes a run's reconcile (admission, a session ending).
    pub wake: UnboundedSender<ObjectRef<CodeRun>>,
    /// Namespaces whose deny-all policy was checked lately.
    pub policies: Recent,
    /// Runs this process finished, by UID: until the cache shows their final status, a
    /// reconcile must not take them for unfinished (and read them again).
    pub finished: Recent,
    /// Pods this process asked the API to delete, by UID: every change of a terminating pod
    /// wakes its run's reconcile, which must not ask again.
    pub removing: Recent,
    /// Runs this process created a pod for, by UID: until the pod shows in the cache (which
    /// then wakes the run), a reconcile must not take it for podless and create again.
    pub created: Recent,
    /// When a run last started: pod churn waits for a pause in starts.
    pub starts: Starts,
    /// Attach sessions held open to idle pool pods.
    pub held: crate::held::Held,
    /// This process, as it holds the lease (and marks the pool pods it holds).
    pub identity: String,
}

/// How long starts must pause before pods are created for the pools or removed after runs.
const CHURN_QUIET: Duration = Duration::from_millis(300);
/// The longest churn waits for such a pause (under a steady stream of runs).
const CHURN_MAX_WAIT: Duration = Duration::from_secs(2);

/// When runs start. Creating and tearing down pods costs the node far more CPU than a warm
/// run does; done in the middle of a burst it slows every run of the burst. Pool refills
/// and the removal of finished pods therefore wait until runs stop starting for a moment
/// (at most [`CHURN_MAX_WAIT`]).
#[derive(Clone)]
pub struct Starts(Arc<Mutex<Instant>>);

impl Default for Starts {
    fn default() -> Self {
        Starts(Arc::new(Mutex::new(Instant::now() - CHURN_QUIET)))
    }
}

impl Starts {
    pub fn mark(&self) {
        *self.0.lock().expect("lock") = Instant::now();
    }

    /// Returns once starts have paused for [`CHURN_QUIET`], or after [`CHURN_MAX_WAIT`].
    pub async fn pause(&self) {
        let began = Instant::now();
        loop {
            let since = self.0.lock().expect("lock").elapsed();
            if since >= CHURN_QUIET || began.elapsed() >= CHURN_MAX_WAIT {
                return;
            }
            tokio::time::sleep((CHURN_QUIET - since).min(CHURN_MAX_WAIT)).await;
        }
    }
}

/// How long after a run's steps their events are recorded: a short run is answered before
/// any of its events is written, so they add no API load to its critical path (a long run's
/// events still show within a second).
pub const EVENT_DELAY: Duration = Duration::from_secs(1);

/// How long a run finished or a pod removed here is remembered (the cache catches up long
/// before).
pub const FINISHED_MEMORY: Duration = Duration::from_secs(120);

/// How long a pod created here may take to show in the cache before the run is looked at as
/// if it had none.
pub const CREATED_MEMORY: Duration = Duration::from_secs(10);

/// How long a namespace's deny-all policy is trusted to be in place before it is checked
/// again (it is also checked whenever the namespace is new to this process).
pub const POLICY_RECHECK: Duration = Duration::from_secs(60);

/// Keys this process acted on a moment ago, each remembered for a while: the caches lag
/// behind the process's own writes, and a reconcile must not act again on the stale view.
pub struct Recent {
    memory: Duration,
    at: Mutex<HashMap<String, Instant>>,
}

impl Recent {
    pub fn new(memory: Duration) -> Self {
        Recent {
            memory,
            at: Mutex::new(HashMap::new()),
        }
    }

    /// Notes `key` now; false if it was noted already within the memory.
    pub fn note(&self, key: &str) -> bool {
        let mut at = self.at.lock().expect("lock");
        at.retain(|_, t| t.elapsed() < self.memory);
        at.insert(key.to_string(), Instant::now()).is_none()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.at
            .lock()
            .expect("lock")
            .get(key)
            .is_some_and(|t| t.elapsed() < self.memory)
    }
}

impl Context {
    pub fn limits(&self, run: &CodeRun) -> EffectiveLimits {
        run.spec.limits.clamp(&self.maxima)
    }

    pub fn tenant(&self, run: &CodeRun) -> String {
        run.tenant_in(&self.cfg.sandbox_namespace)
    }

    /// Whether the run may use its tenant's uploaded files: only a run the REST API created
    /// (in its namespace, with a tenant label only it may set).
    pub fn is_rest_run(&self, run: &CodeRun) -> bool {
        run.namespace().as_deref() == Some(self.cfg.sandbox_namespace.as_str())
            && run
                .tenant_label()
                .is_some_and(codeinterp_crds::is_api_tenant)
    }

    pub fn runs_api(&self, ns: &str) -> Api<CodeRun> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn pods_api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn tidy_pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.tidy_client.clone(), ns)
    }

    pub fn tidy_runs(&self, ns: &str) -> Api<CodeRun> {
        Api::namespaced(self.tidy_client.clone(), ns)
    }

    pub fn pool_pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.pool_client.clone(), ns)
    }

    pub fn is_reading(&self, uid: &str) -> bool {
        self.sessions.lock().expect("lock").contains(uid)
    }

    /// Whether the pod's removal is asked for now: not when it is already terminating, nor
    /// when this process asked a moment ago (the cache may not show it yet).
    pub fn should_remove(&self, pod: &Pod) -> bool {
        if pod.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let Some(uid) = pod.uid() else {
            return true;
        };
        self.removing.note(&uid)
    }

    /// The run's pod, if it has one: only a pod whose controller is the run counts. Found
    /// by the name in its status, by its own name (a pod made for it), or by the UID label
    /// (a pool pod it claimed before its status said so).
    pub fn find_pod(&self, run: &CodeRun) -> Option<Pod> {
        let uid = run.uid()?;
        let ns = run.namespace()?;
        let named = |name: &str| {
            self.pods
                .get(&ObjectRef::new(name).within(&ns))
                .filter(|p| pod_spec::owned_by(p, &uid))
        };
        if let Some(name) = run.status.as_ref().and_then(|s| s.pod_name.as_deref())
            && let Some(pod) = named(name)
        {
            return Some((*pod).clone());
        }
        if let Some(pod) = named(&run.name_any()) {
            return Some((*pod).clone());
        }
        self.pods
            .find(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.labels().get(RUN_UID_LABEL) == Some(&uid)
                    && pod_spec::owned_by(p, &uid)
            })
            .map(|p| (*p).clone())
    }

    /// The isolation pods get now (AppArmor depends on what the nodes report).
    pub fn isolation(&self) -> Result<Applied, String> {
        let apparmor_on_nodes = self.cfg.apparmor_mode != AppArmorMode::Off && {
            let nodes = self.nodes.state();
            !nodes.is_empty()
                && nodes.iter().all(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                        .and_then(|c| c.message.as_deref())
                        .is_some_and(|m| m.contains("AppArmor enabled"))
                })
        };
        pod_spec::decide_isolation(&self.cfg, apparmor_on_nodes)
    }

    /// The pool whose pods fit the run, if the run may use one (pools live in the REST
    /// API's namespace).
    pub fn pool_for(&self, run: &CodeRun, limits: &EffectiveLimits) -> Option<&PoolSpec> {
        if run.namespace().as_deref() != Some(self.cfg.sandbox_namespace.as_str()) {
            return None;
        }
        self.pools
            .iter()
            .find(|p| p.size > 0 && p.serves(run.spec.language, limits))
    }

    /// The run as a candidate for admission.
    pub fn entry(&self, run: &CodeRun) -> Entry {
        let limits = self.limits(run);
        let shape = Shape::of_run(run.spec.language, &limits);
        Entry {
            key: ObjectRef::from_obj(run),
            uid: run.uid().unwrap_or_default(),
            tenant: self.tenant(run),
            demand: crate::admission::Demand {
                cpu_millicores: shape.cpu_request_millicores(),
                memory_bytes: shape.memory_bytes(),
            },
            pool: self.pool_for(run, &limits).map(PoolSpec::name),
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
    pub fn room(&self, queue: &mut Queue) -> Room {
        let pods = self.pods.state();
        for pod in pods.iter() {
            if let Some(uid) = pod.labels().get(RUN_UID_LABEL) {
                queue.pod_seen(uid);
            }
        }
        let nodes = self.nodes.state();
        Room::of_cluster(
            nodes.iter().map(|n| n.as_ref()),
            pods.iter().map(|p| p.as_ref()),
            queue.reservations().collect::<Vec<_>>(),
        )
    }

    /// Admits what the room allows and wakes the admitted runs.
    pub fn pump(&self) {
        let mut free_warm = crate::pool::free_counts(self);
        let admitted = {
            let mut queue = self.queue.lock().expect("lock");
            let mut room = self.room(&mut queue);
            let admitted = queue.pump(&mut room, &mut free_warm);
            self.metrics.queue_waiting.set(queue.waiting() as i64);
            self.metrics.runs_holding.set(queue.holding() as i64);
            admitted
        };
        for entry in admitted {
            let _ = self.wake.unbounded_send(entry.key);
        }
    }

    /// The run is over (or gone): its room goes to the next in line.
    pub fn release(&self, uid: &str) {
        self.queue.lock().expect("lock").release(uid);
        self.pump();
    }

    /// The deny-all policy must select runner pods before any exists in the namespace: it
    /// is applied when the namespace is new to this process and checked again now and then
    /// (a namespace may have been recreated, or the policy deleted).
    pub async fn ensure_deny_all(&self, ns: &str) -> Result<(), Error> {
        if self.policies.contains(ns) {
            return Ok(());
        }
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), ns);
        let want = pod_spec::deny_all_policy(ns);
        let have = api.get_opt(pod_spec::DENY_ALL_POLICY).await?;
        if !have.is_some_and(|p| p.spec == want.spec) {
            api.patch(
                pod_spec::DENY_ALL_POLICY,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&want),
            )
            .await?;
        }
        self.policies.note(ns);
        Ok(())
    }

    /// Records an event on the run, off the run's critical path: [`EVENT_DELAY`] later.
    pub fn publish(
        &self,
        run: &CodeRun,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let reference = run.object_ref(&());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            tokio::time::sleep(EVENT_DELAY).await;
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish an event");
            }
        });
    }
}

/// Registers a session for the run; false if one is already reading it.
pub fn claim_session(ctx: &Arc<Context>, uid: &str) -> bool {
    ctx.sessions.lock().expect("lock").insert(uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keys_are_noted_once_and_forgotten_after_their_memory() {
        let recent = Recent::new(Duration::from_millis(100));
        assert!(!recent.contains("a"));
        assert!(recent.note("a"), "new");
        assert!(!recent.note("a"), "noted a moment ago");
        assert!(recent.contains("a") && !recent.contains("b"));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!recent.contains("a"));
        assert!(recent.note("a"), "forgotten, so new again");
    }

    #[tokio::test]
    async fn churn_waits_for_a_pause_in_starts_but_never_long() {
        let starts = Starts::default();
        let t = Instant::now();
        starts.pause().await;
        assert!(t.elapsed() < Duration::from_millis(50), "no start: no wait");

        starts.mark();
        let t = Instant::now();
        starts.pause().await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
        assert!(waited < Duration::from_millis(800), "{waited:?}");

        // Starts every 100 ms: the pause never comes; the wait ends at the cap.
        let marking = starts.clone();
        let ticker = tokio::spawn(async move {
            loop {
                marking.mark();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        starts.mark();
        let t = Instant::now();
        starts.pause().await;
        ticker.abort();
        let waited = t.elapsed();
        assert!(waited >= CHURN_MAX_WAIT, "{waited:?}");
        assert!(
            waited < CHURN_MAX_WAIT + Duration::from_millis(500),
            "{waited:?}"
        );
    }
}
