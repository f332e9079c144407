//! Admission: which waiting run gets room next. Runs wait in one line per tenant (first come,
//! first served) and the lines take turns (round robin), so a tenant's backlog of a thousand
//! delays another tenant's single run by about one run. Room is what the nodes runner pods
//! may go to (ready, not cordoned, selected by their node selector, every taint tolerated)
//! can still hold, read from the watched nodes and pods (every pod's requests, of any shard or
//! namespace), less what runs admitted a moment ago will request. Pure: the operator feeds it
//! the cluster as it watches it.
use std::collections::{HashMap, VecDeque};

use codeinterp_crds::CodeRun;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::ObjectRef;

use crate::placement::Placement;
use crate::pod_spec::quantity_units;

/// What a run's pod will request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

/// A run waiting for room.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: ObjectRef<CodeRun>,
    pub uid: String,
    pub tenant: String,
    pub demand: Demand,
    /// The warm pool whose pods fit the run, if any.
    pub pool: Option<String>,
    /// Creation time (seconds), then the resourceVersion it was first seen with (etcd's
    /// revision: within one second, the order of creation): the order within a line.
    pub created: i64,
    pub revision: u64,
}

/// The answer to a run asking for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead: create or claim a pod.
    Admitted,
    /// Wait: this is the run's place in line (1 is next).
    Queued { position: u32 },
}

/// Caps on what one tenant, and everyone, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Runs of one tenant running at once (0: no cap).
    pub running_per_tenant: usize,
    /// Runs running at once in all (0: no cap).
    pub concurrent: usize,
}

#[derive(Clone, Debug)]
struct Seat {
    tenant: String,
    demand: Demand,
    /// Admitted, its pod not yet seen: its demand is reserved in the room.
    reserved: bool,
}

/// The waiting lines and the seats: runs given room and not finished.
#[derive(Debug)]
pub struct Queue {
    caps: Caps,
    lines: HashMap<String, VecDeque<Entry>>,
    /// Tenants with runs waiting, in the order they take turns.
    turns: VecDeque<String>,
    seats: HashMap<String, Seat>,
    /// Heads of lines passed over (they did not fit while others got room): how often.
    passed: HashMap<String, u32>,
}

/// A head of a line passed over this many times holds the room from then on: nothing else
/// that needs room is admitted until it fits, so a stream of small runs cannot starve a
/// large one until its queue timeout.
pub const MAX_PASSES: u32 = 8;

impl Queue {
    pub fn new(caps: Caps) -> Self {
        Queue {
            caps,
            lines: HashMap::new(),
            turns: VecDeque::new(),
            seats: HashMap::new(),
            passed: HashMap::new(),
        }
    }

    pub fn waiting(&self) -> usize {
        self.lines.values().map(VecDeque::len).sum()
    }

    pub fn seated(&self) -> usize {
        self.seats.len()
    }

    fn seated_of(&self, tenant: &str) -> usize {
        self.seats.values().filter(|h| h.tenant == tenant).count()
    }

