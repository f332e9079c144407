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
    /// Runs this process keeps work notes for (its index's size).
    pub runs_tracked: Gauge,
    pub pool: PoolMetrics,
    pub is_leader: Gauge,
    pub kube_writes: Family<WriteLabels, Counter>,
    pub registry: Arc<Registry>,
}

/// The warm pools'.
#[derive(Clone)]
pub struct PoolMetrics {
    /// Runs that asked a pool for a pod: got one (hit) or went cold (miss).
    pub hits: Family<LanguageLabels, Counter>,
    pub misses: Family<LanguageLabels, Counter>,
    pub idle: Family<PoolLabels, Gauge>,
    /// The size each pool is kept at now (from its arrival rate, within its bounds).
    pub target: Family<PoolLabels, Gauge>,
    pub created: Family<PoolLabels, Counter>,
}

impl PoolMetrics {
    fn registered(r: &mut Registry) -> Self {
        PoolMetrics {
            hits: registered(
                r,
                "pool_hits",
                "Runs that got a warm pod",
                Family::default(),
            ),
            misses: registered(
                r,
                "pool_misses",
                "Runs a pool serves that found no free warm pod and started cold",
                Family::default(),
            ),
            idle: registered(
                r,
                "pool_idle_pods",
                "Idle, ready warm pods by pool",
                Family::default(),
            ),
            target: registered(
                r,
                "pool_target_pods",
                "The size each pool is kept at now, by pool",
                Family::default(),
            ),
            created: registered(
                r,
                "pool_pods_created",
                "Warm pods created, by pool",
                Family::default(),
            ),
        }
    }
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

/// Registers a metric and returns it.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("codeinterp_operator");
        let histogram = || HistogramFamily::new_with_constructor(seconds_histogram);
        Metrics {
            runs: registered(
                &mut r,
                "runs",
                "Runs that reached a final phase",
                Family::default(),
            ),
            run_duration: registered(
                &mut r,
                "run_duration_seconds",
                "From CodeRun creation to its final phase",
                histogram(),
            ),
            queue_duration: registered(
                &mut r,
                "queue_duration_seconds",
                "From CodeRun creation to the program's start",
                histogram(),
            ),
            reconcile_errors: registered(
                &mut r,
                "reconcile_errors",
                "Reconcile attempts that failed, by error kind",
                Family::default(),
            ),
            queue_waiting: registered(
                &mut r,
                "queue_waiting_runs",
                "Runs waiting for room",
                Gauge::default(),
            ),
            runs_holding: registered(
                &mut r,
                "admitted_runs",
                "Runs given room and not finished",
                Gauge::default(),
            ),
            runs_tracked: registered(
                &mut r,
                "tracked_runs",
                "Runs the operator keeps notes for in its index",
                Gauge::default(),
            ),
            pool: PoolMetrics::registered(&mut r),
            is_leader: registered(
                &mut r,
                "leader",
                "1 while this replica is the active one",
                Gauge::default(),
            ),
            kube_writes: registered(
                &mut r,
                "kube_writes",
                "Requests this process sent to the Kubernetes API that write (POST, PUT, PATCH, DELETE), by verb and resource",
                Family::default(),
            ),
            registry: Arc::new(r),
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
