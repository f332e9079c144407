//! Start-up: settings checked, clients connected, the run cache started, then serving
//! until SIGTERM or Ctrl-C.
use std::net::{Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::Context as _;
use codeinterp_store::Store;
use kube::Client;

use crate::auth::Keys;
use crate::config::{Config, parse_api_keys};
use crate::metrics::Metrics;
use crate::ratelimit::{RateLimits, quota};
use crate::run_cache::RunCache;
use crate::signing::Signer;
use crate::state::AppState;

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

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let keys = parse_api_keys(&cfg.api_keys)?;
    let signer = signer(&cfg)?;
    let anonymous = quota(
        cfg.anonymous_rps,
        NonZeroU32::new(cfg.anonymous_burst).context("ANONYMOUS_BURST must be at least 1")?,
    );
    anyhow::ensure!(
        cfg.anonymous_rps.is_finite() && cfg.anonymous_rps > 0.0,
        "ANONYMOUS_RPS must be above 0"
    );
    let store = Store::open(&cfg.storage_url).context("opening object storage")?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let settings = cfg.settings();
    let runs = RunCache::start(client.clone(), &settings.namespace, cfg.shard.as_deref());
    tracing::info!(
        port = cfg.port,
        namespace = %settings.namespace,
        shard = cfg.shard.as_deref().unwrap_or("(none)"),
        tenants = keys.len(),
        public_base_url = %settings.public_base_url,
        seccomp_profile = cfg.seccomp_profile.as_deref().unwrap_or("(operator default)"),
        apparmor_profile = cfg.apparmor_profile.as_deref().unwrap_or("(operator default)"),
        runner_image_python = cfg.runner_image_python.as_deref().unwrap_or("(operator default)"),
        runner_image_node = cfg.runner_image_node.as_deref().unwrap_or("(operator default)"),
        runner_image_ruby = cfg.runner_image_ruby.as_deref().unwrap_or("(operator default)"),
        runner_image_php = cfg.runner_image_php.as_deref().unwrap_or("(operator default)"),
        "apiserver starting"
    );
    let state = AppState {
        rate_limits: Arc::new(RateLimits::new(&keys, anonymous)),
        keys: Arc::new(Keys::new(keys)),
        settings: Arc::new(settings),
        signer: Arc::new(signer),
        store,
        kube: client,
        runs,
        metrics: Metrics::default(),
    };
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, cfg.port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        // Hosts without IPv6.
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", cfg.port))
            .await
            .with_context(|| format!("binding port {}", cfg.port))?,
    };
    tracing::info!(address = %listener.local_addr()?, "listening");
    axum::serve(listener, crate::routes::app(state))
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving")?;
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
