//! Operator settings: every one a flag and an environment variable.
use clap::{Parser, ValueEnum};
use codeinterp_crds::{Language, Maxima};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AppArmorMode {
    /// Every runner pod gets the profile; runs fail if the nodes cannot enforce it.
    Required,
    /// Apply the profile when the nodes report AppArmor enabled; record when not.
    WhenAvailable,
    /// Never apply it.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UserNamespaces {
    /// Run every runner pod in its own user namespace (`hostUsers: false`).
    On,
    Off,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "operator",
    about = "Reconciles CodeRuns into sandboxed runner pods"
)]
pub struct Config {
    /// Watch CodeRuns in this namespace only (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Serve only CodeRuns labelled `codeinterp.dev/shard=<this>`; without it, only those
    /// with no shard label. Lets several operators (e.g. one per storage backend) share a
    /// cluster without touching each other's runs.
    #[arg(long, env = "SHARD")]
    pub shard: Option<String>,
    /// Where results go: a local directory or an object_store URL (s3://...).
    #[arg(
        long,
        env = "STORAGE_URL",
        default_value = "/var/lib/codeinterp/storage"
    )]
    pub storage_url: String,
    /// Seccomp profile for runner pods: a path under the kubelet's seccomp directory
    /// (Localhost) or `RuntimeDefault`.
    #[arg(
        long,
        env = "SECCOMP_PROFILE",
        default_value = "codeinterp/runner.json"
    )]
    pub seccomp_profile: String,
    /// AppArmor profile name loaded on the nodes.
    #[arg(long, env = "APPARMOR_PROFILE", default_value = "codeinterp-runner")]
    pub apparmor_profile: String,
    #[arg(
        long,
        env = "APPARMOR_MODE",
        value_enum,
        default_value = "when-available"
    )]
    pub apparmor_mode: AppArmorMode,
    #[arg(long, env = "USER_NAMESPACES", value_enum, default_value = "on")]
    pub user_namespaces: UserNamespaces,
    /// RuntimeClass for runner pods (e.g. gvisor), if any.
    #[arg(long, env = "RUNTIME_CLASS")]
    pub runtime_class: Option<String>,
    #[arg(
        long,
        env = "RUNNER_IMAGE_PYTHON",
        default_value = "localhost/codeinterp/runner-python:dev"
    )]
    pub image_python: String,
    #[arg(
        long,
        env = "RUNNER_IMAGE_NODE",
        default_value = "localhost/codeinterp/runner-node:dev"
    )]
    pub image_node: String,
    #[arg(
        long,
        env = "RUNNER_IMAGE_RUBY",
        default_value = "localhost/codeinterp/runner-ruby:dev"
    )]
    pub image_ruby: String,
    #[arg(
        long,
        env = "RUNNER_IMAGE_PHP",
        default_value = "localhost/codeinterp/runner-php:dev"
    )]
    pub image_php: String,
    /// Finished CodeRuns (and their pods) are deleted this long after they end; the run
    /// record stays in object storage.
    #[arg(long, env = "RUN_TTL_SECONDS", default_value_t = 3600)]
    pub run_ttl_seconds: u64,
    /// A run whose pod has not started after this long fails (unschedulable, image pull...).
    #[arg(long, env = "START_TIMEOUT_SECONDS", default_value_t = 120)]
    pub start_timeout_seconds: u64,
    /// Added to a run's timeout for the pod's activeDeadlineSeconds backstop.
    #[arg(long, env = "DEADLINE_SLACK_SECONDS", default_value_t = 30)]
    pub deadline_slack_seconds: u64,
    /// Most CodeRuns reconciled at once.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,
    /// Prometheus metrics and health on this address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: String,
    /// Operator-wide ceilings on per-run limits.
    #[arg(long, env = "MAX_TIMEOUT_MS", default_value_t = 300_000)]
    pub max_timeout_ms: u64,
    #[arg(long, env = "MAX_MEMORY_MB", default_value_t = 4096)]
    pub max_memory_mb: u64,
}

impl Config {
    pub fn image(&self, language: Language) -> &str {
        match language {
            Language::Python => &self.image_python,
            Language::Node => &self.image_node,
            Language::Ruby => &self.image_ruby,
            Language::Php => &self.image_php,
        }
    }

    pub fn maxima(&self) -> Maxima {
        let mut m = Maxima::default();
        m.max.timeout_ms = self.max_timeout_ms;
        m.max.memory_mb = self.max_memory_mb;
        m.defaults.timeout_ms = m.defaults.timeout_ms.min(m.max.timeout_ms);
        m.defaults.memory_mb = m.defaults.memory_mb.min(m.max.memory_mb);
        m
    }

    /// Settings for tests: the defaults, as if no flag were given.
    pub fn for_tests() -> Self {
        Config::parse_from(["operator"])
    }
}
