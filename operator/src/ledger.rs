//! What the cluster's pods take, node by node, kept up to date from the pod watch: the room
//! the queue admits into is worked out from one sum per node and the few pods not bound yet,
//! not from every pod in the cluster each time the queue is pumped. (Pumped a few times per
//! run, a pass over every pod made each run cost as much as the pods there were: quadratic
//! in the runs of a large cluster.) A pod's requests are read once, when it changes.
use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::admission::{Demand, takes_room};

/// Where a pod's requests count: on its node, or (not bound yet) wherever it will fit.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    node: Option<String>,
    demand: Demand,
}

/// What one node's pods request in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub pods: i64,
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
}

impl Taken {
    fn add(&mut self, d: Demand, sign: i64) {
        self.pods += sign;
        self.cpu_millicores += sign * d.cpu_millicores as i64;
        self.memory_bytes += sign * d.memory_bytes as i64;
    }
}

/// The pods that take room, by UID, with their sums per node.
#[derive(Debug, Default)]
pub struct Ledger {
    pods: HashMap<String, Held>,
    by_node: HashMap<String, Taken>,
    unbound: HashMap<String, Demand>,
    /// Pods carrying a pool's label, by pool: (namespace, name) of each, and by UID.
    by_pool: HashMap<String, BTreeSet<(String, String)>>,
    pooled: HashMap<String, (String, (String, String))>,
    /// A relist under way (the watch restarted): the pods it has shown so far. The sums in
    /// use stay those of the last list until it is done, as the pod cache does.
    relist: Option<Box<Ledger>>,
}

