//! The tenant-labelled CodeRuns and CodeContainers of the sandbox namespace and of this
//! server's shard, kept in memory by kube-runtime reflectors (one [`Cache`] per kind). Reads
//! never call the Kubernetes API; waiting for a run to finish (or a container to take a
//! file) watches the cache's change counter instead of polling. The line's counts per tenant
//! (waiting runs, their bytes) are kept as the watch delivers, not counted per request.
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use codeinterp_crds::{CodeContainer, CodeRun, SHARD_LABEL, TENANT_LABEL};
use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

/// A kind the API server keeps in a [`Cache`], and what of each object it need not keep.
pub trait Cached:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Drops what the REST API never shows.
    fn slim(&mut self);

    /// What the object adds to the line's counts ([`Load`]), if anything.
    fn share(&self) -> Option<Share> {
        None
    }
}

/// The bytes of code, stdin and arguments a cached run held in the cluster, noted on it (in
/// this cache only) before they are dropped.
const SPEC_BYTES: &str = "codeinterp.dev/cached-spec-bytes";

/// The bytes of code, stdin and arguments a run holds in its CodeRun.
pub fn input_bytes(code: &str, stdin: Option<&str>, args: &[String]) -> u64 {
    let args: usize = args.iter().map(String::len).sum();
    (code.len() + stdin.map_or(0, str::len) + args) as u64
}

/// [`input_bytes`] of a run's spec.
pub fn spec_bytes(run: &CodeRun) -> u64 {
    input_bytes(&run.spec.code, run.spec.stdin.as_deref(), &run.spec.args)
}

/// The cache keeps what the REST API shows; the program's source and stdin (up to 512 KiB
/// a run) and the managed fields are dropped, their size kept.
impl Cached for CodeRun {
    fn slim(&mut self) {
        let bytes = spec_bytes(self);
        self.annotations_mut()
            .insert(SPEC_BYTES.into(), bytes.to_string());
        self.spec.code.clear();
        self.spec.stdin = None;
        drop_bookkeeping(self);
    }

    fn share(&self) -> Option<Share> {
        let unfinished = !self.is_finished();
        Some(Share {
            tenant: self.tenant_label()?.to_string(),
            waiting: self
                .phase()
                .is_none_or(|p| p == codeinterp_crds::Phase::Queued),
            live_spec_bytes: if unfinished {
                self.annotations()
                    .get(SPEC_BYTES)
                    .and_then(|b| b.parse::<u64>().ok())
                    .unwrap_or(0)
            } else {
                0
            },
        })
    }
}

/// A container is small; its file operations are kept (the next one's number is counted
/// from them).
impl Cached for CodeContainer {
    fn slim(&mut self) {
        drop_bookkeeping(self);
    }
}

fn drop_bookkeeping<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// The objects of one kind in memory, and a counter that moves whenever they change.
#[derive(Clone)]
pub struct Cache<K: Cached> {
    reader: reflector::Store<K>,
    tally: Arc<Mutex<Tallies>>,
    changes: watch::Receiver<u64>,
    synced: Arc<AtomicBool>,
    namespace: String,
    shard: Option<String>,
}

/// The CodeRuns of the REST API.
pub type RunCache = Cache<CodeRun>;
/// The CodeContainers of the REST API.
pub type ContainerCache = Cache<CodeContainer>;

/// The objects a server of this shard serves: created through the API (they carry a
/// tenant) and labelled with the shard, or with no shard label at all when it has none,
/// the same split as the operator's.
pub fn selector(shard: Option<&str>) -> String {
    match shard {
        Some(shard) => format!("{TENANT_LABEL},{SHARD_LABEL}={shard}"),
        None => format!("{TENANT_LABEL},!{SHARD_LABEL}"),
    }
}

