//! Start-up: settings checked, clients connected, the caches started, then serving
//! until SIGTERM or Ctrl-C.
use std::net::{Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::Context as _;
use codeinterp_store::{Quota, Store};
use kube::Client;

use crate::auth::Keys;
use crate::config::{Config, Settings, parse_api_keys};
use crate::containers::service::CreationLocks;
use crate::files::budget::UploadBudget;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::ratelimit::{RateLimits, quota};
use crate::run_cache::{ContainerCache, RunCache};
use crate::runs::events::StreamSlots;
use crate::runs::finished::FinishedRuns;
use crate::runs::joining::Joining;
use crate::signing::Signer;
use crate::state::{AppState, BINDINGS_CACHED};

fn signer(cfg: &Config) -> anyhow::Result<Signer> {
    match cfg.signing_key.as_deref().filter(|k| !k.is_empty()) {
        Some(key) => Ok(Signer::new(
            key.as_bytes(),
            cfg.signing_key_previous
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(str::as_bytes),
        )?),
        None => {
            tracing::warn!(
                "SIGNING_KEY is not set: signing with a random key; artifact URLs stop working when this process restarts"
            );
            Ok(Signer::random())
        }
    }
}

/// Everything the handlers share, from the settings; the caches and the places in line
/// the runs cache does not show yet (which it tells of each run it receives).
pub fn state(
    cfg: &Config,
    settings: Settings,
    store: Store,
    kube: Client,
    runs: RunCache,
    containers: ContainerCache,
    joining: Arc<Joining>,
) -> anyhow::Result<AppState> {
    let keys = parse_api_keys(&cfg.api_keys)?;
    let signer = signer(cfg)?;
    let nonzero = |n: u32| NonZeroU32::new(n).expect("checked by the settings");
    let store = store.with_upload_parts(settings.upload_parts_buffered);
    let anonymous = quota(cfg.anonymous_rps, nonzero(cfg.anonymous_burst));
    let failures = quota(cfg.auth_failure_rps, nonzero(cfg.auth_failure_burst));
    Ok(AppState {
        rate_limits: Arc::new(RateLimits::new(&keys, anonymous, failures)),
        keys: Arc::new(Keys::new(keys)),
        finished: Arc::new(FinishedRuns::new(
            cfg.run_cache_mb.saturating_mul(1024 * 1024),
        )),
        bindings: Arc::new(quick_cache::sync::Cache::new(BINDINGS_CACHED)),
        readiness: Arc::new(Readiness::default()),
        streams: Arc::new(StreamSlots::new(settings.max_streams_per_tenant)),
        uploads: Arc::new(UploadBudget::new(settings.upload_buffer)),
        quota: Arc::new(Quota::new(settings.storage_quota)),
        settings: Arc::new(settings),
        signer: Arc::new(signer),
        store,
        kube,
        runs,
        containers,
        container_locks: Arc::new(CreationLocks::default()),
        joining,
        metrics: Metrics::default(),
    })
}

async fn bind(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        // Hosts without IPv6.
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("binding port {port}")),
    }
}

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let settings = cfg.settings().map_err(anyhow::Error::msg)?;
    parse_api_keys(&cfg.api_keys)?;
    let store = Store::open(&cfg.shared.storage_url).context("opening object storage")?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let joining = Arc::new(Joining::default());
    let line = joining.clone();
    let (runs, watching) = RunCache::start(
        client.clone(),
        &settings.namespace,
        cfg.shared.shard.as_deref(),
        move |name| line.arrived(name),
    );
    let (containers, watching_containers) = ContainerCache::start(
        client.clone(),
        &settings.namespace,
        cfg.shared.shard.as_deref(),
        |_| {},
    );
    let state = state(&cfg, settings, store, client, runs, containers, joining)?;
    tracing::info!(
        port = cfg.port,
        metrics_port = cfg.metrics_port,
        namespace = %state.settings.namespace,
        shard = cfg.shared.shard.as_deref().unwrap_or("(none)"),
        tenants = state.keys.all().len(),
        public_base_url = %state.settings.public_base_url,
        "apiserver starting"
    );
    let metrics_listener = bind(cfg.metrics_port).await?;
    let metrics_app = crate::health::metrics_app(state.metrics.clone());
    let metrics = axum::serve(metrics_listener, metrics_app);
    let limits = state.rate_limits.clone();
    let housekeeping = async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            limits.housekeeping();
        }
    };
    let sweeping = crate::sweeper::run(state.clone());
    let listener = bind(cfg.port).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let api = axum::serve(
        listener,
        crate::app::router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown());
    // Every task of the process is here: the API ends it (asked to stop); any other that
    // ends is a failure that must not go unnoticed, so it ends the process too.
    tokio::select! {
        served = api => served.context("serving")?,
        _ = watching => anyhow::bail!("the CodeRun watch ended"),
        _ = watching_containers => anyhow::bail!("the CodeContainer watch ended"),
        served = metrics => anyhow::bail!("the metrics server stopped: {served:?}"),
        () = housekeeping => unreachable!("housekeeping never ends"),
        never = sweeping => match never {},
    }
    tracing::info!("apiserver stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