    /// Demands of admitted runs whose pods are not in the cluster's view yet.
    pub fn reservations(&self) -> impl Iterator<Item = Demand> + '_ {
        self.seats.values().filter(|h| h.reserved).map(|h| h.demand)
    }

    /// A run that holds a pod already (found at start-up): takes a seat, which counts
    /// against its tenant's cap and reserves nothing.
    pub fn seat(&mut self, uid: &str, tenant: &str) {
        self.remove_waiting(uid);
        self.seats.insert(
            uid.to_string(),
            Seat {
                tenant: tenant.to_string(),
                demand: Demand::default(),
                reserved: false,
            },
        );
    }

    /// The run's pod is in the cluster's view now: its requests count there.
    pub fn pod_seen(&mut self, uid: &str) {
        if let Some(h) = self.seats.get_mut(uid) {
            h.reserved = false;
        }
    }

    /// The run finished or went away.
    pub fn release(&mut self, uid: &str) {
        self.seats.remove(uid);
        self.remove_waiting(uid);
    }

    fn remove_waiting(&mut self, uid: &str) {
        self.passed.remove(uid);
        let mut emptied = None;
        for (tenant, line) in self.lines.iter_mut() {
            if let Some(i) = line.iter().position(|e| e.uid == uid) {
                line.remove(i);
                if line.is_empty() {
                    emptied = Some(tenant.clone());
                }
                break;
            }
        }
        if let Some(t) = emptied {
            self.lines.remove(&t);
            self.turns.retain(|x| *x != t);
        }
    }

    /// Forgets runs that no longer exist (deleted while waiting or seated).
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.seats.retain(|uid, _| exists(uid));
        let gone: Vec<String> = self
            .lines
            .values()
            .flatten()
            .filter(|e| !exists(&e.uid))
            .map(|e| e.uid.clone())
            .collect();
        for uid in gone {
            self.remove_waiting(&uid);
        }
    }

    /// A run asks for room. Admitted runs stay admitted until released. A run is never
    /// refused here: the door that answers the client (the REST API's queue cap, a
    /// namespace's ResourceQuota for kubectl) is the one place that refuses, so a run
    /// accepted is a run that runs.
    pub fn request(&mut self, entry: Entry) -> Decision {
        if self.seats.contains_key(&entry.uid) {
            return Decision::Admitted;
        }
        // A run's tenant never changes: only its line is looked at, and a new run (the
        // newest, nearly always) is placed from the line's end, so a request costs the same
        // however long the lines are.
        if let Some(position) = self.place_of(&entry.tenant, &entry.uid) {
            return Decision::Queued { position };
        }
        let line = self.lines.entry(entry.tenant.clone()).or_default();
        fn order(e: &Entry) -> (i64, u64, &str) {
            (e.created, e.revision, e.key.name.as_str())
        }
        let at = line
            .iter()
            .rposition(|e| order(e) <= order(&entry))
            .map_or(0, |i| i + 1);
        let tenant = entry.tenant.clone();
        line.insert(at, entry.clone());
        if !self.turns.contains(&tenant) {
            self.turns.push_back(tenant);
        }
        Decision::Queued {
            position: self.position(&entry.tenant, at),
        }
    }

    /// The place in line of `tenant`'s run `uid`, if it waits.
    fn place_of(&self, tenant: &str, uid: &str) -> Option<u32> {
        let i = self.lines.get(tenant)?.iter().position(|e| e.uid == uid)?;
        Some(self.position(tenant, i))
    }

    /// Admits as many waiting runs as the room (and free warm pods) allow, taking turns
    /// between tenants; a head passed over [`MAX_PASSES`] times goes first and, if it still
    /// does not fit, holds the room (only runs that take a free warm pod go meanwhile).
    /// Returns the admitted runs, to be woken.
    pub fn pump(&mut self, room: &mut Room, free_warm: &mut HashMap<String, usize>) -> Vec<Entry> {
        let mut admitted = Vec::new();
        let holding = self.admit_held(room, free_warm, &mut admitted);
        let mut stalled = 0;
        while stalled < self.turns.len() && !self.all_seats_taken() {
            let Some(tenant) = self.turns.pop_front() else {
                break;
            };
            let head = self.lines.get(&tenant).and_then(|l| l.front()).cloned();
            let Some(head) = head.filter(|_| !self.capped(&tenant)) else {
                self.turns.push_back(tenant);
                stalled += 1;
                continue;
            };
            let Some(reserved) = take_room(&head, room, free_warm, holding) else {
                self.turns.push_back(tenant);
                stalled += 1;
                continue;
            };
            stalled = 0;
            admitted.push(self.seat_head(tenant, reserved));
        }
        if !admitted.is_empty() {
            // Every head still waiting was passed over.
            for line in self.lines.values() {
                if let Some(head) = line.front() {
                    *self.passed.entry(head.uid.clone()).or_default() += 1;
                }
            }
        }
        admitted
    }

    /// Admits the heads passed over too often, in turn order; true if one did not fit (it
    /// holds the room).
    fn admit_held(
        &mut self,
        room: &mut Room,
        free_warm: &mut HashMap<String, usize>,
        admitted: &mut Vec<Entry>,
    ) -> bool {
        let held: Vec<String> = self
            .turns
            .iter()
            .filter(|t| {
                let head = self.lines.get(*t).and_then(|l| l.front());
                head.is_some_and(|h| self.passed.get(&h.uid).copied().unwrap_or(0) >= MAX_PASSES)
                    && !self.capped(t)
            })
            .cloned()
            .collect();
        for tenant in held {
            if self.all_seats_taken() {
                return true;
            }
            let head = self.lines[&tenant].front().cloned().expect("a head");
            match take_room(&head, room, free_warm, false) {
                Some(reserved) => {
                    self.turns.retain(|t| *t != tenant);
                    admitted.push(self.seat_head(tenant, reserved));
                }
                None => return true,
            }
        }
        false
    }

    fn all_seats_taken(&self) -> bool {
        self.caps.concurrent > 0 && self.seats.len() >= self.caps.concurrent
    }

    fn capped(&self, tenant: &str) -> bool {
        self.caps.running_per_tenant > 0 && self.seated_of(tenant) >= self.caps.running_per_tenant
    }

    /// Seats the head of `tenant`'s line (the tenant was taken out of the turns; it goes to
    /// the back if its line goes on).
    fn seat_head(&mut self, tenant: String, reserved: bool) -> Entry {
        let line = self.lines.get_mut(&tenant).expect("the tenant has a line");
        let head = line.pop_front().expect("a head");
        if line.is_empty() {
            self.lines.remove(&tenant);
        } else {
            self.turns.push_back(tenant.clone());
        }
        self.passed.remove(&head.uid);
        self.seats.insert(
            head.uid.clone(),
            Seat {
                tenant,
                demand: head.demand,
                reserved,
            },
        );
        head
    }

    /// Places in line (1 is next) of every waiting run, in the order turns would admit them.
    pub fn positions(&self) -> Vec<(ObjectRef<CodeRun>, u32)> {
        let mut out = Vec::with_capacity(self.waiting());
        for tenant in &self.turns {
            for (i, e) in self.lines[tenant].iter().enumerate() {
                out.push((e.key.clone(), self.position(tenant, i)));
            }
        }
        out
    }

    pub fn position_of(&self, uid: &str) -> Option<u32> {
        self.turns.iter().find_map(|tenant| {
            let i = self.lines[tenant].iter().position(|e| e.uid == uid)?;
            Some(self.position(tenant, i))
        })
    }

    /// The `i`th run of `tenant`'s line goes after the first `i` runs of every line, and
    /// after the `i`th of the lines whose turn comes before its tenant's.
    fn position(&self, tenant: &str, i: usize) -> u32 {
        let mut before = 0usize;
        for t in &self.turns {
            let len = self.lines[t].len();
            before += len.min(i);
            if t == tenant {
                break;
            }
            if len > i {
                before += 1;
            }
        }
        // Recount the lines after the tenant's turn: only their first `i` runs come first.
        let after: usize = self
            .turns
            .iter()
            .skip_while(|t| *t != tenant)
            .skip(1)
            .map(|t| self.lines[t].len().min(i))
            .sum();
        (before + after + 1) as u32
    }
}

