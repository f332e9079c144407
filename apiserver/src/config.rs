//! Settings: every one a flag and an environment variable. `API_KEYS` and the signing keys
//! are taken as plain strings and parsed afterwards, so that no error message (clap's
//! included) ever repeats a token.
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use codeinterp_crds::{Maxima, MemoryLimit};
use sha2::{Digest, Sha256};

#[derive(Clone, Parser)]
#[command(
    name = "apiserver",
    about = "The OpenAI-style REST API of the code interpreter"
)]
pub struct Config {
    /// Port to listen on (all interfaces).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Port of `/metrics` (Prometheus), apart from the API so it is not public with it.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9091)]
    pub metrics_port: u16,
    /// What the operator must be given the same values of.
    #[command(flatten)]
    pub shared: codeinterp_settings::Shared,
    /// Comma-separated `token:label:rps:burst`; the label is the tenant.
    #[arg(long, env = "API_KEYS", default_value = "", hide_env_values = true)]
    pub api_keys: String,
    /// Base of the signed artifact URLs handed to clients.
    #[arg(long, env = "PUBLIC_BASE_URL", default_value = "http://localhost:8080")]
    pub public_base_url: String,
    /// HMAC key for signed URLs (at least 16 bytes). Without one a random key is made at
    /// start-up, and URLs stop working when the process restarts.
    #[arg(long, env = "SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
    /// The key before the last rotation: URLs it signed stay valid until they expire.
    #[arg(long, env = "SIGNING_KEY_PREVIOUS", hide_env_values = true)]
    pub signing_key_previous: Option<String>,
    /// Largest file accepted by `POST /v1/files` (streamed to object storage).
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Memory all uploads in progress may hold at once, in MiB: each holds what it declared
    /// (Content-Length) or, if more, a part being filled (5 MiB) per `UPLOAD_PARTS_BUFFERED`
    /// and half a MiB; an upload past it is refused with 429 before it is read.
    #[arg(long, env = "UPLOAD_BUFFER_MB", default_value_t = 64)]
    pub upload_buffer_mb: u64,
    /// The same for one tenant's uploads.
    #[arg(long, env = "UPLOAD_BUFFER_PER_TENANT_MB", default_value_t = 32)]
    pub upload_buffer_per_tenant_mb: u64,
    /// Parts (5 MiB each) one upload may hold: 1 reads no more while a part is being sent to
    /// storage; 2 or more read on meanwhile, for faster uploads to a remote store.
    #[arg(long, env = "UPLOAD_PARTS_BUFFERED", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=16))]
    pub upload_parts_buffered: u64,
    /// Files (uploads and output files) older than this many days are deleted; 0 keeps them
    /// until a client deletes them.
    #[arg(long, env = "FILE_RETENTION_DAYS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub file_retention_days: u64,
    /// Run records (with their output) older than this many days are deleted; 0 keeps them.
    #[arg(long, env = "RUN_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub run_retention_days: u64,
    /// How often each tenant's stored bytes are measured (for `STORAGE_QUOTA_MB`) and what is
    /// past retention is deleted.
    #[arg(long, env = "SWEEP_INTERVAL_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sweep_interval_seconds: u64,
    /// Lifetime of signed artifact URLs.
    #[arg(long, env = "URL_TTL_SECONDS", default_value_t = 3600)]
    pub url_ttl_seconds: u64,
    /// Longest a `POST /v1/runs` waits for its run to finish before answering.
    #[arg(long, env = "MAX_WAIT_SECONDS", default_value_t = 330)]
    pub max_wait_seconds: u64,
    /// Added to a run's timeout when waiting for it (queueing, pod start, storing results).
    #[arg(long, env = "WAIT_SLACK_SECONDS", default_value_t = 150)]
    pub wait_slack_seconds: u64,
    /// Deadline for every other request (streams have none).
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
    /// Rate and burst of requests without a bearer token, per client address: signed
    /// downloads, whose signature is checked first (a bad one costs a valid link nothing).
    #[arg(long, env = "ANONYMOUS_RPS", default_value_t = 20.0)]
    pub anonymous_rps: f64,
    #[arg(long, env = "ANONYMOUS_BURST", default_value_t = 40)]
    pub anonymous_burst: u32,
    /// Failed authentications (a wrong or missing token, a bad signature) allowed per client
    /// address: rate and burst. Past them the address gets 429 for a while, whatever token
    /// it sends, so keys cannot be guessed online.
    #[arg(long, env = "AUTH_FAILURE_RPS", default_value_t = 1.0)]
    pub auth_failure_rps: f64,
    #[arg(long, env = "AUTH_FAILURE_BURST", default_value_t = 30)]
    pub auth_failure_burst: u32,
    /// A header carrying the client's address, set by a trusted proxy in front (e.g.
    /// `x-forwarded-for`; its last address is used). Unset: the connection's peer address.
    #[arg(long, env = "TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<String>,
    /// Memory for finished runs served from memory instead of object storage.
    #[arg(long, env = "RUN_CACHE_MB", default_value_t = 64)]
    pub run_cache_mb: u64,
    /// Runs waiting for room, all tenants together: past it a new run is 429 `queue_full`
    /// whoever asks, so the cluster's line cannot grow without bound even when every tenant
    /// stays under `MAX_QUEUED_PER_TENANT`.
    #[arg(long, env = "MAX_QUEUED_TOTAL", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_total: u64,
    /// Bytes of code, stdin and arguments one tenant's unfinished runs may hold in the
    /// cluster (etcd and every cache of CodeRuns), in MiB: past it a new run is 429
    /// `queue_full` until some finish. 0: no cap.
    #[arg(long, env = "MAX_LIVE_SPEC_MB_PER_TENANT", default_value_t = 64)]
    pub max_live_spec_mb_per_tenant: u64,
    /// Live output streams (`/events`) one tenant may hold open at once.
    #[arg(long, env = "MAX_STREAMS_PER_TENANT", default_value_t = 32)]
    pub max_streams_per_tenant: usize,
    /// Browser origins allowed to call `/mcp`, comma-separated (`https://app.example.com`).
    /// A request with any other `Origin` is refused; requests without one (agents, SDKs)
    /// are not affected. Default: none.
    #[arg(long, env = "MCP_ALLOWED_ORIGINS", default_value = "")]
    pub mcp_allowed_origins: String,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

/// What the handlers need to know, decided once at start-up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub public_base_url: String,
    pub namespace: String,
    pub max_upload_bytes: u64,
    pub url_ttl: Duration,
    pub max_wait: Duration,
    pub wait_slack: Duration,
    pub request_timeout: Duration,
    pub maxima: Maxima,
    pub max_queued_per_tenant: usize,
    pub max_queued_total: usize,
    /// Bytes of code, stdin and arguments a tenant's unfinished runs may hold; `None`: no cap.
    pub max_live_spec_bytes_per_tenant: Option<u64>,
    pub max_streams_per_tenant: usize,
    /// Live containers one tenant may have.
    pub max_containers_per_tenant: usize,
    /// The largest memory limit a container may have.
    pub container_max_memory: MemoryLimit,
    /// What a container's folder holds.
    pub container_disk_bytes: u64,
    pub trusted_proxy_header: Option<axum::http::HeaderName>,
    /// What uploads in progress may hold in memory.
    pub upload_buffer: crate::files::budget::Ceilings,
    pub upload_parts_buffered: usize,
    /// The most one tenant may store (files and runs), in bytes; `None`: no quota.
    pub storage_quota: Option<u64>,
    pub file_retention: Option<Duration>,
    pub run_retention: Option<Duration>,
    pub sweep_interval: Duration,
    /// Normalized origins (`scheme://host:port`) that may call `/mcp`.
    pub mcp_allowed_origins: Vec<String>,
}

