//! Operator settings: every one a flag and an environment variable, checked at start-up so a
//! bad value is an error that names its setting.
use std::time::Duration;

use clap::{Parser, ValueEnum};
use codeinterp_crds::{EffectiveLimits, Language, Maxima};

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

/// The seccomp profile of runner pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seccomp {
    RuntimeDefault,
    /// A path under the kubelet's seccomp directory.
    Localhost(String),
}

impl Seccomp {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "RuntimeDefault" => Ok(Seccomp::RuntimeDefault),
            "" => Err(
                "give a profile path under the kubelet's seccomp directory, or RuntimeDefault"
                    .into(),
            ),
            p if p.starts_with('/') || p.split('/').any(|c| c == "..") => Err(format!(
                "{p:?} must be relative to the kubelet's seccomp directory"
            )),
            p => Ok(Seccomp::Localhost(p.to_string())),
        }
    }

    /// As recorded in `status.applied.seccomp`.
    pub fn describe(&self) -> String {
        match self {
            Seccomp::RuntimeDefault => "RuntimeDefault".into(),
            Seccomp::Localhost(p) => format!("Localhost/{p}"),
        }
    }
}

/// A warm pool: `size` idle pods of one language and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    pub language: Language,
    pub size: usize,
    pub memory_mb: u64,
    pub cpu_millicores: u64,
    pub disk_mb: u64,
}

impl PoolSpec {
    /// The pool's name, also its pods' name prefix and label value.
    pub fn name(&self) -> String {
        format!(
            "pool-{}-{}m-{}c-{}d",
            self.language.as_str(),
            self.memory_mb,
            self.cpu_millicores,
            self.disk_mb
        )
    }

    /// Whether a run with these limits fits this pool's pods exactly.
    pub fn serves(&self, language: Language, limits: &EffectiveLimits) -> bool {
        self.language == language
            && self.memory_mb == limits.memory_mb
            && self.cpu_millicores == limits.cpu_millicores
            && self.disk_mb == limits.disk_mb
    }
}