impl<K: Cached> Cache<K> {
    /// The cache of the namespace (the shard's objects in it), and the watch that fills it:
    /// the caller runs that future for as long as it serves. `arrived` is told the name of
    /// each object a watch event delivers, once the cache and its counts have it (objects of
    /// a list join them all at once when it ends; [`Cache::counts`] answers for those).
    pub fn start<F: Fn(&str) + Send + 'static>(
        client: Client,
        namespace: &str,
        shard: Option<&str>,
        arrived: F,
    ) -> (Self, impl Future<Output = ()> + Send + use<K, F>) {
        let (reader, writer) = reflector::store::<K>();
        let (tx, changes) = watch::channel(0u64);
        let synced = Arc::new(AtomicBool::new(false));
        let api: Api<K> = Api::namespaced(client, namespace);
        // A streaming list: what is there arrives one object at a time, each slimmed before
        // the next is read (a paged list holds a page of up to 500 whole objects at once).
        let listing = watcher::Config::default().streaming_lists();
        let stream = watcher(api, listing.labels(&selector(shard)))
            .default_backoff()
            .modify(K::slim)
            .reflect(writer);
        let flag = synced.clone();
        let tally = Arc::new(Mutex::new(Tallies::default()));
        let counting = tally.clone();
        let watching = async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        // The tally follows the store (updated just before, by `reflect`),
                        // then the line hears of a new run: see `runs::joining`.
                        counting.lock().expect("the tally").observe(&event);
                        match event {
                            watcher::Event::InitDone => flag.store(true, Ordering::Release),
                            watcher::Event::Apply(o) => arrived(&o.name_any()),
                            _ => {}
                        }
                    }
                    Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watching"),
                }
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        let cache = Cache {
            reader,
            tally,
            changes,
            synced,
            namespace: namespace.to_string(),
            shard: shard.map(str::to_string),
        };
        (cache, watching)
    }

    /// A cache that is never filled, for tests of the routes that need no cluster.
    pub fn detached(namespace: &str) -> Self {
        let (reader, _writer) = reflector::store::<K>();
        let (_tx, changes) = watch::channel(0u64);
        Cache {
            reader,
            tally: Arc::default(),
            changes,
            synced: Arc::new(AtomicBool::new(false)),
            namespace: namespace.to_string(),
            shard: None,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The shard label new objects get, if any.
    pub fn shard(&self) -> Option<&str> {
        self.shard.as_deref()
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.reader
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Every object in the cache.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.reader.state()
    }

    /// Waits until the object is in the cache (one just created reaches it a moment
    /// later), or the deadline passes.
    pub async fn wait_for_arrival(&self, name: &str, deadline: Instant) -> Option<Arc<K>> {
        self.wait(name, deadline, |object| object.is_some()).await
    }

    /// Waits until `done` holds for the object, or it leaves the cache (it was deleted:
    /// `None`), or the deadline passes (the object as it is then).
    pub async fn wait_until(
        &self,
        name: &str,
        deadline: Instant,
        done: impl Fn(&K) -> bool,
    ) -> Option<Arc<K>> {
        self.wait(name, deadline, |object| object.is_none_or(&done))
            .await
    }

    async fn wait(
        &self,
        name: &str,
        deadline: Instant,
        done: impl Fn(Option<&K>) -> bool,
    ) -> Option<Arc<K>> {
        let mut changes = self.changes.clone();
        loop {
            // Mark the current version seen before looking, so a change between the look
            // and the wait still wakes us.
            changes.borrow_and_update();
            let object = self.get(name);
            if done(object.as_deref()) {
                return object;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // Nothing will change any more.
                        return self.get(name);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return self.get(name),
            }
        }
    }
}

impl Cache<CodeRun> {
    /// A run, only if it carries the tenant's label (the caller checks that the REST API
    /// bound it).
    pub fn get_for(&self, tenant: &str, name: &str) -> Option<Arc<CodeRun>> {
        self.get(name).filter(|r| r.tenant_label() == Some(tenant))
    }

    /// How many runs wait for room (their program has not started), the tenant's and all,
    /// and the bytes of code, stdin and arguments the tenant's unfinished runs hold: kept by
    /// the watch per tenant, so a check costs the same however many runs are cached.
    pub fn load_of(&self, tenant: &str) -> Load {
        self.tally.lock().expect("the tally").now.load_of(tenant)
    }

    /// Whether the counts of [`Cache::load_of`] include the run `name`.
    pub fn counts(&self, name: &str) -> bool {
        self.tally
            .lock()
            .expect("the tally")
            .now
            .shares
            .contains_key(name)
    }
}

/// What one cached run adds to its tenant's [`Load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    tenant: String,
    waiting: bool,
    live_spec_bytes: u64,
}

