//! Prometheus metrics: runs by language and phase, run and queue durations, reconcile errors.
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    pub registry: Arc<Registry>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
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
        Metrics {
            runs,
            run_duration,
            queue_duration,
            reconcile_errors,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}