impl Config {
    /// The settings, or what is wrong with them (naming the setting).
    pub fn settings(&self) -> Result<Settings, String> {
        let rate = |name: &str, rps: f64| {
            if rps.is_finite() && rps > 0.0 && rps <= 1_000_000.0 {
                Ok(())
            } else {
                Err(format!("{name} is {rps}; it must be a number above 0"))
            }
        };
        rate("ANONYMOUS_RPS", self.anonymous_rps)?;
        rate("AUTH_FAILURE_RPS", self.auth_failure_rps)?;
        if self.anonymous_burst == 0 {
            return Err("ANONYMOUS_BURST must be at least 1".into());
        }
        if self.auth_failure_burst == 0 {
            return Err("AUTH_FAILURE_BURST must be at least 1".into());
        }
        if self.max_streams_per_tenant == 0 {
            return Err("MAX_STREAMS_PER_TENANT must be at least 1".into());
        }
        if self.port == self.metrics_port {
            return Err(format!(
                "METRICS_PORT must differ from PORT ({})",
                self.port
            ));
        }
        let trusted_proxy_header = match self
            .trusted_proxy_header
            .as_deref()
            .filter(|h| !h.is_empty())
        {
            None => None,
            Some(h) => Some(
                axum::http::HeaderName::try_from(h)
                    .map_err(|_| format!("TRUSTED_PROXY_HEADER {h:?} is not a header name"))?,
            ),
        };
        let upload_buffer = self.upload_buffer()?;
        let days = |n: u64| (n > 0).then(|| Duration::from_secs(n * 86_400));
        Ok(Settings {
            upload_buffer,
            upload_parts_buffered: self.upload_parts_buffered as usize,
            storage_quota: self.shared.storage_quota_bytes(),
            file_retention: days(self.file_retention_days),
            run_retention: days(self.run_retention_days),
            sweep_interval: Duration::from_secs(self.sweep_interval_seconds),
            public_base_url: self.public_base_url.trim_end_matches('/').to_string(),
            namespace: self.shared.sandbox_namespace.clone(),
            max_upload_bytes: self.max_upload_bytes,
            url_ttl: Duration::from_secs(self.url_ttl_seconds),
            max_wait: Duration::from_secs(self.max_wait_seconds),
            wait_slack: Duration::from_secs(self.wait_slack_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            maxima: self.shared.maxima(),
            max_queued_per_tenant: self.shared.max_queued_per_tenant(),
            max_queued_total: usize::try_from(self.max_queued_total).unwrap_or(usize::MAX),
            max_live_spec_bytes_per_tenant: (self.max_live_spec_mb_per_tenant > 0)
                .then(|| self.max_live_spec_mb_per_tenant.saturating_mul(1024 * 1024)),
            max_streams_per_tenant: self.max_streams_per_tenant,
            max_containers_per_tenant: usize::try_from(self.shared.max_containers_per_tenant)
                .unwrap_or(usize::MAX),
            container_max_memory: self.shared.container_max_memory,
            container_disk_bytes: self.shared.container_disk_mb.saturating_mul(1024 * 1024),
            trusted_proxy_header,
            mcp_allowed_origins: crate::mcp::parse_allowed_origins(&self.mcp_allowed_origins)?,
        })
    }
}

impl Config {
    /// The ceilings on upload memory: each must let one upload of the largest kind in.
    fn upload_buffer(&self) -> Result<crate::files::budget::Ceilings, String> {
        const MIB: u64 = 1024 * 1024;
        let one = codeinterp_store::UPLOAD_PART_BYTES * self.upload_parts_buffered
            + crate::files::budget::CHUNK_BYTES;
        let per_tenant = self.upload_buffer_per_tenant_mb.saturating_mul(MIB);
        let server = self.upload_buffer_mb.saturating_mul(MIB);
        if per_tenant < one {
            return Err(format!(
                "UPLOAD_BUFFER_PER_TENANT_MB is {}; one upload may hold {:.1} MiB \
                 (UPLOAD_PARTS_BUFFERED parts of 5 MiB and a chunk), so it must be at least that",
                self.upload_buffer_per_tenant_mb,
                one as f64 / MIB as f64
            ));
        }
        if server < per_tenant {
            return Err(format!(
                "UPLOAD_BUFFER_MB ({}) must be at least UPLOAD_BUFFER_PER_TENANT_MB ({})",
                self.upload_buffer_mb, self.upload_buffer_per_tenant_mb
            ));
        }
        Ok(crate::files::budget::Ceilings { server, per_tenant })
    }
}

/// One API key. Only a digest of the token is kept, so nothing can print it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub token_sha256: [u8; 32],
    pub label: String,
    pub rps: f64,
    pub burst: NonZeroU32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("API_KEYS is empty: give at least one token:label:rps:burst")]
    Empty,
    #[error("API_KEYS entry {0}: expected token:label:rps:burst")]
    Shape(usize),
    #[error("API_KEYS entry {0}: the token is empty")]
    EmptyToken(usize),
    #[error("API_KEYS entry {0}: label {1:?} must match ^[a-z0-9][a-z0-9-]{{0,62}}$")]
    Label(usize, String),
    #[error("API_KEYS entry {0} (label {1:?}): rps {2:?} must be a number above 0")]
    Rps(usize, String, String),
    #[error("API_KEYS entry {0} (label {1:?}): burst {2:?} must be a whole number from 1")]
    Burst(usize, String, String),
    #[error("API_KEYS entry {0} (label {1:?}) repeats the token of entry {2}")]
    Duplicate(usize, String, usize),
}