/// Room for the run: a free warm pod of its pool (`Some(false)`: nothing reserved), or its
/// demand taken from the room (`Some(true)`) unless the room is held for another; `None`
/// if neither.
fn take_room(
    head: &Entry,
    room: &mut Room,
    free_warm: &mut HashMap<String, usize>,
    held: bool,
) -> Option<bool> {
    let warm = head
        .pool
        .as_ref()
        .and_then(|p| free_warm.get_mut(p))
        .filter(|n| **n > 0);
    if let Some(n) = warm {
        *n -= 1;
        return Some(false);
    }
    (!held && room.take(head.demand)).then_some(true)
}

/// What the schedulable nodes can still hold, node by node (a run's pod must fit one node).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Room {
    nodes: Vec<NodeRoom>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct NodeRoom {
    cpu_millicores: i64,
    memory_bytes: i64,
    pods: i64,
    /// The node's allocatable CPU and memory, for the scheduler's score.
    cpu_allocatable: i64,
    memory_allocatable: i64,
}

impl NodeRoom {
    fn new(cpu_millicores: i64, memory_bytes: i64, pods: i64) -> NodeRoom {
        NodeRoom {
            cpu_millicores,
            memory_bytes,
            pods,
            cpu_allocatable: cpu_millicores,
            memory_allocatable: memory_bytes,
        }
    }