impl Ledger {
    /// The pod as it is now (added, changed, or ended).
    pub fn apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.uid() else {
            return;
        };
        self.remove(&uid);
        if let Some(pool) = pod.labels().get(codeinterp_crds::POOL_LABEL) {
            let at = (pod.namespace().unwrap_or_default(), pod.name_any());
            self.by_pool
                .entry(pool.clone())
                .or_default()
                .insert(at.clone());
            self.pooled.insert(uid.clone(), (pool.clone(), at));
        }
        if !takes_room(pod) {
            return;
        }
        let held = Held {
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            demand: crate::admission::pod_demand(pod),
        };
        match &held.node {
            Some(node) => self
                .by_node
                .entry(node.clone())
                .or_default()
                .add(held.demand, 1),
            None => {
                self.unbound.insert(uid.clone(), held.demand);
            }
        }
        self.pods.insert(uid, held);
    }

    /// The pod is gone.
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = pod.uid() {
            self.remove(&uid);
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some((pool, at)) = self.pooled.remove(uid)
            && let Some(pods) = self.by_pool.get_mut(&pool)
        {
            pods.remove(&at);
            if pods.is_empty() {
                self.by_pool.remove(&pool);
            }
        }
        let Some(held) = self.pods.remove(uid) else {
            return;
        };
        match held.node {
            Some(node) => {
                if let Some(taken) = self.by_node.get_mut(&node) {
                    taken.add(held.demand, -1);
                    if taken.pods == 0 {
                        self.by_node.remove(&node);
                    }
                }
            }
            None => {
                self.unbound.remove(uid);
            }
        }
    }

    /// The watch lists every pod again: what it shows next replaces all.
    pub fn relist_begins(&mut self) {
        self.relist = Some(Box::default());
    }

    /// A pod of the relist under way (a pod applied outside one is simply applied).
    pub fn relisted(&mut self, pod: &Pod) {
        match self.relist.as_mut() {
            Some(next) => next.apply(pod),
            None => self.apply(pod),
        }
    }

    /// The relist is complete: its pods are the cluster's.
    pub fn relist_done(&mut self) {
        if let Some(next) = self.relist.take() {
            *self = *next;
        }
    }

    /// What the pods bound to `node` request.
    pub fn on_node(&self, node: &str) -> Taken {
        self.by_node.get(node).copied().unwrap_or_default()
    }

    /// What the pods not bound to a node yet request, each.
    pub fn unbound(&self) -> impl Iterator<Item = Demand> + '_ {
        self.unbound.values().copied()
    }

    /// Where the pods labelled as `pool`'s are (namespace, name): a pool is tended from
    /// them, not from every pod.
    pub fn pool_pods(&self, pool: &str) -> Vec<(String, String)> {
        self.by_pool
            .get(pool)
            .map(|pods| pods.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Room;
    use crate::placement::Placement;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn pod(uid: &str, node: Option<&str>, cpu: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]
            },
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    /// The room from the ledger is the room from every pod, whatever the pods did.
    #[test]
    fn the_ledger_gives_the_room_a_pass_over_every_pod_gives() {
        let nodes = [node("a"), node("b")];
        let placement = Placement::default();
        let mut ledger = Ledger::default();
        let mut pods: HashMap<String, Pod> = HashMap::new();
        let check = |ledger: &Ledger, pods: &HashMap<String, Pod>| {
            let reserved = [Demand {
                cpu_millicores: 100,
                memory_bytes: 1 << 20,
            }];
            let every = Room::of_cluster(&nodes, pods.values(), reserved, &placement);
            let kept = Room::of_ledger(&nodes, ledger, reserved, &placement);
            assert_eq!(every, kept);
        };
        let steps: Vec<(&str, Option<&str>, &str, &str, bool)> = vec![
            ("p1", None, "500m", "Pending", false),
            ("p2", Some("a"), "1", "Running", false),
            ("p1", Some("b"), "500m", "Running", false),
            ("p3", Some("a"), "250m", "Running", false),
            ("p2", Some("a"), "1", "Succeeded", false),
            ("p3", Some("a"), "250m", "Running", true),
            ("p4", Some("gone"), "2", "Running", false),
            ("p5", None, "3", "Pending", false),
        ];
        for (uid, on, cpu, phase, deleted) in steps {
            let p = pod(uid, on, cpu, phase);
            if deleted {
                ledger.delete(&p);
                pods.remove(uid);
            } else {
                ledger.apply(&p);
                pods.insert(uid.into(), p);
            }
            check(&ledger, &pods);
        }
        // A relist replaces all, once it is done: a pod deleted while the watch was down
        // leaves no trace.
        ledger.relist_begins();
        ledger.relisted(&pods["p1"]);
        check(&ledger, &pods);
        ledger.relist_done();
        pods.retain(|uid, _| uid == "p1");
        check(&ledger, &pods);
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_pools_pods_are_found_by_its_label_until_they_go() {
        let mut ledger = Ledger::default();
        let mut p = pod("u1", None, "1", "Pending");
        p.metadata.labels =
            Some([(codeinterp_crds::POOL_LABEL.to_string(), "py".to_string())].into());
        ledger.apply(&p);
        ledger.apply(&pod("u2", None, "1", "Pending"));
        assert_eq!(
            ledger.pool_pods("py"),
            vec![("ns".to_string(), "u1".to_string())]
        );
        // Ended pods stay (the pool removes them); relabelled or deleted ones go.
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        ledger.apply(&p);
        assert_eq!(ledger.pool_pods("py").len(), 1);
        ledger.delete(&p);
        assert!(ledger.pool_pods("py").is_empty());
        assert!(ledger.by_pool.is_empty() && ledger.pooled.is_empty());
    }

    /// The room costs the nodes and the unbound pods, not the pods: with 10,000 pods bound,
    /// working it out reads none of them (each was read once, when it changed).
    #[test]
    fn working_out_the_room_reads_no_pod_whatever_their_number() {
        let nodes: Vec<Node> = (0..100).map(|i| node(&format!("n{i}"))).collect();
        let mut ledger = Ledger::default();
        for i in 0..10_000 {
            let on = format!("n{}", i % 100);
            ledger.apply(&pod(&format!("p{i}"), Some(&on), "10m", "Running"));
        }
        let read = crate::admission::pods_read();
        for _ in 0..1_000 {
            Room::of_ledger(&nodes, &ledger, [], &Placement::default());
        }
        assert_eq!(crate::admission::pods_read(), read, "a pod was read again");
        assert_eq!(ledger.on_node("n7").pods, 100);
    }
}