/// The cache's counts: those of what the store shows (`now`) and, during a relist, those of
/// the list coming in, which replace them when it ends (as the store's contents do).
#[derive(Default)]
struct Tallies {
    now: Tally,
    listing: Option<Tally>,
}

impl Tallies {
    fn observe<K: Cached>(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) => self.now.set(&o.name_any(), o.share()),
            watcher::Event::Delete(o) => self.now.set(&o.name_any(), None),
            watcher::Event::Init => self.listing = Some(Tally::default()),
            watcher::Event::InitApply(o) => {
                if let Some(listing) = &mut self.listing {
                    listing.set(&o.name_any(), o.share());
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.now = listing;
                }
            }
        }
    }
}

/// The shares of the runs by name, and their sums.
#[derive(Default)]
struct Tally {
    shares: HashMap<String, Share>,
    tenants: HashMap<String, Sums>,
    waiting_total: usize,
}

/// One tenant's sums: its runs in the tally (dropped at none), those waiting, their bytes.
#[derive(Clone, Copy, Default)]
struct Sums {
    runs: usize,
    waiting: usize,
    live_spec_bytes: u64,
}

impl Tally {
    /// The run `name` now adds `share` (nothing: it is gone).
    fn set(&mut self, name: &str, share: Option<Share>) {
        if let Some(old) = self.shares.remove(name) {
            self.waiting_total -= usize::from(old.waiting);
            let sums = self.tenants.get_mut(&old.tenant).expect("a counted tenant");
            sums.runs -= 1;
            sums.waiting -= usize::from(old.waiting);
            sums.live_spec_bytes -= old.live_spec_bytes;
            if sums.runs == 0 {
                self.tenants.remove(&old.tenant);
            }
        }
        let Some(share) = share else { return };
        self.waiting_total += usize::from(share.waiting);
        let sums = self.tenants.entry(share.tenant.clone()).or_default();
        sums.runs += 1;
        sums.waiting += usize::from(share.waiting);
        sums.live_spec_bytes += share.live_spec_bytes;
        self.shares.insert(name.to_string(), share);
    }

    fn load_of(&self, tenant: &str) -> Load {
        let sums = self.tenants.get(tenant).copied().unwrap_or_default();
        Load {
            waiting: sums.waiting,
            waiting_total: self.waiting_total,
            live_spec_bytes: sums.live_spec_bytes,
        }
    }
}

/// What [`Cache::load_of`] counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// The tenant's runs waiting for room.
    pub waiting: usize,
    /// Everyone's runs waiting for room.
    pub waiting_total: usize,
    /// Code, stdin and arguments of the tenant's unfinished runs.
    pub live_spec_bytes: u64,
}

impl Cache<CodeContainer> {
    /// A container, only if it is the tenant's: its tenant as the operator reads it (the
    /// label, honoured in the sandbox namespace, the only one this cache watches).
    pub fn get_for(&self, tenant: &str, name: &str) -> Option<Arc<CodeContainer>> {
        self.get(name)
            .filter(|c| c.tenant_in(&self.namespace) == tenant)
    }