    /// A node's whole room: its allocatable CPU, memory and pods.
    fn allocatable(node: &Node) -> NodeRoom {
        let q = |k: &str| {
            node.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(k))
                .and_then(|q| quantity_units(&q.0))
                .unwrap_or(0)
        };
        NodeRoom::new(
            q("cpu") as i64,
            (q("memory") / 1000) as i64,
            (q("pods") / 1000) as i64,
        )
    }

    fn fits(&self, d: Demand) -> bool {
        self.pods >= 1
            && self.cpu_millicores >= d.cpu_millicores as i64
            && self.memory_bytes >= d.memory_bytes as i64
    }

    /// The kube-scheduler's default score of this node for `d` (NodeResourcesFit,
    /// LeastAllocated: the mean of the CPU and memory fractions left once `d` is placed), in
    /// millionths. The scheduler puts a pod on the node that scores highest, so small pods
    /// go first to the large nodes, which they fill the least: room modelled first-fit put
    /// them on the small nodes and admitted a large run to a large node the scheduler had
    /// filled meanwhile.
    fn score(&self, d: Demand) -> i64 {
        let left = |free: i64, asked: u64, whole: i64| {
            if whole <= 0 {
                0
            } else {
                (free - asked as i64).max(0) as i128 * 1_000_000 / whole as i128
            }
        };
        let cpu = left(self.cpu_millicores, d.cpu_millicores, self.cpu_allocatable);
        let memory = left(self.memory_bytes, d.memory_bytes, self.memory_allocatable);
        ((cpu + memory) / 2) as i64
    }

    fn take(&mut self, d: Demand) {
        self.pods -= 1;
        self.cpu_millicores -= d.cpu_millicores as i64;
        self.memory_bytes -= d.memory_bytes as i64;
    }
}

/// A node runner pods may be scheduled on: ready, not cordoned, and taking them by its labels
/// and taints (see [`Placement::admits`]).
pub fn schedulable(node: &Node, placement: &Placement) -> bool {
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if cordoned || !placement.admits(node) {
        return false;
    }
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// What a pod requests (what the scheduler counts): its containers' requests, or their limits
/// where no request is given.
pub fn pod_demand(pod: &Pod) -> Demand {
    #[cfg(test)]
    PODS_READ.with(|c| c.set(c.get() + 1));
    let mut d = Demand::default();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let res = c.resources.clone().unwrap_or_default();
        let get = |k: &str| {
            res.requests
                .as_ref()
                .and_then(|r| r.get(k))
                .or_else(|| res.limits.as_ref().and_then(|l| l.get(k)))
                .and_then(|q| quantity_units(&q.0))
                .unwrap_or(0)
                .max(0) as u64
        };
        d.cpu_millicores += get("cpu");
        d.memory_bytes += get("memory") / 1000;
    }
    d
}

/// Whether the pod takes room on a node (or will): it has not ended, and no scheduling gate
/// holds it (a gated pod is placed by nobody until its gate goes, so it takes no room; else
/// anyone who may create pods could hold the runs back with gated ones).
pub fn takes_room(pod: &Pod) -> bool {
    !is_terminal(pod) && !is_gated(pod)
}

