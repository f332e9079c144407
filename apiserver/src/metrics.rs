//! Prometheus metrics: requests by matched route and status, request durations, rate-limited
//! requests, and how long waited-for runs took.
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub language: String,
    pub status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    rate_limited: Family<TenantLabels, Counter>,
    auth_failures: Counter,
    run_latency: HistogramFamily<RunLabels>,
    registry: Arc<Registry>,
}

fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn run_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("codeinterp_apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by matched route and status",
            requests.clone(),
        );
        let request_duration =
            HistogramFamily::<RouteLabels>::new_with_constructor(request_buckets);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response's headers, by matched route",
            request_duration.clone(),
        );
        let rate_limited = Family::<TenantLabels, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused with 429, by tenant",
            rate_limited.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed authentications (wrong or missing tokens, bad signatures)",
            auth_failures.clone(),
        );
        let run_latency = HistogramFamily::<RunLabels>::new_with_constructor(run_buckets);
        registry.register(
            "run_latency_seconds",
            "From POST /v1/runs to the run's final status, for waited-for runs",
            run_latency.clone(),
        );
        Metrics {
            requests,
            request_duration,
            rate_limited,
            auth_failures,
            run_latency,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn rate_limited(&self, tenant: &str) {
        self.rate_limited
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .inc();
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    pub fn run_finished(&self, language: &str, status: &str, seconds: f64) {
        self.run_latency
            .get_or_create(&RunLabels {
                language: language.to_string(),
                status: status.to_string(),
            })
            .observe(seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: counts every request under its route template (never the raw path, whose
/// ids would make the label set unbounded).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .request_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
