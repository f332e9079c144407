//! What this process knows that the caches do not show yet, behind one lock: for each run
//! (by UID) whether this process has placed a pod for it, is reading its record, or has ended
//! it; which pod each run owns; the admission queue; the attach sessions held open to idle
//! pool pods; the pods it asked to remove; the namespaces whose deny-all policy it checked.
//!
//! Invariants:
//! - A run has at most one [`Work`]; [`Index::begin_reading`] is the only way into
//!   `Reading`, so two tasks never read one run.
//! - "Does this run have a pod?" is answered here: [`Index::pod_of`] knows the pods the
//!   watch showed owned by a run and the pods this process created before the watch shows
//!   them. The pod object itself always comes from the cache.
//! - An attach session to a pool pod is in at most one place: its slot here, or the run that
//!   claimed it. A claim in flight holds the slot as `Claiming`, so the pool never opens a
//!   second session to the pod and no other run takes it.
//! - Nothing here is awaited under the lock: every method is synchronous.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use kube::runtime::reflector::ObjectRef;
use tokio::time::{Duration, Instant};

use crate::admission::{Entry, Queue, Room};
use crate::streams::Attached;
use codeinterp_crds::CodeRun;

/// How long a run ended or a pod removed here is remembered (the cache catches up long
/// before).
pub const ENDED_MEMORY: Duration = Duration::from_secs(120);
/// How long a pod created here may take to show in the cache before the run is looked at as
/// if it had none.
pub const PLACED_MEMORY: Duration = Duration::from_secs(10);
/// How long a namespace's deny-all policy is trusted to be in place before it is checked
/// again.
pub const POLICY_RECHECK: Duration = Duration::from_secs(60);

/// What this process is doing for a run.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Work {
    /// It created or claimed `pod` for the run and has not begun handing it the job: the job
    /// is this process's to give, so there is no log to look into first.
    Placed { pod: String, at: Instant },
    /// A task of this process hands the job over or reads the record.
    Reading { pod: String },
    /// It ended the run; the cache may not show the final status yet.
    Ended { at: Instant },
}

/// What the run's next step is chosen from: this process's part of the facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    Nothing,
    /// This process placed `pod` for the run and has not handed it the job. `lagging`: so
    /// recently that the cache may not show the pod yet.
    Placed {
        pod: String,
        lagging: bool,
    },
    Reading,
    Ended,
}

/// A pool pod's attach session, held open so a claimed pod gets its job at once.
pub enum Slot {
    Opening,
    Open(Attached),
    /// Taken by a claim in flight: offered to no other run, and no second session is opened.
    Claiming,
}

/// What this process does for a container: whether a task serves it (holds its line), the
/// run it is running, an interrupt asked for, and how to wake the task.
#[derive(Default)]
struct ContainerWork {
    serving: bool,
    /// The name of its pod, as far as this process knows (from the watch, or created here).
    pod: Option<String>,
    busy: Option<String>,
    interrupt: Option<String>,
    wake: Arc<Notify>,
}

/// What a pool has seen lately: runs asking it for a pod, how long its pods took to be
/// ready, and since when it has had more idle pods than it needs.
#[derive(Default)]
struct PoolDemand {
    arrivals: std::collections::VecDeque<Instant>,
    hits: u64,
    misses: u64,
    ready_secs: Option<f64>,
    above_since: Option<Instant>,
}

/// A pool's demand as sizing reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// Runs a second lately (0 when none came within [`ARRIVAL_WINDOW`]).
    pub rate_per_sec: f64,
    /// Seconds a new pod takes to be ready, as lately measured.
    pub ready_secs: Option<f64>,
    pub hits: u64,
    pub misses: u64,
}

/// Arrivals further back than this say nothing about the rate now.
pub const ARRIVAL_WINDOW: Duration = Duration::from_secs(60);
/// The rate is read from at most this many of the latest arrivals.
const ARRIVALS_KEPT: usize = 20;