#[cfg(test)]
thread_local! {
    static PODS_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has read a pod's requests (to tell a pass over every pod).
#[cfg(test)]
pub fn pods_read() -> u64 {
    PODS_READ.with(|c| c.get())
}

fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Room {
    /// The room left: allocatable of the nodes runner pods may go to, less the requests of
    /// every pod bound to them and (placed where the scheduler would, see [`Room::take`]) of
    /// pods not bound yet and of the `reserved` demands. A pass over every pod: the
    /// reference that [`Room::of_ledger`] is tested against.
    pub fn of_cluster<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
        reserved: impl IntoIterator<Item = Demand>,
        placement: &Placement,
    ) -> Room {
        let mut names = Vec::new();
        let mut room = Room::default();
        for node in nodes.into_iter().filter(|n| schedulable(n, placement)) {
            names.push(node.metadata.name.clone().unwrap_or_default());
            room.nodes.push(NodeRoom::allocatable(node));
        }
        let mut unbound = Vec::new();
        for pod in pods.into_iter().filter(|p| takes_room(p)) {
            let d = pod_demand(pod);
            match pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                Some(node) => {
                    if let Some(i) = names.iter().position(|n| n == node) {
                        room.nodes[i].take(d);
                    }
                }
                None => unbound.push(d),
            }
        }
        for d in unbound.into_iter().chain(reserved) {
            room.take(d);
        }
        room
    }

    /// The same room from the pods' sums per node kept by the `ledger`: it reads the nodes
    /// and the unbound pods, never every pod.
    pub fn of_ledger<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        ledger: &crate::ledger::Ledger,
        reserved: impl IntoIterator<Item = Demand>,
        placement: &Placement,
    ) -> Room {
        let mut room = Room::default();
        for node in nodes.into_iter().filter(|n| schedulable(n, placement)) {
            let taken = ledger.on_node(node.metadata.name.as_deref().unwrap_or_default());
            let mut free = NodeRoom::allocatable(node);
            free.cpu_millicores -= taken.cpu_millicores;
            free.memory_bytes -= taken.memory_bytes;
            free.pods -= taken.pods;
            room.nodes.push(free);
        }
        for d in ledger.unbound().chain(reserved) {
            room.take(d);
        }
        room
    }

    /// Takes room for `d` on the node the scheduler would choose: of those it fits, the one
    /// with the highest score (the first of equals).
    pub fn take(&mut self, d: Demand) -> bool {
        let best = (self.nodes.iter().enumerate())
            .filter(|(_, n)| n.fits(d))
            .max_by_key(|(i, n)| (n.score(d), std::cmp::Reverse(*i)));
        match best.map(|(i, _)| i) {
            Some(i) => {
                self.nodes[i].take(d);
                true
            }
            None => false,
        }
    }

    /// How many pods of `d` would still fit.
    pub fn how_many(&self, d: Demand) -> usize {
        let mut copy = self.clone();
        let mut n = 0;
        while n < 10_000 && copy.take(d) {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    const SMALL: Demand = Demand {
        cpu_millicores: 100,
        memory_bytes: 100,
    };

    fn caps() -> Caps {
        Caps {
            running_per_tenant: 0,
            concurrent: 0,
        }
    }

    fn entry(tenant: &str, n: i64) -> Entry {
        let name = format!("{tenant}-{n}");
        Entry {
            key: ObjectRef::new(&name).within("ns"),
            uid: name,
            tenant: tenant.into(),
            demand: SMALL,
            pool: None,
            created: n,
            revision: 0,
        }
    }

    /// Room for `n` small pods.
    fn room(n: i64) -> Room {
        Room {
            nodes: vec![NodeRoom::new(100 * n, 100 * n, 1000)],
        }
    }

    fn names(admitted: &[Entry]) -> Vec<String> {
        admitted.iter().map(|e| e.uid.clone()).collect()
    }

    #[test]
    fn tenants_take_turns_and_each_line_is_first_come_first_served() {
        let mut q = Queue::new(caps());
        for n in 0..5 {
            q.request(entry("big", n));
        }
        q.request(entry("small", 10));
        q.request(entry("small", 11));
        let got = q.pump(&mut room(5), &mut HashMap::new());
        assert_eq!(
            names(&got),
            ["big-0", "small-10", "big-1", "small-11", "big-2"]
        );
        assert_eq!(q.waiting(), 2);
    }

    #[test]
    fn runs_of_the_same_second_keep_the_order_they_were_made_in() {
        let mut q = Queue::new(caps());
        let mut late = entry("a", 0);
        late.key = ObjectRef::new("run-aaa").within("ns");
        late.uid = "late".into();
        late.revision = 20;
        let mut early = entry("a", 0);
        early.key = ObjectRef::new("run-zzz").within("ns");
        early.uid = "early".into();
        early.revision = 10;
        q.request(late);
        q.request(early);
        assert_eq!(
            names(&q.pump(&mut room(2), &mut HashMap::new())),
            ["early", "late"]
        );
    }

    #[test]
    fn runs_seen_out_of_order_still_wait_in_the_order_they_were_made() {
        let mut q = Queue::new(caps());
        // Made 0..50, seen by the watch in a shuffled order (a relist, several writers).
        let seen: Vec<i64> = (0..50).map(|n| (n * 37) % 50).collect();
        for n in &seen {
            q.request(entry("a", *n));
        }
        // Asked again, a waiting run keeps its place.
        assert_eq!(q.request(entry("a", 3)), Decision::Queued { position: 4 });
        let want: Vec<String> = (0..50).map(|n| format!("a-{n}")).collect();
        assert_eq!(names(&q.pump(&mut room(50), &mut HashMap::new())), want);
    }

    #[test]
    fn a_backlog_of_a_thousand_delays_another_tenants_run_by_one_turn() {
        let mut q = Queue::new(caps());
        for n in 0..1000 {
            q.request(entry("big", n));
        }
        assert_eq!(
            q.request(entry("small", 5000)),
            Decision::Queued { position: 2 }
        );
        let got = q.pump(&mut room(2), &mut HashMap::new());
        assert_eq!(names(&got), ["big-0", "small-5000"]);
    }

    #[test]
    fn positions_follow_the_order_of_admission() {
        let mut q = Queue::new(caps());
        for n in 0..3 {
            q.request(entry("a", n));
        }
        q.request(entry("b", 10));
        let mut want: Vec<(String, u32)> = q
            .positions()
            .into_iter()
            .map(|(k, p)| (k.name, p))
            .collect();
        want.sort_by_key(|(_, p)| *p);
        let order: Vec<String> = want.into_iter().map(|(n, _)| n).collect();
        let admitted = names(&q.pump(&mut room(10), &mut HashMap::new()));
        assert_eq!(order, admitted);
    }

    #[test]
    fn a_long_line_never_refuses_and_an_admitted_run_stays_admitted() {
        let mut q = Queue::new(caps());
        for i in 0..5000 {
            assert!(matches!(q.request(entry("a", i)), Decision::Queued { .. }));
        }
        q.pump(&mut room(1), &mut HashMap::new());
        assert_eq!(q.request(entry("a", 0)), Decision::Admitted);
        assert!(matches!(
            q.request(entry("a", 2)),
            Decision::Queued { position: 2 }
        ));
    }

    #[test]
    fn a_large_run_passed_over_often_enough_holds_the_room_until_it_fits() {
        let mut q = Queue::new(caps());
        let mut big = entry("big", 0);
        big.demand = Demand {
            cpu_millicores: 400,
            memory_bytes: 400,
        };
        q.request(big);
        for n in 0..100 {
            q.request(entry("small", n));
        }
        // Room for one small run at a time (one ends, another may go): the large run never
        // fits, and is passed over each time...
        for pass in 0..MAX_PASSES {
            let got = names(&q.pump(&mut room(1), &mut HashMap::new()));
            assert_eq!(got, [format!("small-{pass}")]);
        }
        // ...until it holds the room: small runs wait while room gathers.
        assert!(q.pump(&mut room(1), &mut HashMap::new()).is_empty());
        assert!(q.pump(&mut room(3), &mut HashMap::new()).is_empty());
        // A run that takes a free warm pod needs no room, and still goes.
        let mut warm = entry("small", 1000);
        warm.pool = Some("python".into());
        warm.created = -1;
        q.request(warm);
        let mut pods = HashMap::from([("python".to_string(), 1)]);
        assert_eq!(names(&q.pump(&mut room(1), &mut pods)), ["small-1000"]);
        assert_eq!(names(&q.pump(&mut room(4), &mut HashMap::new())), ["big-0"]);
        // Then the small runs go on.
        assert_eq!(q.pump(&mut room(2), &mut HashMap::new()).len(), 2);
    }

    #[test]
    fn caps_per_tenant_and_in_all_hold_back_runs_until_released() {
        let mut q = Queue::new(Caps {
            running_per_tenant: 1,
            ..caps()
        });
        q.request(entry("a", 0));
        q.request(entry("a", 1));
        q.request(entry("b", 2));
        assert_eq!(
            names(&q.pump(&mut room(10), &mut HashMap::new())),
            ["a-0", "b-2"]
        );
        assert!(q.pump(&mut room(10), &mut HashMap::new()).is_empty());
        q.release("a-0");
        assert_eq!(names(&q.pump(&mut room(10), &mut HashMap::new())), ["a-1"]);

        let mut q = Queue::new(Caps {
            concurrent: 1,
            ..caps()
        });
        q.request(entry("a", 0));
        q.request(entry("b", 1));
        assert_eq!(q.pump(&mut room(10), &mut HashMap::new()).len(), 1);
    }

    #[test]
    fn a_free_warm_pod_admits_without_room_and_is_used_once() {
        let mut q = Queue::new(caps());
        let mut e = entry("a", 0);
        e.pool = Some("pool-python".into());
        q.request(e);
        let mut e = entry("a", 1);
        e.pool = Some("pool-python".into());
        q.request(e);
        let mut warm = HashMap::from([("pool-python".to_string(), 1)]);
        let got = q.pump(&mut room(0), &mut warm);
        assert_eq!(names(&got), ["a-0"]);
        assert_eq!(warm["pool-python"], 0);
        assert_eq!(q.reservations().count(), 0, "a warm pod reserves nothing");
    }

    #[test]
    fn an_admitted_run_reserves_room_until_its_pod_is_seen() {
        let mut q = Queue::new(caps());
        q.request(entry("a", 0));
        q.pump(&mut room(1), &mut HashMap::new());
        assert_eq!(q.reservations().collect::<Vec<_>>(), [SMALL]);
        q.pod_seen("a-0");
        assert_eq!(q.reservations().count(), 0);
        assert_eq!(q.seated(), 1);
        q.release("a-0");
        assert_eq!(q.seated(), 0);
    }

    /// Runner pods with no node selector and no toleration (the default settings).
    const PLAIN: Placement = Placement {
        node_selector: BTreeMap::new(),
        tolerations: Vec::new(),
    };

    fn node(name: &str, cpu: &str, memory: &str, ready: bool) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), Quantity(cpu.into())),
                    ("memory".into(), Quantity(memory.into())),
                    ("pods".into(), Quantity("110".into())),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod_on(node: Option<&str>, cpu: &str, memory: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {
                "requests": {"cpu": cpu, "memory": memory}}}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    #[test]
    fn room_is_allocatable_less_every_pods_requests_on_ready_nodes() {
        let nodes = [node("a", "2", "4Gi", true), node("b", "8", "64Gi", false)];
        let run = Demand {
            cpu_millicores: 100,
            memory_bytes: 512 << 20,
        };
        assert_eq!(Room::of_cluster(&nodes, &[], [], &PLAIN).how_many(run), 8);
        let pods = [pod_on(Some("a"), "1", "1Gi"), pod_on(None, "100m", "512Mi")];
        // 4 Gi - 1 Gi bound - 512 Mi pending = 2.5 Gi: 5 runs of 512 Mi.
        let room = Room::of_cluster(&nodes, &pods, [run], &PLAIN);
        assert_eq!(room.how_many(run), 4);
        let mut cordoned = node("a", "2", "4Gi", true);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(
            Room::of_cluster(&[cordoned], &[], [], &PLAIN).how_many(run),
            0
        );
    }

    #[test]
    fn pods_not_bound_yet_are_placed_where_the_scheduler_puts_them_not_first_fit() {
        // The small node first: first-fit would put the eight pending pods there and leave
        // the large node empty for a large run. The scheduler puts each on the node its
        // share of fills least, the large one, so the large run has no node.
        let nodes = [
            node("small", "4", "8Gi", true),
            node("large", "16", "64Gi", true),
        ];
        let large = Demand {
            cpu_millicores: 1000,
            memory_bytes: 60 << 30,
        };
        assert_eq!(Room::of_cluster(&nodes, &[], [], &PLAIN).how_many(large), 1);
        let pending: Vec<Pod> = (0..8).map(|_| pod_on(None, "100m", "1Gi")).collect();
        assert_eq!(
            Room::of_cluster(&nodes, &pending, [], &PLAIN).how_many(large),
            0
        );
    }

    #[test]
    fn a_tainted_pool_is_room_only_for_runner_pods_that_tolerate_and_select_it() {
        let run = Demand {
            cpu_millicores: 100,
            memory_bytes: 1 << 30,
        };
        let mut pool = node("pool", "16", "64Gi", true);
        pool.metadata.labels = Some(BTreeMap::from([("pool".into(), "sandbox".into())]));
        pool.spec.as_mut().unwrap().taints = Some(vec![k8s_openapi::api::core::v1::Taint {
            key: "dedicated".into(),
            value: Some("sandbox".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let plain = node("plain", "2", "4Gi", true);
        let nodes = [pool, plain];
        // By default the tainted pool is no room: only the plain node's 4 runs.
        assert_eq!(Room::of_cluster(&nodes, &[], [], &PLAIN).how_many(run), 4);
        let tolerations = crate::placement::parse_tolerations(
            r#"[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]"#,
        )
        .unwrap()
        .0;
        let tolerating = Placement {
            tolerations: tolerations.clone(),
            ..PLAIN
        };
        assert_eq!(
            Room::of_cluster(&nodes, &[], [], &tolerating).how_many(run),
            68
        );
        // Selecting the pool leaves the plain node out.
        let dedicated = Placement {
            node_selector: BTreeMap::from([("pool".into(), "sandbox".into())]),
            tolerations,
        };
        assert_eq!(
            Room::of_cluster(&nodes, &[], [], &dedicated).how_many(run),
            64
        );
    }

    #[test]
    fn gated_pods_take_no_room_and_the_same_pods_ungated_do() {
        let nodes = [node("a", "4", "8Gi", true)];
        let run = Demand {
            cpu_millicores: 100,
            memory_bytes: 512 << 20,
        };
        let pending = |gated: bool| {
            let mut p = pod_on(None, "500m", "1Gi");
            if gated {
                p.spec.as_mut().unwrap().scheduling_gates =
                    Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                        name: "hold".into(),
                    }]);
            }
            p
        };
        let gated: Vec<Pod> = (0..120).map(|_| pending(true)).collect();
        assert_eq!(
            Room::of_cluster(&nodes, &gated, [], &PLAIN).how_many(run),
            16
        );
        // The control: the same pods without their gate will be placed, and do take it.
        let ungated: Vec<Pod> = (0..120).map(|_| pending(false)).collect();
        assert_eq!(
            Room::of_cluster(&nodes, &ungated, [], &PLAIN).how_many(run),
            0
        );
    }
}
