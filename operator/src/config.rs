//! Operator settings: every one a flag and an environment variable, checked at start-up so a
//! bad value is an error that names its setting.
use std::time::Duration;

use clap::{Parser, ValueEnum};
use codeinterp_crds::{EffectiveLimits, Language, Maxima, RunnerPool};

use crate::placement::{self, NodeSelector, Placement, Tolerations};

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

/// A warm pool as the operator runs it: a `RunnerPool` with its defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    /// The RunnerPool's name (its pods' name prefix and label value) and UID (their owner
    /// until a run claims one).
    pub name: String,
    pub uid: String,
    pub language: Language,
    pub min: usize,
    pub max: usize,
    /// The shape of the runs it serves.
    pub memory_mb: u64,
    pub cpu_millicores: u64,
    pub disk_mb: u64,
    /// Whether its pods start their interpreter before the job, and what it imports.
    pub kernel: bool,
    pub preload: Vec<String>,
    /// Memory each pod has on top of the run's, for the waiting interpreter.
    pub preload_memory_mb: u64,
    /// Its pods are for containers (of `memory_mb`), not runs.
    pub container: bool,
}

impl PoolSpec {
    /// The pool a RunnerPool describes, or why the operator cannot run it.
    pub fn of(pool: &RunnerPool, maxima: &Maxima) -> Result<Self, String> {
        let spec = &pool.spec;
        let (d, m) = (&maxima.defaults, &maxima.max);
        let name = pool.metadata.name.clone().unwrap_or_default();
        let resolved = PoolSpec {
            language: spec.language,
            min: spec.min_replicas as usize,
            max: spec.max_replicas as usize,
            memory_mb: spec.memory_mb.unwrap_or(d.memory_mb),
            cpu_millicores: spec.cpu_millicores.unwrap_or(d.cpu_millicores),
            disk_mb: spec.disk_mb.unwrap_or(d.disk_mb),
            kernel: spec.kernel(),
            preload: spec.preload(),
            preload_memory_mb: spec.preload_memory_mb(),
            container: spec.container == Some(true),
            uid: pool.metadata.uid.clone().unwrap_or_default(),
            name,
        };
        let over = |what: &str, value: u64, max: u64| {
            format!(
                "pool {}: {what} is {value}; the operator allows at most {max}",
                resolved.name
            )
        };
        if resolved.memory_mb > m.memory_mb {
            return Err(over("memoryMb", resolved.memory_mb, m.memory_mb));
        }
        if resolved.cpu_millicores > m.cpu_millicores {
            return Err(over(
                "cpuMillicores",
                resolved.cpu_millicores,
                m.cpu_millicores,
            ));
        }
        if resolved.disk_mb > m.disk_mb {
            return Err(over("diskMb", resolved.disk_mb, m.disk_mb));
        }
        Ok(resolved)
    }

    /// The pool's name, also its pods' name prefix and label value.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// A pool of `language` in the run defaults' shape, for tests.
    pub fn for_tests(language: Language, max: usize) -> Self {
        let pool: RunnerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "codeinterp.dev/v1alpha1", "kind": "RunnerPool",
            "metadata": {"name": language.as_str(), "namespace": "codeinterp", "uid": "pool-uid"},
            "spec": {"language": language.as_str(), "minReplicas": 0, "maxReplicas": max},
        }))
        .expect("a valid pool");
        PoolSpec::of(&pool, &Maxima::default()).expect("within the maxima")
    }

    /// Whether a run with these limits fits this pool's pods exactly.
    pub fn serves(&self, language: Language, limits: &EffectiveLimits) -> bool {
        !self.container
            && self.language == language
            && self.memory_mb == limits.memory_mb
            && self.cpu_millicores == limits.cpu_millicores
            && self.disk_mb == limits.disk_mb
    }
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
    /// Node selector of runner pods, `key=value` pairs comma-separated (a node pool kept for
    /// sandboxes). Admission counts only the nodes it selects as room.
    #[arg(long, env = "RUNNER_NODE_SELECTOR", default_value = "", value_parser = placement::parse_node_selector)]
    pub runner_node_selector: NodeSelector,
    /// Tolerations of runner pods, a JSON list as in a pod spec (e.g. for a tainted sandbox
    /// pool). Admission counts as room only nodes whose taints they tolerate.
    #[arg(long, env = "RUNNER_TOLERATIONS", default_value = "", value_parser = placement::parse_tolerations)]
    pub runner_tolerations: Tolerations,
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
    /// The image of container pods: every language's interpreter and kernel.
    #[arg(
        long,
        env = "RUNNER_IMAGE_CONTAINER",
        default_value = "localhost/codeinterp/runner-container:dev"
    )]
    pub image_container: String,
    /// A container ends this long after it started, however busy.
    #[arg(long, env = "CONTAINER_MAX_LIFETIME_SECONDS", default_value_t = 86_400)]
    pub container_max_lifetime_seconds: u64,
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

    /// Where runner pods may go.
    pub fn placement(&self) -> Placement {
        Placement {
            node_selector: self.runner_node_selector.0.clone(),
            tolerations: self.runner_tolerations.0.clone(),
        }
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

    fn pool(spec: serde_json::Value) -> RunnerPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "codeinterp.dev/v1alpha1", "kind": "RunnerPool",
            "metadata": {"name": "py", "namespace": "codeinterp"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_pool_takes_the_run_defaults_and_its_languages_preload() {
        let maxima = Maxima::default();
        let p = PoolSpec::of(
            &pool(serde_json::json!({"language": "python", "maxReplicas": 4})),
            &maxima,
        )
        .unwrap();
        assert_eq!((p.name.as_str(), p.min, p.max), ("py", 0, 4));
        assert!(p.serves(Language::Python, &maxima.defaults));
        assert!(p.kernel && p.preload.contains(&"pandas".to_string()));
        assert_eq!(p.preload_memory_mb, 160);
        let plain = serde_json::json!({"language": "node", "maxReplicas": 1, "kernel": false});
        let p = PoolSpec::of(&pool(plain), &maxima).unwrap();
        assert!(!p.kernel && p.preload.is_empty() && p.preload_memory_mb == 0);
    }

    #[test]
    fn a_pool_over_the_operators_maxima_is_refused_naming_the_field() {
        let maxima = Maxima::with_ceilings(300_000, 1024, 100);
        let big = serde_json::json!({"language": "python", "maxReplicas": 1, "memoryMb": 2048});
        let e = PoolSpec::of(&pool(big), &maxima).unwrap_err();
        assert!(e.contains("memoryMb") && e.contains("1024"), "{e}");
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
        assert!(check(&["--seccomp", "/etc/x.json"]).is_err());
        assert!(check(&["--seccomp", "../x.json"]).is_err());
        assert!(check(&["--runner-node-selector", "pool"]).is_err());
        assert!(check(&["--runner-tolerations", r#"[{"key":"k","operator":"In"}]"#]).is_err());
        let tolerate = r#"[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]"#;
        let placed = Config::try_parse_from([
            "operator",
            "--runner-node-selector",
            "pool=sandbox",
            "--runner-tolerations",
            tolerate,
        ])
        .unwrap()
        .placement();
        assert_eq!(placed.node_selector["pool"], "sandbox");
        assert_eq!(placed.tolerations[0].key.as_deref(), Some("dedicated"));
    }
}
