//! Prometheus metrics: runs by language and phase, run and queue durations, the queue and
//! the warm pools, reconcile errors.
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub language: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LanguageLabels {
    pub language: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// A write to the Kubernetes API: what for (`run`: on a run's way to its answer; `tidy`:
/// removing what a finished run leaves; `pool`: keeping the warm pools; `event`), its verb
/// and what it wrote (`pods`, `coderuns/status`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub purpose: String,
    pub verb: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

pub type HistogramFamily = Family<LanguageLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    pub runs: Family<RunLabels, Counter>,
    pub run_duration: HistogramFamily,
    pub queue_duration: HistogramFamily,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub queue_waiting: Gauge,
    pub runs_holding: Gauge,
    /// Runs that asked a pool for a pod: got one (hit) or went cold (miss).
    pub pool_hits: Family<LanguageLabels, Counter>,
    pub pool_misses: Family<LanguageLabels, Counter>,
    pub pool_idle: Family<PoolLabels, Gauge>,
    pub pool_created: Family<PoolLabels, Counter>,
    pub is_leader: Gauge,
    pub kube_writes: Family<WriteLabels, Counter>,
    pub registry: Arc<Registry>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("codeinterp_operator");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register("runs", "Runs that reached a final phase", runs.clone());
        let run_duration = HistogramFamily::new_with_constructor(seconds_histogram);
        registry.register(
            "run_duration_seconds",
            "From CodeRun creation to its final phase",
            run_duration.clone(),
        );
        let queue_duration = HistogramFamily::new_with_constructor(seconds_histogram);
        registry.register(
            "queue_duration_seconds",
            "From CodeRun creation to the program's start",
            queue_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile attempts that failed, by error kind",
            reconcile_errors.clone(),
        );
        let queue_waiting = Gauge::default();
        registry.register(
            "queue_waiting_runs",
            "Runs waiting for room",
            queue_waiting.clone(),
        );
        let runs_holding = Gauge::default();
        registry.register(
            "admitted_runs",
            "Runs given room and not finished",
            runs_holding.clone(),
        );
        let pool_hits = Family::<LanguageLabels, Counter>::default();
        registry.register("pool_hits", "Runs that got a warm pod", pool_hits.clone());
        let pool_misses = Family::<LanguageLabels, Counter>::default();
        registry.register(
            "pool_misses",
            "Runs a pool serves that found no free warm pod and started cold",
            pool_misses.clone(),
        );
        let pool_idle = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_idle_pods",
            "Idle, ready warm pods by pool",
            pool_idle.clone(),
        );
        let pool_created = Family::<PoolLabels, Counter>::default();
        registry.register(
            "pool_pods_created",
            "Warm pods created, by pool",
            pool_created.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica is the active one",
            is_leader.clone(),
        );
        let kube_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "kube_writes",
            "Requests this process sent to the Kubernetes API that write (POST, PUT, PATCH, DELETE), by verb and resource",
            kube_writes.clone(),
        );
        Metrics {
            runs,
            run_duration,
            queue_duration,
            reconcile_errors,
            queue_waiting,
            runs_holding,
            pool_hits,
            pool_misses,
            pool_idle,
            pool_created,
            is_leader,
            kube_writes,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a request to the Kubernetes API when it writes.
    pub fn count_request(&self, purpose: &str, method: &http::Method, path: &str) {
        let verb = match *method {
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE => "delete",
            _ => return,
        };
        self.kube_writes
            .get_or_create(&WriteLabels {
                purpose: purpose.to_string(),
                verb: verb.to_string(),
                resource: resource_of(path),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

/// The resource (and subresource) a Kubernetes API path names:
/// `/api/v1/namespaces/ns/pods/p/attach` is `pods/attach`, `/apis/g/v/namespaces/ns/coderuns`
/// is `coderuns`, `/api/v1/nodes/n` is `nodes`.
pub fn resource_of(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Past `api/<version>` or `apis/<group>/<version>`.
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [] => "unknown".to_string(),
        [resource] | [resource, _] => (*resource).to_string(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_resource_and_subresource() {
        for (path, want) in [
            ("/api/v1/namespaces/ns/pods", "pods"),
            ("/api/v1/namespaces/ns/pods/p", "pods"),
            (
                "/api/v1/namespaces/ns/pods/p/attach?stdin=true",
                "pods/attach",
            ),
            (
                "/apis/codeinterp.dev/v1alpha1/namespaces/ns/coderuns/r/status",
                "coderuns/status",
            ),
            ("/apis/events.k8s.io/v1/namespaces/ns/events", "events"),
            ("/api/v1/namespaces/ns", "namespaces"),
            ("/api/v1/nodes/n", "nodes"),
            (
                "/apis/coordination.k8s.io/v1/namespaces/s/leases/l",
                "leases",
            ),
            ("/version", "unknown"),
        ] {
            assert_eq!(resource_of(path), want, "{path}");
        }
    }

    #[test]
    fn only_writes_are_counted() {
        let m = Metrics::default();
        m.count_request("run", &http::Method::GET, "/api/v1/namespaces/ns/pods");
        m.count_request("run", &http::Method::POST, "/api/v1/namespaces/ns/pods");
        m.count_request("run", &http::Method::POST, "/api/v1/namespaces/ns/pods");
        let text = m.encode();
        assert!(
            text.contains(
                r#"codeinterp_operator_kube_writes_total{purpose="run",verb="create",resource="pods"} 2"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"verb="get""#), "{text}");
    }
}
