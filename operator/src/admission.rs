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
    /// Each waiting run's tenant and place key: a run is found in its line by a binary
    /// search, and a run that does not wait is known not to at once.
    waiting: HashMap<String, (String, Order)>,
    /// Seats taken per tenant (its cap is checked for each turn of a pass).
    seated_per: HashMap<String, usize>,
    /// Places in line last written to waiting runs' statuses.
    shown: HashMap<String, u32>,
    /// Runs that left the lines since [`Queue::places_to_refresh`] was last called: what
    /// moved the others up.
    moves: usize,
}

/// A run's place key within its tenant's line: creation second, the resourceVersion it was
/// first seen with, its name, its uid.
type Order = (i64, u64, String, String);

/// The place key of `e`, borrowed (compared without copying).
fn order(e: &Entry) -> (i64, u64, &str, &str) {
    (e.created, e.revision, e.key.name.as_str(), e.uid.as_str())
}

fn borrowed(key: &Order) -> (i64, u64, &str, &str) {
    (key.0, key.1, key.2.as_str(), key.3.as_str())
}

/// The index of the run with place key `key` in `line`, if it is there (keys never change
/// while a run waits).
fn find(line: &VecDeque<Entry>, key: &Order) -> Option<usize> {
    let key = borrowed(key);
    let i = line.partition_point(|e| order(e) < key);
    line.get(i).is_some_and(|e| order(e) == key).then_some(i)
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
            waiting: HashMap::new(),
            seated_per: HashMap::new(),
            shown: HashMap::new(),
            moves: 0,
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn seated(&self) -> usize {
        self.seats.len()
    }

    fn seated_of(&self, tenant: &str) -> usize {
        self.seated_per.get(tenant).copied().unwrap_or(0)
    }

    fn take_seat(&mut self, uid: String, seat: Seat) {
        *self.seated_per.entry(seat.tenant.clone()).or_default() += 1;
        if let Some(old) = self.seats.insert(uid, seat) {
            self.leave_seat_count(&old.tenant);
        }
    }

    fn leave_seat(&mut self, uid: &str) {
        if let Some(old) = self.seats.remove(uid) {
            self.leave_seat_count(&old.tenant);
        }
    }

    fn leave_seat_count(&mut self, tenant: &str) {
        if let Some(n) = self.seated_per.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.seated_per.remove(tenant);
            }
        }
    }

    /// Demands of admitted runs whose pods are not in the cluster's view yet.
    pub fn reservations(&self) -> impl Iterator<Item = Demand> + '_ {
        self.seats.values().filter(|h| h.reserved).map(|h| h.demand)
    }

    /// A run that holds a pod already (found at start-up): takes a seat, which counts
    /// against its tenant's cap and reserves nothing.
    pub fn seat(&mut self, uid: &str, tenant: &str) {
        self.remove_waiting(uid);
        self.take_seat(
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
        self.leave_seat(uid);
        self.remove_waiting(uid);
    }

    /// Takes a run out of its line: found through [`Queue::waiting`] by a binary search, so
    /// releasing a run costs the same however many wait.
    fn remove_waiting(&mut self, uid: &str) {
        let Some((tenant, key)) = self.waiting.remove(uid) else {
            return;
        };
        self.passed.remove(uid);
        self.shown.remove(uid);
        self.moves += 1;
        let Some(line) = self.lines.get_mut(&tenant) else {
            return;
        };
        if let Some(i) = find(line, &key) {
            line.remove(i);
        }
        if line.is_empty() {
            self.lines.remove(&tenant);
            self.turns.retain(|x| *x != tenant);
        }
    }

    /// Forgets runs that no longer exist (deleted while waiting or seated).
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .seats
            .keys()
            .chain(self.waiting.keys())
            .filter(|uid| !exists(uid))
            .cloned()
            .collect();
        for uid in gone {
            self.release(&uid);
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
        if let Some(position) = self.place_in_line(&entry.uid) {
            return Decision::Queued { position };
        }
        let line = self.lines.entry(entry.tenant.clone()).or_default();
        let at = line.partition_point(|e| order(e) <= order(&entry));
        let tenant = entry.tenant.clone();
        let key = (
            entry.created,
            entry.revision,
            entry.key.name.clone(),
            entry.uid.clone(),
        );
        self.waiting
            .insert(entry.uid.clone(), (tenant.clone(), key));
        line.insert(at, entry.clone());
        if !self.turns.contains(&tenant) {
            self.turns.push_back(tenant);
        }
        Decision::Queued {
            position: self.position(&entry.tenant, at),
        }
    }

    /// The place in line of the run `uid`, if it waits.
    pub fn place_in_line(&self, uid: &str) -> Option<u32> {
        let (tenant, key) = self.waiting.get(uid)?;
        let i = find(self.lines.get(tenant)?, key)?;
        Some(self.position(tenant, i))
    }

    /// Whether the run `uid` waits at the head of its tenant's line: the only waiting run
    /// that joining the line can make admissible (room and caps are what they were).
    pub fn heads_its_line(&self, uid: &str) -> bool {
        self.waiting.get(uid).is_some_and(|(tenant, _)| {
            self.lines
                .get(tenant)
                .and_then(|l| l.front())
                .is_some_and(|h| h.uid == uid)
        })
    }

    /// The place last written to the run's status, if this process wrote one.
    pub fn shown(&self, uid: &str) -> Option<u32> {
        self.shown.get(uid).copied()
    }

    /// The run's status shows `position` now (kept while it waits).
    pub fn set_shown(&mut self, uid: &str, position: u32) {
        if self.waiting.contains_key(uid) {
            self.shown.insert(uid.to_string(), position);
        }
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
        self.waiting.remove(&head.uid);
        self.shown.remove(&head.uid);
        self.moves += 1;
        self.take_seat(
            head.uid.clone(),
            Seat {
                tenant,
                demand: head.demand,
                reserved,
            },
        );
        head
    }

    /// Places in line (1 is next) of every waiting run.
    #[cfg(test)]
    pub fn positions(&self) -> Vec<(ObjectRef<CodeRun>, u32)> {
        let lens = self.line_lengths();
        let mut out = Vec::with_capacity(self.waiting());
        for (k, tenant) in self.turns.iter().enumerate() {
            for (i, e) in self.lines[tenant].iter().enumerate() {
                out.push((e.key.clone(), place(&lens, k, i)));
            }
        }
        out
    }

    /// The places in line to write again, with the place now: (run, uid, place). Those of
    /// waiting runs whose status shows a place that has moved a good deal (halved, or any
    /// move under ten), front first, and no more than runs left the lines since the last
    /// call (nor than `most`): so a line of any length costs at most one refresh per run
    /// admitted, not one per run admitted ahead of each. A run this process wrote no place
    /// for is compared with `in_status` (what the cache shows, after a restart); one that
    /// shows none is left to its own reconcile.
    pub fn places_to_refresh(
        &mut self,
        most: usize,
        in_status: impl Fn(&ObjectRef<CodeRun>) -> Option<u32>,
    ) -> Vec<(ObjectRef<CodeRun>, String, u32)> {
        let budget = std::mem::take(&mut self.moves).min(most);
        if budget == 0 {
            return Vec::new();
        }
        let lens = self.line_lengths();
        let mut out = Vec::new();
        for (k, tenant) in self.turns.iter().enumerate() {
            for (i, e) in self.lines[tenant].iter().enumerate() {
                let position = place(&lens, k, i);
                let shown = self
                    .shown
                    .get(&e.uid)
                    .copied()
                    .or_else(|| in_status(&e.key));
                if shown.is_some_and(|s| moved(s, position)) {
                    out.push((e.key.clone(), e.uid.clone(), position));
                }
            }
        }
        out.sort_by_key(|(_, _, p)| *p);
        out.truncate(budget);
        out
    }

    /// The place of the `i`th run of `tenant`'s line (see [`place`]).
    fn position(&self, tenant: &str, i: usize) -> u32 {
        let lens = self.line_lengths();
        let k = self.turns.iter().position(|t| t == tenant);
        place(&lens, k.unwrap_or(lens.len()), i)
    }

    /// The lines' lengths in turn order.
    fn line_lengths(&self) -> Vec<usize> {
        self.turns.iter().map(|t| self.lines[t].len()).collect()
    }
}