#[derive(Default)]
struct State {
    work: HashMap<String, Work>,
    /// Run UID -> the name of the pod it owns (from the watch, or created here).
    pods: HashMap<String, String>,
    queue: Option<Queue>,
    /// Pool pod UID -> its held session.
    slots: HashMap<String, Slot>,
    /// Pool name -> pods created for it that the cache may not show yet.
    pool_created: HashMap<String, Vec<(String, Instant)>>,
    /// Pool name -> what it has seen lately.
    demand: HashMap<String, PoolDemand>,
    /// Container UID -> what this process does for it.
    containers: HashMap<String, ContainerWork>,
    /// Pod UIDs this process asked the API to delete.
    removing: HashMap<String, Instant>,
    /// Namespaces whose deny-all policy was checked, and when.
    policies: HashMap<String, Instant>,
}

pub struct Index(Mutex<State>);

impl Index {
    pub fn new(queue: Queue) -> Self {
        Index(Mutex::new(State {
            queue: Some(queue),
            ..Default::default()
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // --- runs -------------------------------------------------------------------------

    /// This process's part of what is known about the run.
    pub fn known(&self, run_uid: &str) -> Known {
        match self.lock().work.get(run_uid) {
            None => Known::Nothing,
            Some(Work::Placed { pod, at }) => Known::Placed {
                pod: pod.clone(),
                lagging: at.elapsed() < PLACED_MEMORY,
            },
            Some(Work::Reading { .. }) => Known::Reading,
            Some(Work::Ended { at }) if at.elapsed() < ENDED_MEMORY => Known::Ended,
            Some(Work::Ended { .. }) => Known::Nothing,
        }
    }

    /// A pod was created or claimed for the run: its job is this process's to give.
    pub fn placed(&self, run_uid: &str, pod: &str) {
        let mut s = self.lock();
        s.pods.insert(run_uid.to_string(), pod.to_string());
        s.work.insert(
            run_uid.to_string(),
            Work::Placed {
                pod: pod.to_string(),
                at: Instant::now(),
            },
        );
    }

    /// Marks the run as being read; false if a task reads it already (or it has ended).
    pub fn begin_reading(&self, run_uid: &str, pod: &str) -> bool {
        let mut s = self.lock();
        match s.work.get(run_uid) {
            Some(Work::Reading { .. }) => false,
            Some(Work::Ended { at }) if at.elapsed() < ENDED_MEMORY => false,
            _ => {
                s.work.insert(
                    run_uid.to_string(),
                    Work::Reading {
                        pod: pod.to_string(),
                    },
                );
                true
            }
        }
    }

    /// The reading task is over without ending the run (it will be resumed from the pod's
    /// log, or the run was given back to the queue for a new pod).
    pub fn end_reading(&self, run_uid: &str) {
        let mut s = self.lock();
        if matches!(s.work.get(run_uid), Some(Work::Reading { .. })) {
            s.work.remove(run_uid);
        }
    }

    /// The run was ended here: its room is released (see [`Index::release`]) and a
    /// reconcile must not take it for unfinished until the cache shows it.
    pub fn ended(&self, run_uid: &str) {
        let mut s = self.lock();
        s.work
            .insert(run_uid.to_string(), Work::Ended { at: Instant::now() });
        if let Some(q) = s.queue.as_mut() {
            q.release(run_uid);
        }
    }

    /// The run is finished in the cache, or gone: nothing about it is needed any more.
    pub fn forget(&self, run_uid: &str) {
        let mut s = self.lock();
        s.work.remove(run_uid);
        s.pods.remove(run_uid);
        if let Some(q) = s.queue.as_mut() {
            q.release(run_uid);
        }
    }

    /// Keeps only what concerns runs that still exist.
    pub fn retain_runs(&self, exists: impl Fn(&str) -> bool) {
        let mut s = self.lock();
        s.work.retain(|uid, _| exists(uid));
        s.pods.retain(|uid, _| exists(uid));
        if let Some(q) = s.queue.as_mut() {
            q.retain(&exists);
        }
        let now = Instant::now();
        s.removing.retain(|_, at| now - *at < ENDED_MEMORY);
    }

    /// How many runs this process has work for (a measure of what it holds in memory).
    pub fn runs_tracked(&self) -> usize {
        self.lock().work.len()
    }

    // --- pods ---------------------------------------------------------------------------

    /// The name of the pod the run owns, as far as this process knows.
    pub fn pod_of(&self, run_uid: &str) -> Option<String> {
        self.lock().pods.get(run_uid).cloned()
    }

    /// The watch showed a pod whose controller is the run (or its deletion).
    pub fn pod_seen(&self, run_uid: &str, pod: &str, deleted: bool) {
        let mut s = self.lock();
        if deleted {
            if s.pods.get(run_uid).is_some_and(|p| p == pod) {
                s.pods.remove(run_uid);
            }
            return;
        }
        s.pods.insert(run_uid.to_string(), pod.to_string());
        if let Some(q) = s.queue.as_mut() {
            q.pod_seen(run_uid);
        }
    }

    /// Notes that this process asked for the pod's removal; false if it did a moment ago.
    pub fn removing(&self, pod_uid: &str) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        match s.removing.get(pod_uid) {
            Some(at) if now - *at < ENDED_MEMORY => false,
            _ => {
                s.removing.insert(pod_uid.to_string(), now);
                true
            }
        }
    }

    /// Whether this process asked for the pod's removal lately.
    pub fn is_removing(&self, pod_uid: &str) -> bool {
        self.lock()
            .removing
            .get(pod_uid)
            .is_some_and(|at| at.elapsed() < ENDED_MEMORY)
    }

    /// Whether `key` was not noted within [`POLICY_RECHECK`]; notes it now if so (a warning
    /// said at most once a minute).
    pub fn once_a_minute(&self, key: &str) -> bool {
        let due = self.policy_due(key);
        if due {
            self.policy_checked(key);
        }
        due
    }

    /// Whether the namespace's deny-all policy needs checking.
    pub fn policy_due(&self, namespace: &str) -> bool {
        let s = self.lock();
        s.policies
            .get(namespace)
            .is_none_or(|at| at.elapsed() >= POLICY_RECHECK)
    }

    pub fn policy_checked(&self, namespace: &str) {
        self.lock()
            .policies
            .insert(namespace.to_string(), Instant::now());
    }

    // --- admission ----------------------------------------------------------------------

    /// A run asks for room.
    pub fn request(&self, entry: Entry) -> crate::admission::Decision {
        self.with_queue(|q| q.request(entry))
    }

    /// A run found holding a pod at start-up counts against its tenant's caps.
    pub fn seat(&self, run_uid: &str, tenant: &str) {
        self.with_queue(|q| q.seat(run_uid, tenant));
    }

    /// Admits what `room` and the free warm pods allow. Returns the admitted runs (to wake)
    /// and the queue's figures (waiting, seated).
    pub fn admit(
        &self,
        room: &mut Room,
        free_warm: &mut HashMap<String, usize>,
    ) -> (Vec<Entry>, usize, usize) {
        self.with_queue(|q| {
            let admitted = q.pump(room, free_warm);
            (admitted, q.waiting(), q.seated())
        })
    }

    pub fn waiting(&self) -> usize {
        self.with_queue(|q| q.waiting())
    }

    /// Demands of admitted runs whose pods the cache does not show yet.
    pub fn reservations(&self) -> Vec<crate::admission::Demand> {
        self.with_queue(|q| q.reservations().collect())
    }

    /// The run's place in line, if it waits.
    pub fn place_in_line(&self, run_uid: &str) -> Option<u32> {
        self.with_queue(|q| q.place_in_line(run_uid))
    }

    /// Whether the run waits at the head of its tenant's line.
    pub fn heads_its_line(&self, run_uid: &str) -> bool {
        self.with_queue(|q| q.heads_its_line(run_uid))
    }

    /// The place last written to the waiting run's status by this process.
    pub fn shown(&self, run_uid: &str) -> Option<u32> {
        self.with_queue(|q| q.shown(run_uid))
    }

    pub fn set_shown(&self, run_uid: &str, position: u32) {
        self.with_queue(|q| q.set_shown(run_uid, position));
    }

    /// The places in line to write again (see [`Queue::places_to_refresh`]).
    pub fn places_to_refresh(
        &self,
        most: usize,
        in_status: impl Fn(&ObjectRef<CodeRun>) -> Option<u32>,
    ) -> Vec<(ObjectRef<CodeRun>, String, u32)> {
        self.with_queue(|q| q.places_to_refresh(most, in_status))
    }

    fn with_queue<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        f(self
            .lock()
            .queue
            .as_mut()
            .expect("the queue is always there"))
    }

    // --- containers -----------------------------------------------------------------------

    /// Marks the container as served by a task; false if one serves it already.
    pub fn begin_serving(&self, container: &str) -> bool {
        let mut s = self.lock();
        let work = s.containers.entry(container.to_string()).or_default();
        !std::mem::replace(&mut work.serving, true)
    }

    /// The container's task is over.
    pub fn end_serving(&self, container: &str) {
        let mut s = self.lock();
        if let Some(work) = s.containers.get_mut(container) {
            work.serving = false;
            work.busy = None;
        }
    }

    pub fn is_serving(&self, container: &str) -> bool {
        self.lock()
            .containers
            .get(container)
            .is_some_and(|w| w.serving)
    }

    /// What wakes the container's task (a run for it, a change of its file operations, an
    /// interrupt).
    pub fn container_wake(&self, container: &str) -> Arc<Notify> {
        let mut s = self.lock();
        s.containers
            .entry(container.to_string())
            .or_default()
            .wake
            .clone()
    }

    /// The watch showed a pod whose controller is the container (or its deletion).
    pub fn container_pod_seen(&self, container: &str, pod: &str, deleted: bool) {
        let mut s = self.lock();
        let work = s.containers.entry(container.to_string()).or_default();
        if !deleted {
            work.pod = Some(pod.to_string());
        } else if work.pod.as_deref() == Some(pod) {
            work.pod = None;
        }
    }

    /// Whether the pod is a container's, as far as this process knows: a pool pod a
    /// container just claimed is, before the watch shows the claim.
    pub fn is_a_containers_pod(&self, pod: &str) -> bool {
        self.lock()
            .containers
            .values()
            .any(|w| w.pod.as_deref() == Some(pod))
    }

    /// The name of the container's pod, as far as this process knows.
    pub fn container_pod(&self, container: &str) -> Option<String> {
        self.lock()
            .containers
            .get(container)
            .and_then(|w| w.pod.clone())
    }

    /// The run the container runs now, if any.
    pub fn container_busy(&self, container: &str, run: Option<&str>) {
        let mut s = self.lock();
        s.containers.entry(container.to_string()).or_default().busy = run.map(str::to_string);
    }

    pub fn busy_with(&self, container: &str) -> Option<String> {
        self.lock()
            .containers
            .get(container)
            .and_then(|w| w.busy.clone())
    }

    /// Asks the container's task to interrupt the run (if it is the one running).
    pub fn interrupt(&self, container: &str, run: &str) {
        let wake = {
            let mut s = self.lock();
            let work = s.containers.entry(container.to_string()).or_default();
            work.interrupt = Some(run.to_string());
            work.wake.clone()
        };
        wake.notify_one();
    }

    /// The interrupt asked for the run, if one was (taken: asked once).
    pub fn take_interrupt(&self, container: &str, run: &str) -> bool {
        let mut s = self.lock();
        let Some(work) = s.containers.get_mut(container) else {
            return false;
        };
        if work.interrupt.as_deref() == Some(run) {
            work.interrupt = None;
            return true;
        }
        false
    }

    /// Forgets what concerned containers that no longer exist.
    pub fn retain_containers(&self, exists: impl Fn(&str) -> bool) {
        self.lock()
            .containers
            .retain(|uid, work| work.serving || exists(uid));
    }

    // --- pools --------------------------------------------------------------------------

    /// Pool pods among `idle` (UIDs) with no session yet get `Opening` slots; returns them.
    pub fn slots_to_open(&self, idle: &[(String, String)]) -> Vec<(String, String)> {
        let mut s = self.lock();
        idle.iter()
            .filter(|(uid, _)| !s.slots.contains_key(uid))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .inspect(|(uid, _)| {
                s.slots.insert(uid.clone(), Slot::Opening);
            })
            .collect()
    }

    /// An opening finished: the session is kept if its pod is still wanted.
    pub fn slot_opened(&self, pod_uid: &str, session: Option<Attached>) {
        let mut s = self.lock();
        match session {
            Some(session) if s.slots.contains_key(pod_uid) => {
                s.slots.insert(pod_uid.to_string(), Slot::Open(session));
            }
            Some(_) => {}
            None => {
                s.slots.remove(pod_uid);
            }
        }
    }

    pub fn slot_is_open(&self, pod_uid: &str) -> bool {
        matches!(self.lock().slots.get(pod_uid), Some(Slot::Open(_)))
    }

    /// Takes the pod's open session for a claim; nobody else will get it.
    pub fn take_slot(&self, pod_uid: &str) -> Option<Attached> {
        let mut s = self.lock();
        let slot = s.slots.get_mut(pod_uid)?;
        match std::mem::replace(slot, Slot::Claiming) {
            Slot::Open(session) => Some(session),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Gives back a session taken for a claim that failed.
    pub fn put_back_slot(&self, pod_uid: &str, session: Attached) {
        self.lock()
            .slots
            .insert(pod_uid.to_string(), Slot::Open(session));
    }

    /// Closes the sessions of pods no longer idle in a pool (their pods end with them).
    pub fn retain_slots(&self, idle: &HashSet<String>) {
        self.lock().slots.retain(|uid, _| idle.contains(uid));
    }

    /// A run asked the pool for a pod: it got one (`hit`) or started cold.
    pub fn pool_arrival(&self, pool: &str, hit: bool) {
        let mut s = self.lock();
        let d = s.demand.entry(pool.to_string()).or_default();
        d.arrivals.push_back(Instant::now());
        while d.arrivals.len() > ARRIVALS_KEPT {
            d.arrivals.pop_front();
        }
        if hit {
            d.hits += 1;
        } else {
            d.misses += 1;
        }
    }

    /// A pod of the pool became ready this long after it was made.
    pub fn pool_ready(&self, pool: &str, secs: f64) {
        let mut s = self.lock();
        let d = s.demand.entry(pool.to_string()).or_default();
        // A moving average: recent pods count most, one slow start does not swing it.
        d.ready_secs = Some(d.ready_secs.map_or(secs, |r| 0.7 * r + 0.3 * secs));
    }

    pub fn pool_demand(&self, pool: &str) -> Demand {
        let s = self.lock();
        let Some(d) = s.demand.get(pool) else {
            return Demand::default();
        };
        let recent: Vec<Instant> = d
            .arrivals
            .iter()
            .copied()
            .filter(|t| t.elapsed() < ARRIVAL_WINDOW)
            .collect();
        // n arrivals over the span from the first to now: a burst that just began reads as
        // its own rate at once; one that stopped fades as now moves on.
        let rate_per_sec = match (recent.first(), recent.len()) {
            (Some(first), n) if n >= 2 => n as f64 / first.elapsed().as_secs_f64().max(1.0),
            _ => 0.0,
        };
        Demand {
            rate_per_sec,
            ready_secs: d.ready_secs,
            hits: d.hits,
            misses: d.misses,
        }
    }

    /// Notes whether the pool has more idle pods than it needs; returns since when it has
    /// had (without a break).
    pub fn pool_above_target(&self, pool: &str, above: bool) -> Option<Instant> {
        let mut s = self.lock();
        let d = s.demand.entry(pool.to_string()).or_default();
        d.above_since = match (above, d.above_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
        d.above_since
    }

    /// A pod was created for the pool.
    pub fn pool_created(&self, pool: &str, pod: &str) {
        self.lock()
            .pool_created
            .entry(pool.to_string())
            .or_default()
            .push((pod.to_string(), Instant::now()));
    }

    /// Pods created for the pool that the cache does not show yet (`seen` are the pod names
    /// it shows).
    pub fn pool_pending(&self, pool: &str, seen: &HashSet<String>) -> usize {
        let mut s = self.lock();
        let pending = s.pool_created.entry(pool.to_string()).or_default();
        pending.retain(|(name, at)| !seen.contains(name) && at.elapsed() < PLACED_MEMORY);
        pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Caps;

    fn index() -> Index {
        Index::new(Queue::new(Caps {
            running_per_tenant: 0,
            concurrent: 0,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_placed_pod_lags_for_a_while_then_the_run_looks_podless() {
        let i = index();
        assert_eq!(i.known("r"), Known::Nothing);
        i.placed("r", "p");
        assert_eq!(
            i.known("r"),
            Known::Placed {
                pod: "p".into(),
                lagging: true
            }
        );
        assert_eq!(i.pod_of("r").as_deref(), Some("p"));
        tokio::time::advance(PLACED_MEMORY).await;
        assert_eq!(
            i.known("r"),
            Known::Placed {
                pod: "p".into(),
                lagging: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_task_reads_a_run_and_an_ended_run_is_not_read_again() {
        let i = index();
        assert!(i.begin_reading("r", "p"));
        assert!(!i.begin_reading("r", "p"));
        i.end_reading("r");
        assert_eq!(i.known("r"), Known::Nothing);
        assert!(i.begin_reading("r", "p"));
        i.ended("r");
        assert!(!i.begin_reading("r", "p"));
        assert_eq!(i.known("r"), Known::Ended);
        tokio::time::advance(ENDED_MEMORY).await;
        assert_eq!(i.known("r"), Known::Nothing);
        i.forget("r");
        assert_eq!(i.runs_tracked(), 0);
    }

    #[test]
    fn the_watch_keeps_the_run_to_pod_map_and_a_stale_delete_changes_nothing() {
        let i = index();
        i.pod_seen("r", "p1", false);
        i.pod_seen("r", "p0", true);
        assert_eq!(i.pod_of("r").as_deref(), Some("p1"));
        i.pod_seen("r", "p1", true);
        assert_eq!(i.pod_of("r"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_is_asked_once_within_its_memory() {
        let i = index();
        assert!(i.removing("pod-uid"));
        assert!(!i.removing("pod-uid"));
        assert!(i.is_removing("pod-uid"));
        tokio::time::advance(ENDED_MEMORY).await;
        assert!(!i.is_removing("pod-uid"));
        assert!(i.removing("pod-uid"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pools_rate_follows_a_stream_at_once_and_fades_when_it_stops() {
        let i = index();
        assert_eq!(i.pool_demand("p").rate_per_sec, 0.0);
        for _ in 0..7 {
            i.pool_arrival("p", true);
            tokio::time::advance(Duration::from_millis(333)).await;
        }
        let rate = i.pool_demand("p").rate_per_sec;
        assert!((2.5..=3.5).contains(&rate), "{rate}");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(i.pool_demand("p").rate_per_sec < 0.3);
        tokio::time::advance(ARRIVAL_WINDOW).await;
        assert_eq!(i.pool_demand("p").rate_per_sec, 0.0);
        assert_eq!(i.pool_demand("p").hits, 7);
        i.pool_ready("p", 2.0);
        i.pool_ready("p", 1.0);
        assert_eq!(i.pool_demand("p").ready_secs, Some(1.7));
    }

    #[tokio::test(start_paused = true)]
    async fn pool_pods_created_here_count_until_seen_or_forgotten() {
        let i = index();
        i.pool_created("pool", "a");
        i.pool_created("pool", "b");
        let seen = HashSet::from(["a".to_string()]);
        assert_eq!(i.pool_pending("pool", &seen), 1);
        tokio::time::advance(PLACED_MEMORY).await;
        assert_eq!(i.pool_pending("pool", &HashSet::new()), 0);
    }

    #[test]
    fn a_slot_is_offered_once_and_a_claim_in_flight_gets_no_second_session() {
        let i = index();
        let idle = vec![("u1".to_string(), "pod-1".to_string())];
        assert_eq!(i.slots_to_open(&idle), idle);
        assert!(i.slots_to_open(&idle).is_empty(), "opening already");
        assert!(i.take_slot("u1").is_none(), "not open yet");
        i.slot_opened("u1", Some(Attached::closed()));
        assert!(i.slot_is_open("u1"));
        let session = i.take_slot("u1").expect("open");
        assert!(i.take_slot("u1").is_none(), "claiming");
        assert!(
            i.slots_to_open(&idle).is_empty(),
            "claiming: no second session"
        );
        i.put_back_slot("u1", session);
        assert!(i.slot_is_open("u1"));
        i.retain_slots(&HashSet::new());
        assert!(!i.slot_is_open("u1"));
    }
}