/// A tenant label: a DNS label, so it fits a Kubernetes label value and a storage path.
pub fn valid_label(label: &str) -> bool {
    codeinterp_crds::is_api_tenant(label)
}

pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Parses `API_KEYS`. Entries are numbered from 1 in errors, which name the label but never
/// the token. The token is everything before the last three colons, so it may hold colons.
pub fn parse_api_keys(raw: &str) -> Result<Vec<ApiKey>, KeysError> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, entry) in raw
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let n = i + 1;
        let mut parts = entry.rsplitn(4, ':');
        let (Some(burst), Some(rps), Some(label), Some(token)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeysError::Shape(n));
        };
        if token.is_empty() {
            return Err(KeysError::EmptyToken(n));
        }
        if !valid_label(label) {
            return Err(KeysError::Label(n, label.to_string()));
        }
        let rps_value: f64 = rps
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0 && *r <= 1_000_000.0)
            .ok_or_else(|| KeysError::Rps(n, label.to_string(), rps.to_string()))?;
        let burst_value = burst
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| KeysError::Burst(n, label.to_string(), burst.to_string()))?;
        let digest = token_digest(token);
        if let Some(first) = keys.iter().position(|k| k.token_sha256 == digest) {
            return Err(KeysError::Duplicate(n, label.to_string(), first + 1));
        }
        keys.push(ApiKey {
            token_sha256: digest,
            label: label.to_string(),
            rps: rps_value,
            burst: burst_value,
        });
    }
    if keys.is_empty() {
        return Err(KeysError::Empty);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_keys_parses_into_tenants_with_their_rates() {
        let keys = parse_api_keys("dev_123:dev:10:20, other:acme-2:0.5:1").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].label, "dev");
        assert_eq!(keys[0].rps, 10.0);
        assert_eq!(keys[0].burst.get(), 20);
        assert_eq!(keys[0].token_sha256, token_digest("dev_123"));
        assert_eq!(keys[1].label, "acme-2");
        assert_eq!(keys[1].rps, 0.5);
    }

    #[test]
    fn a_token_may_contain_colons() {
        let keys = parse_api_keys("sk:with:colons:acme:1:1").unwrap();
        assert_eq!(keys[0].token_sha256, token_digest("sk:with:colons"));
        assert_eq!(keys[0].label, "acme");
    }

    #[test]
    fn errors_name_the_entry_and_never_the_token() {
        let cases = [
            (
                "secret-token-1:Acme:1:1",
                KeysError::Label(1, "Acme".into()),
            ),
            ("ok:a:1:1,secret-token-1:b:1", KeysError::Shape(2)),
            (
                "secret-token-1:b:fast:1",
                KeysError::Rps(1, "b".into(), "fast".into()),
            ),
            (
                "secret-token-1:b:0:1",
                KeysError::Rps(1, "b".into(), "0".into()),
            ),
            (
                "secret-token-1:b:1:0",
                KeysError::Burst(1, "b".into(), "0".into()),
            ),
            (
                "secret-token-1:a:1:1,secret-token-1:b:1:1",
                KeysError::Duplicate(2, "b".into(), 1),
            ),
            (":b:1:1", KeysError::EmptyToken(1)),
            ("", KeysError::Empty),
            (" , ", KeysError::Empty),
        ];
        for (raw, want) in cases {
            let got = parse_api_keys(raw).unwrap_err();
            assert_eq!(got, want, "{raw}");
            assert!(!got.to_string().contains("secret-token"), "{got}");
        }
    }

    #[test]
    fn labels_are_dns_labels() {
        assert!(valid_label("a"));
        assert!(valid_label("0team-x"));
        assert!(valid_label(&"a".repeat(63)));
        assert!(!valid_label(&"a".repeat(64)));
        assert!(!valid_label("-a"));
        assert!(!valid_label("_cluster"));
        assert!(!valid_label("a_b"));
        assert!(!valid_label("A"));
        assert!(!valid_label(""));
    }

    #[test]
    fn settings_follow_the_operator_maxima() {
        let cfg = Config::parse_from(["apiserver", "--max-timeout-ms", "10000"]);
        let s = cfg.settings().unwrap();
        assert_eq!(s.maxima.max.timeout_ms, 10_000);
        assert_eq!(s.maxima.defaults.timeout_ms, 10_000);
        assert_eq!(s.namespace, "codeinterp");
        assert_eq!(s.public_base_url, "http://localhost:8080");
        assert_eq!(s.upload_buffer.server, 64 << 20);
        assert_eq!(s.upload_buffer.per_tenant, 32 << 20);
        assert_eq!(s.file_retention, None);
        assert_eq!(s.run_retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(s.storage_quota, Some(10 << 30));
    }

    #[test]
    fn bad_settings_are_start_up_errors_naming_the_setting_not_panics() {
        let check = |args: &[&str]| {
            let mut all = vec!["apiserver"];
            all.extend_from_slice(args);
            Config::parse_from(all).settings().unwrap_err()
        };
        assert!(check(&["--anonymous-rps", "0"]).contains("ANONYMOUS_RPS"));
        assert!(check(&["--anonymous-rps", "NaN"]).contains("ANONYMOUS_RPS"));
        assert!(check(&["--anonymous-burst", "0"]).contains("ANONYMOUS_BURST"));
        assert!(check(&["--auth-failure-rps=-1"]).contains("AUTH_FAILURE_RPS"));
        assert!(check(&["--metrics-port", "8080"]).contains("METRICS_PORT"));
        assert!(check(&["--trusted-proxy-header", "bad header"]).contains("TRUSTED_PROXY_HEADER"));
        assert!(check(&["--mcp-allowed-origins", "example.com"]).contains("MCP_ALLOWED_ORIGINS"));
        assert!(
            check(&["--upload-buffer-per-tenant-mb", "5"]).contains("UPLOAD_BUFFER_PER_TENANT_MB")
        );
        assert!(
            check(&[
                "--upload-buffer-per-tenant-mb",
                "10",
                "--upload-parts-buffered",
                "2"
            ])
            .contains("UPLOAD_BUFFER_PER_TENANT_MB")
        );
        assert!(check(&["--upload-buffer-mb", "16"]).contains("UPLOAD_BUFFER_MB"));
    }
}