/// Parses `WARM_POOLS`: comma-separated `language[:memory_mb[:cpu_millicores[:disk_mb]]]=size`;
/// unset parts take the run defaults, so `python=2` serves runs that set no limits.
pub fn parse_pools(raw: &str, defaults: &EffectiveLimits) -> Result<Vec<PoolSpec>, String> {
    let mut pools: Vec<PoolSpec> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| format!("WARM_POOLS entry {entry:?}: {why}");
        let (shape, size) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected language[:memory_mb[:cpu_millicores[:disk_mb]]]=size"))?;
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| bad("the size is not a number"))?;
        let mut parts = shape.split(':');
        let language: Language = parts
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|e: String| bad(&e))?;
        let mut number = |default: u64, what: &str| -> Result<u64, String> {
            match parts.next() {
                None | Some("") => Ok(default),
                Some(n) => n
                    .trim()
                    .parse()
                    .map_err(|_| bad(&format!("{what} is not a number"))),
            }
        };
        let pool = PoolSpec {
            language,
            size,
            memory_mb: number(defaults.memory_mb, "memory_mb")?,
            cpu_millicores: number(defaults.cpu_millicores, "cpu_millicores")?,
            disk_mb: number(defaults.disk_mb, "disk_mb")?,
        };
        if pools.iter().any(|p| p.name() == pool.name()) {
            return Err(bad("the same pool is given twice"));
        }
        pools.push(pool);
    }
    Ok(pools)
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
    /// What the REST API must be given the same values of.
    #[command(flatten)]
    pub shared: codeinterp_settings::Shared,
    /// Seccomp profile for runner pods: a path under the kubelet's seccomp directory
    /// (Localhost) or `RuntimeDefault`.
    #[arg(long, env = "SECCOMP_PROFILE", default_value = "codeinterp/runner.json", value_parser = Seccomp::parse)]
    pub seccomp: Seccomp,
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
    /// A run whose pod has not started this long after it was created fails (an image that
    /// cannot be pulled, a node gone). Time spent waiting in the queue does not count.
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
    /// Most runs of one tenant running at once (0: no cap).
    #[arg(long, env = "MAX_RUNNING_PER_TENANT", default_value_t = 0)]
    pub max_running_per_tenant: usize,
    /// Most runs running at once in all (0: as many as the cluster has room for).
    #[arg(long, env = "MAX_CONCURRENT_RUNS", default_value_t = 0)]
    pub max_concurrent_runs: usize,
    /// A run waiting for room this long fails as `queue_timeout`.
    #[arg(long, env = "QUEUE_TIMEOUT_SECONDS", default_value_t = 900)]
    pub queue_timeout_seconds: u64,
    /// Warm pools, comma-separated `language[:memory_mb[:cpu_millicores[:disk_mb]]]=size`.
    #[arg(long, env = "WARM_POOLS", default_value = "")]
    pub warm_pools: String,
    /// An idle pool pod older than this is replaced by a fresh one.
    #[arg(long, env = "POOL_MAX_IDLE_SECONDS", default_value_t = 1800)]
    pub pool_max_idle_seconds: u64,
    /// The Lease that elects the one active replica (several may run).
    #[arg(long, env = "LEASE_NAME", default_value = "codeinterp-operator")]
    pub lease_name: String,
    /// The Lease's namespace (default: the operator's own, from POD_NAMESPACE).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,
    /// Seconds a leader's lease lasts without renewal: a standby takes over this long after
    /// the leader dies.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 6)]
    pub lease_duration_seconds: u64,
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
        self.shared.maxima()
    }

    pub fn pools(&self) -> Vec<PoolSpec> {
        parse_pools(&self.warm_pools, &self.maxima().defaults).unwrap_or_default()
    }

    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| self.pod_namespace.clone())
            .unwrap_or_else(|| "default".into())
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs(self.queue_timeout_seconds)
    }

    /// Everything that can be wrong with the settings, each naming its setting.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("RECONCILE_CONCURRENCY must be at least 1".into());
        }
        if self.start_timeout_seconds == 0 {
            return Err("START_TIMEOUT_SECONDS must be at least 1".into());
        }
        if self.lease_duration_seconds < 2 {
            return Err("LEASE_DURATION_SECONDS must be at least 2".into());
        }
        let maxima = self.maxima();
        for pool in parse_pools(&self.warm_pools, &maxima.defaults)? {
            let m = &maxima.max;
            if pool.memory_mb > m.memory_mb || pool.memory_mb < 32 {
                return Err(format!(
                    "WARM_POOLS: pool {} asks memory_mb outside 32..={}",
                    pool.name(),
                    m.memory_mb
                ));
            }
            if pool.cpu_millicores > m.cpu_millicores || pool.cpu_millicores < 100 {
                return Err(format!(
                    "WARM_POOLS: pool {} asks cpu_millicores outside 100..={}",
                    pool.name(),
                    m.cpu_millicores
                ));
            }
            if pool.disk_mb > m.disk_mb || pool.disk_mb == 0 {
                return Err(format!(
                    "WARM_POOLS: pool {} asks disk_mb outside 1..={}",
                    pool.name(),
                    m.disk_mb
                ));
            }
        }
        Ok(())
    }

    /// Settings for tests: the defaults, as if no flag were given.
    pub fn for_tests() -> Self {
        Config::parse_from(["operator"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_take_the_run_defaults_for_unset_parts() {
        let d = Maxima::default().defaults;
        let pools = parse_pools("python=2, node:256=1,ruby:128:500:16=3", &d).unwrap();
        assert_eq!(pools.len(), 3);
        assert_eq!(
            (pools[0].language, pools[0].size, pools[0].memory_mb),
            (Language::Python, 2, d.memory_mb)
        );
        assert!(pools[0].serves(Language::Python, &d));
        assert_eq!((pools[1].memory_mb, pools[1].disk_mb), (256, d.disk_mb));
        assert_eq!((pools[2].cpu_millicores, pools[2].disk_mb), (500, 16));
        assert!(!pools[1].serves(Language::Node, &d));
        assert_eq!(parse_pools("", &d).unwrap(), vec![]);
    }

    #[test]
    fn bad_pools_are_errors_that_name_the_entry() {
        let d = Maxima::default().defaults;
        for bad in [
            "python",
            "cobol=1",
            "python=x",
            "python:lots=1",
            "python=1,python=2",
        ] {
            let e = parse_pools(bad, &d).unwrap_err();
            assert!(e.starts_with("WARM_POOLS entry"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_settings_are_start_up_errors_naming_the_setting() {
        let check = |args: &[&str]| {
            let mut all = vec!["operator"];
            all.extend_from_slice(args);
            Config::try_parse_from(all)
                .map_err(|e| e.to_string())
                .and_then(|c| c.check())
        };
        assert!(check(&[]).is_ok());
        assert!(
            check(&["--warm-pools", "python:9999=1"])
                .unwrap_err()
                .contains("WARM_POOLS")
        );
        assert!(check(&["--seccomp", "/etc/x.json"]).is_err());
        assert!(check(&["--seccomp", "../x.json"]).is_err());
    }
}