/// The place of the `i`th run of the line whose turn is `k`th, given the lines' lengths in
/// turn order: after the first `i` runs of every line, and after the `i`th of the lines
/// whose turn comes before.
fn place(lens: &[usize], k: usize, i: usize) -> u32 {
    let all: usize = lens.iter().map(|l| (*l).min(i)).sum();
    let ahead = lens[..k].iter().filter(|l| **l > i).count();
    (all + ahead + 1) as u32
}

/// Whether a place shown as `shown` is worth writing again as `now`: halved, or moved at
/// all under ten (where a user watches it count down).
fn moved(shown: u32, now: u32) -> bool {
    now != shown && (now <= shown / 2 || now < 10)
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

    /// `n` runs waiting, from 20 tenants (tenant 0 makes half of them), each shown its
    /// place as its reconcile would write it.
    fn line_of(n: i64) -> Queue {
        let mut q = Queue::new(caps());
        for i in 0..n {
            let tenant = if i % 2 == 0 { 0 } else { i % 19 + 1 };
            let e = entry(&format!("t{tenant}"), i);
            let uid = e.uid.clone();
            if let Decision::Queued { position } = q.request(e) {
                q.set_shown(&uid, position);
            }
        }
        q
    }

    /// Admits `per_pass` runs of a line of `n` in each of at most `passes` passes,
    /// refreshing places after each pass as the housekeeping does; returns the places
    /// written per run admitted.
    fn refreshes_per_admission(n: i64, per_pass: i64, passes: usize) -> f64 {
        let mut q = line_of(n);
        let (mut writes, mut admitted) = (0usize, 0usize);
        for _ in 0..passes {
            if q.waiting() == 0 {
                break;
            }
            admitted += q.pump(&mut room(per_pass), &mut HashMap::new()).len();
            for (_, uid, position) in q.places_to_refresh(50, |_| None) {
                q.set_shown(&uid, position);
                writes += 1;
            }
        }
        writes as f64 / admitted as f64
    }

    #[test]
    fn a_long_line_costs_no_more_place_writes_per_run_than_a_short_one() {
        // A slow line (one run admitted per pass: every place under ten moves each time)
        // and a fast one, short and long. Refreshing every moved place, or a fixed number
        // per pass, costs a slow line several writes per run admitted.
        for (per_pass, passes) in [(1, 200), (50, 60)] {
            let short = refreshes_per_admission(100, per_pass, passes);
            let long = refreshes_per_admission(4_000, per_pass, passes);
            assert!(long <= 1.0 && short <= 1.0, "{long} and {short} per run");
        }
        // Places are still refreshed: the runs at the front show where they are.
        let mut q = line_of(1000);
        q.pump(&mut room(5), &mut HashMap::new());
        let due = q.places_to_refresh(50, |_| None);
        assert_eq!(due.len(), 5, "as many as left the line");
        assert_eq!(due[0].2, 1);
        assert!(due.windows(2).all(|w| w[0].2 < w[1].2), "front first");
        assert!(
            q.places_to_refresh(50, |_| None).is_empty(),
            "nothing left since"
        );
    }

    #[test]
    fn a_place_the_status_shows_after_a_restart_is_refreshed_only_once_it_moved() {
        let mut q = Queue::new(caps());
        for n in 0..30 {
            q.request(entry("a", n));
        }
        q.pump(&mut room(2), &mut HashMap::new());
        // This process wrote no place; the cache shows 22 for a-24 (now 23rd) and 3 for
        // a-5 (now 4th).
        let due = q.places_to_refresh(50, |key| match key.name.as_str() {
            "a-24" => Some(22),
            "a-5" => Some(3),
            _ => None,
        });
        let names: Vec<_> = due.iter().map(|(k, _, p)| (k.name.as_str(), *p)).collect();
        assert_eq!(names, [("a-5", 4)]);
    }

    /// The least time of five for `f`.
    fn least_time(mut f: impl FnMut()) -> std::time::Duration {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    }

    #[test]
    fn finding_and_releasing_a_run_cost_the_same_however_many_wait() {
        // Per operation: a finished run released (it does not wait), a waiting run looked
        // up (each reconcile of it) and asked again. Linear scans made each cost as much as
        // the lines: 64 times more at 64,000 than at 1,000.
        let cost = |n: i64| {
            let mut q = line_of(n);
            least_time(|| {
                for i in 0..2_000 {
                    q.release(&format!("done-{i}"));
                    let e = entry("t0", (i * 7919) % n / 2 * 2);
                    assert!(q.place_in_line(&e.uid).is_some());
                    assert!(matches!(q.request(e), Decision::Queued { .. }));
                }
            })
        };
        let (small, large) = (cost(1_000), cost(64_000));
        assert!(
            large < small * 8 + std::time::Duration::from_millis(5),
            "{large:?} at 64,000 waiting against {small:?} at 1,000"
        );
    }

    #[test]
    fn a_tenants_seats_are_counted_through_seating_releasing_and_forgetting() {
        let mut q = Queue::new(Caps {
            running_per_tenant: 2,
            ..caps()
        });
        for n in 0..4 {
            q.request(entry("a", n));
        }
        q.seat("a-9", "a");
        q.seat("a-9", "a");
        assert_eq!(names(&q.pump(&mut room(10), &mut HashMap::new())), ["a-0"]);
        assert_eq!(q.seated_of("a"), 2);
        q.retain(|uid| uid != "a-9");
        assert_eq!(q.seated_of("a"), 1);
        assert_eq!(names(&q.pump(&mut room(10), &mut HashMap::new())), ["a-1"]);
        q.release("a-0");
        q.release("a-1");
        assert_eq!(q.seated_of("a"), 0);
        assert!(q.seated_per.is_empty());
        assert_eq!(q.waiting(), 2);
        assert!(q.heads_its_line("a-2") && !q.heads_its_line("a-3"));
        q.release("a-2");
        assert_eq!(q.place_in_line("a-3"), Some(1));
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