    /// The tenant's containers, ended ones included.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<CodeContainer>> {
        self.reader
            .state()
            .into_iter()
            .filter(|c| c.tenant_in(&self.namespace) == tenant)
            .collect()
    }

    /// How many of the tenant's containers are live: not ended, not being deleted.
    pub fn live_for(&self, tenant: &str) -> usize {
        self.of_tenant(tenant)
            .iter()
            .filter(|c| !c.is_ended() && c.metadata.deletion_timestamp.is_none())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeRunSpec, CodeRunStatus, Language, Phase};
    use kube::runtime::reflector::store::Writer;
    use std::time::Duration;

    fn run(name: &str, phase: Option<Phase>) -> CodeRun {
        let mut r = CodeRun::new(
            name,
            CodeRunSpec {
                language: Language::Python,
                code: "print(1)".into(),
                stdin: None,
                args: vec![],
                files: vec![],
                limits: Default::default(),
                ttl_seconds_after_finished: None,
                cancel: None,
                container: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r.metadata.labels = Some([(TENANT_LABEL.to_string(), "acme".to_string())].into());
        r.status = phase.map(|p| CodeRunStatus {
            phase: Some(p),
            ..Default::default()
        });
        r
    }

    /// A cache fed by hand, the way the watcher feeds it.
    fn fed() -> (RunCache, Writer<CodeRun>, watch::Sender<u64>) {
        let (reader, writer) = reflector::store::<CodeRun>();
        let (tx, changes) = watch::channel(0u64);
        let cache = Cache {
            reader,
            tally: Arc::default(),
            changes,
            synced: Arc::new(AtomicBool::new(true)),
            namespace: "ns".into(),
            shard: None,
        };
        (cache, writer, tx)
    }

    /// Feeds `event` as the watch loop does: the store, then the tally, then the change.
    fn apply(
        cache: &RunCache,
        writer: &mut Writer<CodeRun>,
        tx: &watch::Sender<u64>,
        event: watcher::Event<CodeRun>,
    ) {
        writer.apply_watcher_event(&event);
        cache.tally.lock().unwrap().observe(&event);
        tx.send_modify(|n| *n += 1);
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_run_finishes() {
        let (cache, mut writer, tx) = fed();
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-a", None)),
        );
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .wait_until("run-a", soon(), CodeRun::is_finished)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-a", Some(Phase::Running))),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-a", Some(Phase::Completed))),
        );
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.phase(), Some(Phase::Completed));
        assert_eq!(got.spec.code, "print(1)");
    }

    #[tokio::test]
    async fn a_waiter_is_told_when_the_run_is_deleted() {
        let (cache, mut writer, tx) = fed();
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-b", Some(Phase::Running))),
        );
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .wait_until("run-b", soon(), CodeRun::is_finished)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Delete(run("run-b", Some(Phase::Running))),
        );
        assert!(waiter.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_new_run_is_awaited_until_it_arrives() {
        let (cache, mut writer, tx) = fed();
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_for_arrival("run-c", soon()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-c", None)),
        );
        assert!(waiter.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_deadline_returns_the_run_as_it_is() {
        let (cache, mut writer, tx) = fed();
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-d", Some(Phase::Running))),
        );
        let deadline = Instant::now() + Duration::from_millis(50);
        let got = cache
            .wait_until("run-d", deadline, CodeRun::is_finished)
            .await
            .unwrap();
        assert_eq!(got.phase(), Some(Phase::Running));
    }

    #[tokio::test]
    async fn tenants_see_only_their_runs() {
        let (cache, mut writer, tx) = fed();
        apply(
            &cache,
            &mut writer,
            &tx,
            watcher::Event::Apply(run("run-e", None)),
        );
        assert!(cache.get_for("acme", "run-e").is_some());
        assert!(cache.get_for("beta", "run-e").is_none());
        assert_eq!(cache.load_of("acme").waiting, 1);
        let beta = cache.load_of("beta");
        assert_eq!((beta.waiting, beta.waiting_total), (0, 1));
    }

    /// The counts as a pass over every cached run gives them (what `load_of` was).
    fn recount(cache: &RunCache, tenant: &str) -> Load {
        let mut load = Load::default();
        for run in cache.all() {
            let waiting = run.phase().is_none_or(|p| p == Phase::Queued);
            load.waiting_total += usize::from(waiting);
            if run.tenant_label() != Some(tenant) || run.is_finished() {
                continue;
            }
            load.waiting += usize::from(waiting);
            load.live_spec_bytes += run.annotations()[SPEC_BYTES].parse::<u64>().unwrap();
        }
        load
    }

    /// Run `i` of a small set: one of three tenants, some phase, some bytes, slimmed as the
    /// watch slims it.
    fn varied(i: u64, step: u64) -> CodeRun {
        let phases = [
            None,
            Some(Phase::Queued),
            Some(Phase::Running),
            Some(Phase::Completed),
            Some(Phase::Failed),
        ];
        let mut r = run(&format!("run-{i}"), phases[((i + step) % 5) as usize]);
        let tenant = ["acme", "beta", "gamma"][(i % 3) as usize];
        r.metadata.labels = Some([(TENANT_LABEL.to_string(), tenant.to_string())].into());
        r.spec.code = "x".repeat(((i * 7 + step) % 50) as usize);
        r.slim();
        r
    }

    #[test]
    fn the_counts_kept_by_the_watch_match_a_pass_over_the_cache_through_changes_and_relists() {
        let (cache, mut writer, tx) = fed();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for step in 0..3_000u64 {
            let i = next() % 40;
            let event = if step % 300 == 150 {
                // A relist: the old counts hold until the new list ends.
                apply(&cache, &mut writer, &tx, watcher::Event::Init);
                let before = recount(&cache, "acme");
                for j in (0..40).filter(|_| next() % 3 != 0) {
                    let listed = watcher::Event::InitApply(varied(j, step));
                    apply(&cache, &mut writer, &tx, listed);
                    assert_eq!(cache.load_of("acme"), before);
                }
                watcher::Event::InitDone
            } else if next() % 10 == 0 {
                watcher::Event::Delete(varied(i, step))
            } else {
                watcher::Event::Apply(varied(i, step))
            };
            apply(&cache, &mut writer, &tx, event);
            for tenant in ["acme", "beta", "gamma", "nobody"] {
                assert_eq!(
                    cache.load_of(tenant),
                    recount(&cache, tenant),
                    "step {step}"
                );
            }
            for j in 0..40 {
                let name = format!("run-{j}");
                assert_eq!(cache.counts(&name), cache.get(&name).is_some());
            }
        }
    }

    #[test]
    fn a_check_reads_the_counts_and_makes_no_pass_over_the_cached_runs() {
        // Counts told of 10,000 runs the store does not hold: only the counts can answer.
        let (cache, _writer, _tx) = fed();
        for i in 0..10_000 {
            let event = watcher::Event::Apply(varied(i, 0));
            cache.tally.lock().unwrap().observe(&event);
        }
        assert!(cache.all().is_empty());
        let acme = cache.load_of("acme");
        assert_eq!(acme.waiting_total, 4_000);
        assert!(acme.waiting > 0 && acme.live_spec_bytes > 0, "{acme:?}");
    }

    #[test]
    fn a_server_sees_only_the_runs_of_its_shard() {
        assert_eq!(
            selector(Some("s3-x")),
            "codeinterp.dev/tenant,codeinterp.dev/shard=s3-x"
        );
        assert_eq!(
            selector(None),
            "codeinterp.dev/tenant,!codeinterp.dev/shard"
        );
    }

    #[test]
    fn the_cache_drops_the_source_and_stdin() {
        let mut r = run("run-f", None);
        r.spec.stdin = Some("secret input".into());
        r.slim();
        assert!(r.spec.code.is_empty());
        assert_eq!(r.spec.stdin, None);
    }
}
