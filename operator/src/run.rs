//! Start-up: the controller, its watches, and the metrics/health endpoint.
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use codeinterp_crds::{CodeRun, RUNNER_LABEL, SHARD_LABEL};
use codeinterp_store::Store;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let store = Store::open(&cfg.storage_url).context("opening object storage")?;
    let metrics = Metrics::default();
    let reporter = Reporter {
        controller: reconcile::MANAGER.into(),
        instance: std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        maxima: cfg.maxima(),
        recorder: Recorder::new(client.clone(), reporter),
        store,
        metrics: metrics.clone(),
        apparmor_nodes: std::sync::Mutex::new(None),
        cfg: cfg.clone(),
    });

    let (runs, pods): (Api<CodeRun>, Api<Pod>) = match &cfg.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Fail fast with a clear message when the CRD is not installed.
    runs.list(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing CodeRuns (is the CRD installed?)")?;

    let metrics_app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.encode())),
        )
        .route("/healthz", get(|| std::future::ready("ok")));
    let listener = tokio::net::TcpListener::bind(&cfg.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", cfg.metrics_addr))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics_app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });

    info!(
        namespace = cfg.namespace.as_deref().unwrap_or("*"),
        "operator started"
    );
    let shard = match &cfg.shard {
        Some(shard) => format!("{SHARD_LABEL}={shard}"),
        None => format!("!{SHARD_LABEL}"),
    };
    Controller::new(runs, watcher::Config::default().labels(&shard))
        .owns(
            pods,
            watcher::Config::default().labels(&format!("{RUNNER_LABEL}=true")),
        )
        .with_config(ControllerConfig::default().concurrency(cfg.concurrency))
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    info!("operator stopped");
    Ok(())
}
