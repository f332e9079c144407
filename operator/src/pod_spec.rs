//! The runner pods and the namespace's deny-all NetworkPolicy, built without I/O. Every
//! hardening default lives here, so one unit test can read them. A pod is made for a run
//! (cold) or for a warm pool; both wait for their job on stdin and are used once.
use std::collections::BTreeMap;

use codeinterp_crds::{
    Applied, CodeContainer, CodeRun, EffectiveLimits, HELD_LABEL, Language, POOL_LABEL,
    RUN_UID_LABEL, RUNNER_LABEL, default_preload,
};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, Container, EmptyDirVolumeSource, EnvVar, Pod, PodDNSConfig,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use runner_protocol::{CONTAINER_DATA_DIR, JOB_DIR, WORK_DIR};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{AppArmorMode, Config, PoolSpec, Seccomp, UserNamespaces};

mod trust;
pub use trust::Loose;
#[cfg(test)]
pub use trust::stored;

/// Name of the per-namespace NetworkPolicy that denies all traffic to and from runner pods.
pub const DENY_ALL_POLICY: &str = "codeinterp-runner-deny-all";
pub const RUNNER_CONTAINER: &str = "runner";
/// The image's non-root user.
pub const RUNNER_UID: i64 = 65532;
/// Label with a digest of the pod's spec, to find pool pods of the current configuration
/// quickly (the whole pod is what is checked before it is trusted).
pub const SPEC_LABEL: &str = "codeinterp.dev/spec";
/// The job folder holds the source and stdin (up to 1 MiB each).
const JOB_DIR_MB: u64 = 4;
/// CPU requested per pod: small, so short runs pack densely and borrow idle cores.
pub const CPU_REQUEST_MILLICORES: u64 = 100;

/// What a runner pod is made of: its language and the limits that size it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub language: Language,
    pub memory_mb: u64,
    pub cpu_millicores: u64,
    pub disk_mb: u64,
}

impl Shape {
    pub fn of_run(language: Language, limits: &EffectiveLimits) -> Self {
        Shape {
            language,
            memory_mb: limits.memory_mb,
            cpu_millicores: limits.cpu_millicores,
            disk_mb: limits.disk_mb,
        }
    }

    /// A pool's pods have the run's memory and what the waiting interpreter takes.
    pub fn of_pool(pool: &PoolSpec) -> Self {
        Shape {
            language: pool.language,
            memory_mb: pool.memory_mb + pool.preload_memory_mb,
            cpu_millicores: pool.cpu_millicores,
            disk_mb: pool.disk_mb,
        }
    }

    /// The pod's memory: the program's, plus `/work` and `/tmp` (memory-backed volumes the
    /// kernel caps at `disk_mb` each, charged to the pod) and the job folder. Requested in
    /// full, so the node is never overcommitted.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_mb + 2 * self.disk_mb + JOB_DIR_MB) * 1024 * 1024
    }

    pub fn cpu_request_millicores(&self) -> u64 {
        self.cpu_millicores.min(CPU_REQUEST_MILLICORES)
    }
}

/// What isolation the pods get, decided from the settings and what the nodes support.
pub fn decide_isolation(cfg: &Config, apparmor_on_nodes: bool) -> Result<Applied, String> {
    let (apparmor, apparmor_note) = match (cfg.apparmor_mode, apparmor_on_nodes) {
        (AppArmorMode::Off, _) => (
            "none".to_string(),
            Some("AppArmor is off in the operator's settings".to_string()),
        ),
        (_, true) => (format!("Localhost/{}", cfg.apparmor_profile), None),
        (AppArmorMode::WhenAvailable, false) => (
            "none".to_string(),
            Some("the nodes do not report AppArmor enabled; not applied".to_string()),
        ),
        (AppArmorMode::Required, false) => {
            return Err("AppArmor is required by the operator's settings but the nodes do not report it enabled".into());
        }
    };
    Ok(Applied {
        seccomp: cfg.seccomp.describe(),
        apparmor,
        apparmor_note,
        user_namespace: cfg.user_namespaces == UserNamespaces::On,
        runtime_class: cfg.runtime_class.clone(),
        network_policy: DENY_ALL_POLICY.to_string(),
    })
}

fn quantity(s: String) -> Quantity {
    Quantity(s)
}

/// What a runner container's log may take on the node: the record of the largest output
/// files a run may hand back (base64 in frames, about 1.4 times their size) and its output.
fn log_storage(cfg: &Config) -> String {
    let files = cfg.maxima().max.max_artifact_total_bytes;
    format!("{}Mi", 64 + (files * 14 / 10).div_ceil(1024 * 1024))
}

/// The pod every run gets, before it is named for a run or a pool: waits for its job on
/// stdin, no network, no token, no privileges, read-only root, capped memory-backed volumes.
fn runner_pod(shape: &Shape, cfg: &Config, applied: &Applied, apparmor_on: bool) -> Pod {
    let seccomp_profile = match &cfg.seccomp {
        Seccomp::Localhost(path) => SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some(path.clone()),
        },
        Seccomp::RuntimeDefault => SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        },
    };
    let apparmor_profile = apparmor_on.then(|| AppArmorProfile {
        type_: "Localhost".into(),
        localhost_profile: Some(cfg.apparmor_profile.clone()),
    });
    let memory = format!("{}Mi", shape.memory_bytes() / (1024 * 1024));
    let limits = BTreeMap::from([
        (
            "cpu".to_string(),
            quantity(format!("{}m", shape.cpu_millicores)),
        ),
        ("memory".to_string(), quantity(memory.clone())),
        // The container log: the record, whose output files are base64 (/work and /tmp are
        // memory).
        ("ephemeral-storage".to_string(), quantity(log_storage(cfg))),
    ]);
    let requests = BTreeMap::from([
        (
            "cpu".to_string(),
            quantity(format!("{}m", shape.cpu_request_millicores())),
        ),
        ("memory".to_string(), quantity(memory)),
    ]);
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([
                (RUNNER_LABEL.to_string(), "true".to_string()),
                (
                    "codeinterp.dev/language".to_string(),
                    shape.language.as_str().to_string(),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            dns_policy: Some("None".into()),
            // Kubernetes wants a nameserver with dnsPolicy None: loopback, where nothing
            // answers (the program has no network anyway).
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["127.0.0.1".into()]),
                ..Default::default()
            }),
            host_users: applied.user_namespace.then_some(false),
            runtime_class_name: applied.runtime_class.clone(),
            // Where the settings send runner pods (a dedicated pool); none by default.
            node_selector: Some(cfg.runner_node_selector.0.clone()).filter(|s| !s.is_empty()),
            tolerations: Some(cfg.runner_tolerations.0.clone()).filter(|t| !t.is_empty()),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUNNER_UID),
                run_as_group: Some(RUNNER_UID),
                fs_group: Some(RUNNER_UID),
                seccomp_profile: Some(seccomp_profile),
                app_armor_profile: apparmor_profile,
                ..Default::default()
            }),
            containers: vec![Container {
                name: RUNNER_CONTAINER.into(),
                image: Some(cfg.image(shape.language).to_string()),
                image_pull_policy: Some("IfNotPresent".into()),
                // The job arrives on stdin, from the operator's attach; once that stream
                // closes stdin stays closed, so nobody can hand the pod a second job.
                stdin: Some(true),
                stdin_once: Some(true),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    privileged: Some(false),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    ..Default::default()
                }),
                resources: Some(ResourceRequirements {
                    limits: Some(limits),
                    requests: Some(requests),
                    ..Default::default()
                }),
                volume_mounts: Some(vec![
                    mount("work", WORK_DIR),
                    mount("tmp", "/tmp"),
                    mount("job", JOB_DIR),
                ]),
                termination_message_policy: Some("File".into()),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "work".into(),
                    empty_dir: Some(memory_dir(shape.disk_mb)),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(memory_dir(shape.disk_mb)),
                    ..Default::default()
                },
                Volume {
                    name: "job".into(),
                    empty_dir: Some(memory_dir(JOB_DIR_MB)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's deadline backstop: the run's own timeout plus slack (the wrapper's clock fires
/// first). Set when a pod is created for a run, or when a pool pod is claimed.
pub fn backstop_seconds(limits: &EffectiveLimits, cfg: &Config) -> i64 {
    (limits.timeout_ms.div_ceil(1000) + cfg.deadline_slack_seconds) as i64
}

/// A pod made for one run: named after it, owned by it (its controller), labelled with its
/// UID, with the deadline backstop.
pub fn cold_pod(run: &CodeRun, limits: &EffectiveLimits, cfg: &Config, applied: &Applied) -> Pod {
    let shape = Shape::of_run(run.spec.language, limits);
    let mut pod = runner_pod(
        &shape,
        cfg,
        applied,
        applied.apparmor.starts_with("Localhost/"),
    );
    pod.metadata.name = run.metadata.name.clone();
    pod.metadata.namespace = run.metadata.namespace.clone();
    pod.metadata.owner_references = run.controller_owner_ref(&()).map(|r| vec![r]);
    pod.labels_mut()
        .insert(RUN_UID_LABEL.into(), run.uid().unwrap_or_default());
    if let Some(spec) = pod.spec.as_mut() {
        spec.active_deadline_seconds = Some(backstop_seconds(limits, cfg));
    }
    pod
}

/// An idle pod of a warm pool: no owner and no deadline until a run claims it.
pub fn pool_pod(pool: &PoolSpec, namespace: &str, cfg: &Config, applied: &Applied) -> Pod {
    if pool.container {
        return container_pool_pod(pool, namespace, cfg, applied);
    }
    let shape = Shape::of_pool(pool);
    let mut pod = runner_pod(
        &shape,
        cfg,
        applied,
        applied.apparmor.starts_with("Localhost/"),
    );
    pod.metadata.generate_name = Some(format!("pool-{}-", pool.name()));
    pod.metadata.namespace = Some(namespace.to_string());
    // The pool owns its idle pods (they go with it); a claim makes the run their owner.
    pod.metadata.owner_references = Some(vec![pool_owner(pool)]);
    if pool.kernel {
        // The wrapper starts the interpreter (and its imports) before the job arrives.
        let env = pod.spec.as_mut().and_then(|s| s.containers.first_mut());
        let env = env
            .expect("a runner container")
            .env
            .get_or_insert_with(Vec::new);
        env.push(EnvVar {
            name: "CI_RUNNER_KERNEL".into(),
            value: Some("1".into()),
            ..Default::default()
        });
        // Kubernetes drops an empty value (the wrapper would then import its default): an
        // empty list is spelled ",".
        let preload = match pool.preload.join(",") {
            list if list.is_empty() => ",".to_string(),
            list => list,
        };
        env.push(EnvVar {
            name: "CI_RUNNER_PRELOAD".into(),
            value: Some(preload),
            ..Default::default()
        });
    }
    let digest = spec_digest(&pod);
    let labels = pod.labels_mut();
    labels.insert(POOL_LABEL.into(), pool.name());
    labels.insert(SPEC_LABEL.into(), digest);
    pod
}

/// Label on a container's pod: the CodeContainer's UID (trusted only with its controller
/// owner reference).
pub const CONTAINER_LABEL: &str = "codeinterp.dev/container";
/// A container's `/tmp`, beside its folder.
const CONTAINER_TMP_MB: u64 = 256;

/// A container's pod: every language's interpreter on demand (their state kept between
/// runs), its folder `/mnt/data`, stdin open across attach sessions (a new leader attaches
/// again), owned by the container. Its deadline is only a backstop past the container's
/// longest life (the operator ends it when it idles).
pub fn container_pod(container: &CodeContainer, cfg: &Config, applied: &Applied) -> Pod {
    let mut pod = container_shape_pod(container.spec.memory_limit.mb(), cfg, applied);
    // A generated name: a run of the same name as the container never meets its pod.
    pod.metadata.generate_name = Some(format!("{}-", trimmed(&container.name_any(), 50)));
    pod.metadata.namespace = container.metadata.namespace.clone();
    pod.metadata.owner_references = container.controller_owner_ref(&()).map(|r| vec![r]);
    pod.labels_mut()
        .insert(CONTAINER_LABEL.into(), container.uid().unwrap_or_default());
    pod
}

/// A container pod of a pool (owned by it until a container claims it).
fn container_pool_pod(pool: &PoolSpec, namespace: &str, cfg: &Config, applied: &Applied) -> Pod {
    let mut pod = container_shape_pod(pool.memory_mb, cfg, applied);
    pod.metadata.generate_name = Some(format!("pool-{}-", pool.name()));
    pod.metadata.namespace = Some(namespace.to_string());
    pod.metadata.owner_references = Some(vec![pool_owner(pool)]);
    let digest = spec_digest(&pod);
    let labels = pod.labels_mut();
    labels.insert(POOL_LABEL.into(), pool.name());
    labels.insert(SPEC_LABEL.into(), digest);
    pod
}

/// What every container pod is, cold or from a pool: `memory_mb` for its interpreters, its
/// folder and `/tmp` beside (memory-backed), every language's interpreter.
fn container_shape_pod(memory_mb: u64, cfg: &Config, applied: &Applied) -> Pod {
    let disk_mb = cfg.shared.container_disk_mb;
    let shape = Shape {
        language: Language::Python,
        memory_mb,
        cpu_millicores: cfg.maxima().defaults.cpu_millicores,
        disk_mb,
    };
    let mut pod = runner_pod(
        &shape,
        cfg,
        applied,
        applied.apparmor.starts_with("Localhost/"),
    );
    pod.metadata.name = None;
    let spec = pod.spec.as_mut().expect("a pod spec");
    // A backstop should this operator never come back to end it: past the container's
    // longest life, counted from the pod's start (a pool pod idles at most its idle age).
    spec.active_deadline_seconds =
        Some((cfg.container_max_lifetime_seconds + cfg.pool_max_idle_seconds) as i64 + 600);
    let memory = format!("{}Mi", memory_mb + disk_mb + CONTAINER_TMP_MB + JOB_DIR_MB);
    let runner = spec.containers.first_mut().expect("a runner container");
    runner.image = Some(cfg.image_container.clone());
    runner.stdin_once = Some(false);
    runner.working_dir = Some(CONTAINER_DATA_DIR.into());
    if let Some(resources) = runner.resources.as_mut() {
        for list in [resources.limits.as_mut(), resources.requests.as_mut()]
            .into_iter()
            .flatten()
        {
            list.insert("memory".into(), quantity(memory.clone()));
        }
    }
    for mount in runner.volume_mounts.iter_mut().flatten() {
        if mount.name == "work" {
            mount.mount_path = CONTAINER_DATA_DIR.into();
        }
    }
    runner.env = Some(vec![
        env("CI_RUNNER_MODE", "container"),
        env(
            "CI_RUNNER_PRELOAD",
            &default_preload(Language::Python).join(","),
        ),
    ]);
    for volume in spec.volumes.iter_mut().flatten() {
        if volume.name == "tmp" {
            volume.empty_dir = Some(memory_dir(CONTAINER_TMP_MB));
        }
    }
    pod
}

/// The merge patch by which a container claims an idle pod of a container pool: guarded by
/// the pod's resourceVersion (of two claims, one wins), it makes the container the pod's
/// controller and labels it with the container's UID.
pub fn container_claim_patch(container: &CodeContainer, pod: &Pod) -> Value {
    json!({
        "metadata": {
            "resourceVersion": pod.resource_version(),
            "ownerReferences": container.controller_owner_ref(&()).map(|r| vec![r]),
            "labels": { CONTAINER_LABEL: container.uid() },
        },
    })
}

/// Where a container's pod differs from what this operator would have made it (empty: the
/// container's work may go to it): its own cold pod, or a container pool's pod as the claim
/// left it.
pub fn container_pod_differences(
    live: &Pod,
    container: &CodeContainer,
    pools: &[PoolSpec],
    cfg: &Config,
    applied: &Applied,
) -> Vec<String> {
    let Some(name) = live.labels().get(POOL_LABEL) else {
        let want = container_pod(container, cfg, applied);
        return trust::differences(live, &want, Loose::default());
    };
    let Some(pool) = pools.iter().find(|p| p.name == *name && p.container) else {
        return vec![format!(
            "metadata.labels.{POOL_LABEL} (no container pool {name:?})"
        )];
    };
    let ns = live.namespace().unwrap_or_default();
    let mut want = container_pool_pod(pool, &ns, cfg, applied);
    want.labels_mut()
        .insert(CONTAINER_LABEL.into(), container.uid().unwrap_or_default());
    let claimed = Loose {
        labels: &[HELD_LABEL],
        deadline: false,
    };
    trust::differences(live, &want, claimed)
}

/// At most `n` characters of a name, ending in a letter or digit.
fn trimmed(name: &str, n: usize) -> String {
    let cut: String = name.chars().take(n).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn memory_dir(mb: u64) -> EmptyDirVolumeSource {
    EmptyDirVolumeSource {
        medium: Some("Memory".into()),
        size_limit: Some(quantity(format!("{mb}Mi"))),
        ..Default::default()
    }
}

/// The owner reference of a pool's idle pods.
pub fn pool_owner(pool: &PoolSpec) -> OwnerReference {
    OwnerReference {
        api_version: "codeinterp.dev/v1alpha1".into(),
        kind: "RunnerPool".into(),
        name: pool.name(),
        uid: pool.uid.clone(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Whether the pod is one of the pool's idle pods: its controller is the pool.
pub fn owned_by_pool(pod: &Pod, pool: &PoolSpec) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "RunnerPool" && o.uid == pool.uid)
}

/// The merge patch by which a run claims an idle pool pod: guarded by the pod's
/// resourceVersion (of two claims, one wins), it makes the run the pod's controller, labels
/// it with the run's UID and sets the deadline backstop. A pod's deadline counts from the
/// pod's start, so a pod that idled `idle_secs` gets that much more.
pub fn claim_patch(
    run: &CodeRun,
    pod: &Pod,
    limits: &EffectiveLimits,
    cfg: &Config,
    idle_secs: i64,
) -> Value {
    json!({
        "metadata": {
            "resourceVersion": pod.resource_version(),
            "ownerReferences": run.controller_owner_ref(&()).map(|r| vec![r]),
            "labels": { RUN_UID_LABEL: run.uid() },
        },
        "spec": { "activeDeadlineSeconds": idle_secs.max(0) + backstop_seconds(limits, cfg) },
    })
}

/// How long a pod has been up: its deadline counts from this start.
pub fn seconds_since_start(pod: &Pod, now: i64) -> i64 {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| now - t.0.as_second() + 1)
        .unwrap_or(0)
}

/// Whether the pod is this run's: its controller owner reference names the run's UID. A name
/// or a label anyone may set proves nothing.
pub fn owned_by(pod: &Pod, run_uid: &str) -> bool {
    owned_by_kind(pod, "CodeRun", run_uid)
}

/// Whether the pod's controller is the object of this kind and UID.
pub fn owned_by_kind(pod: &Pod, kind: &str, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == kind && o.uid == uid)
}

/// The CodeRun a runner pod serves, by its controller reference (whatever its labels say: the
/// reference is what this operator set, and what the run's reconcile checks again).
pub fn run_of(pod: &Pod) -> Option<ObjectRef<CodeRun>> {
    if pod.labels().get(RUNNER_LABEL).map(String::as_str) != Some("true") {
        return None;
    }
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "CodeRun")?;
    Some(ObjectRef::new(&owner.name).within(&pod.namespace()?))
}

/// A quantity as a whole number of its base unit: millicores for CPU (`100m`, `1`), bytes
/// for memory (`512Mi`, `1Gi`, `1048576`). Enough for what the operator writes.
pub fn quantity_units(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1000.0, // CPU in cores -> millicores; memory in bytes is scaled back below
        "m" => 1.0,
        "Ki" => 1024.0 * 1000.0,
        "Mi" => 1024.0 * 1024.0 * 1000.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0 * 1000.0,
        "k" => 1e3 * 1000.0,
        "M" => 1e6 * 1000.0,
        "G" => 1e9 * 1000.0,
        _ => return None,
    };
    // In thousandths of the base unit, so `100m` CPU and `1` CPU compare, as do `1Mi` and
    // `1048576` bytes.
    Some((number * factor).round() as i128)
}

/// A digest of the pod's spec: the label pool pods carry, so pods of another configuration
/// are told apart at a glance (what is trusted is the whole pod, see [`trust`]).
pub fn spec_digest(pod: &Pod) -> String {
    let spec = serde_json::to_vec(&pod.spec).expect("a spec serializes");
    hex::encode(&Sha256::digest(spec)[..8])
}

/// Where a live pool pod differs from what this operator would create for the pool (empty:
/// it may be handed a run's job). A pod anyone could have created with the pool's labels and
/// owner, and one extra probe, differs.
pub fn pool_pod_differences(
    live: &Pod,
    pool: &PoolSpec,
    cfg: &Config,
    applied: &Applied,
) -> Vec<String> {
    let want = pool_pod(
        pool,
        live.namespace().as_deref().unwrap_or_default(),
        cfg,
        applied,
    );
    let held = Loose {
        labels: &[HELD_LABEL],
        deadline: false,
    };
    trust::differences(live, &want, held)
}

/// Whether a live pool pod is exactly what this operator would create for the pool.
pub fn is_trusted_pool_pod(live: &Pod, pool: &PoolSpec, cfg: &Config, applied: &Applied) -> bool {
    pool_pod_differences(live, pool, cfg, applied).is_empty()
}

/// Where the pod a run's job is about to be handed to differs from what this operator would
/// have made it (empty: the job may go): the run's own cold pod, or a pool's pod (by its
/// label, among `pools`) as the run's claim left it.
pub fn run_pod_differences(
    live: &Pod,
    run: &CodeRun,
    limits: &EffectiveLimits,
    pools: &[PoolSpec],
    cfg: &Config,
    applied: &Applied,
) -> Vec<String> {
    let Some(name) = live.labels().get(POOL_LABEL) else {
        let want = cold_pod(run, limits, cfg, applied);
        return trust::differences(live, &want, Loose::default());
    };
    let Some(pool) = pools.iter().find(|p| p.name == *name) else {
        return vec![format!("metadata.labels.{POOL_LABEL} (no pool {name:?})")];
    };
    let mut want = pool_pod(
        pool,
        live.namespace().as_deref().unwrap_or_default(),
        cfg,
        applied,
    );
    want.labels_mut()
        .insert(RUN_UID_LABEL.into(), run.uid().unwrap_or_default());
    let claimed = Loose {
        labels: &[HELD_LABEL],
        deadline: true,
    };
    trust::differences(live, &want, claimed)
}

/// Denies every packet to and from runner pods in a namespace: no ingress, no egress, DNS
/// included. Jobs and results travel through the API server (attach and the container log),
/// so the pods need no network at all.
pub fn deny_all_policy(namespace: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(DENY_ALL_POLICY.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "codeinterp-operator".into(),
            )])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(RUNNER_LABEL.into(), "true".into())])),
                ..Default::default()
            }),
            // Both directions governed and no rule in either: nothing is allowed. Spelled as
            // the API server returns it (it drops empty rule lists), so the periodic check
            // finds it equal and writes nothing.
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeRunSpec, Limits};

    fn run() -> CodeRun {
        let mut run = CodeRun::new(
            "run-abc",
            CodeRunSpec {
                language: Language::Python,
                code: "print(1+1)".into(),
                stdin: Some("hi".into()),
                args: vec!["a".into()],
                files: vec![],
                limits: Limits {
                    timeout_ms: Some(3000),
                    memory_mb: Some(128),
                    disk_mb: Some(16),
                    ..Default::default()
                },
                ttl_seconds_after_finished: None,
                cancel: None,
                container: None,
            },
        );
        run.metadata.namespace = Some("sandbox".into());
        run.metadata.uid = Some("uid-1".into());
        run
    }

    fn build() -> (Pod, Applied) {
        let cfg = Config::for_tests();
        let run = run();
        let limits = run.spec.limits.clamp(&cfg.maxima());
        let applied = decide_isolation(&cfg, false).unwrap();
        (cold_pod(&run, &limits, &cfg, &applied), applied)
    }

    #[test]
    fn runner_pod_has_every_hardening_default() {
        let (pod, _) = build();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.dns_policy.as_deref(), Some("None"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.host_users, Some(false));
        assert!(spec.host_network.is_none() && spec.host_pid.is_none() && spec.host_ipc.is_none());
        let psc = spec.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(RUNNER_UID));
        let seccomp = psc.seccomp_profile.unwrap();
        assert_eq!(seccomp.type_, "Localhost");
        assert_eq!(
            seccomp.localhost_profile.as_deref(),
            Some("codeinterp/runner.json")
        );
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert!(
            c.env.is_none(),
            "no platform environment reaches the program"
        );
        assert_eq!(
            (c.stdin, c.stdin_once, c.tty),
            (Some(true), Some(true), None)
        );
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        // 128 for the program, 2 x 16 for /work and /tmp, 4 for the job folder.
        assert_eq!(limits["memory"].0, "164Mi");
        assert!(limits.contains_key("cpu") && limits.contains_key("ephemeral-storage"));
        // No Secret, no host path: every volume is a capped memory-backed emptyDir.
        for v in spec.volumes.unwrap() {
            let e = v.empty_dir.expect("an emptyDir");
            assert_eq!(e.medium.as_deref(), Some("Memory"), "{}", v.name);
            assert!(e.size_limit.is_some(), "{}", v.name);
        }
        assert_eq!(pod.metadata.labels.unwrap()[RUNNER_LABEL], "true");
    }

    #[test]
    fn the_deadline_is_a_backstop_past_the_runs_own_timeout() {
        let (pod, _) = build();
        // 3 s timeout + 30 s slack: the wrapper's own clock fires long before.
        assert_eq!(pod.spec.unwrap().active_deadline_seconds, Some(33));
    }

    #[test]
    fn a_cold_pod_is_owned_by_the_coderun_and_labelled_with_its_uid() {
        let (pod, _) = build();
        assert!(owned_by(&pod, "uid-1"));
        assert!(!owned_by(&pod, "uid-2"));
        assert_eq!(pod.metadata.labels.unwrap()[RUN_UID_LABEL], "uid-1");
        assert_eq!(pod.metadata.name.as_deref(), Some("run-abc"));
    }

    #[test]
    fn a_pods_changes_wake_the_run_that_controls_it_and_no_other() {
        let (pod, _) = build();
        let run = run_of(&pod).expect("a runner pod owned by a run");
        assert_eq!(
            (run.name.as_str(), run.namespace.as_deref()),
            ("run-abc", Some("sandbox"))
        );
        // Not a runner pod (whatever it is owned by), or a runner pod nobody controls.
        let mut unlabelled = pod.clone();
        unlabelled.labels_mut().remove(RUNNER_LABEL);
        assert!(run_of(&unlabelled).is_none());
        let mut orphan = pod;
        orphan.metadata.owner_references = None;
        assert!(run_of(&orphan).is_none());
    }

    #[test]
    fn a_pool_pod_has_no_empty_value_the_api_server_would_drop() {
        // A value the API server drops makes the live pod differ from what the operator
        // would create, and the pod is then never trusted.
        let cfg = Config::for_tests();
        let applied = decide_isolation(&cfg, false).unwrap();
        for language in Language::ALL {
            let pool = PoolSpec::for_tests(language, 1);
            let pod = pool_pod(&pool, "sandbox", &cfg, &applied);
            let env = pod.spec.unwrap().containers[0]
                .env
                .clone()
                .unwrap_or_default();
            assert!(
                env.iter()
                    .all(|e| e.value.as_deref().is_some_and(|v| !v.is_empty())),
                "{language:?}: {env:?}"
            );
        }
    }

    #[test]
    fn a_pool_pod_is_its_pools_with_no_deadline_until_claimed() {
        let cfg = Config::for_tests();
        let applied = decide_isolation(&cfg, false).unwrap();
        let pool = PoolSpec::for_tests(Language::Python, 1);
        let pod = pool_pod(&pool, "sandbox", &cfg, &applied);
        assert!(owned_by_pool(&pod, &pool), "the pool owns its idle pods");
        assert!(run_of(&pod).is_none(), "no run does");
        assert!(pod.spec.as_ref().unwrap().active_deadline_seconds.is_none());
        assert_eq!(pod.labels()[POOL_LABEL], pool.name());

        let run = run();
        let limits = run.spec.limits.clamp(&cfg.maxima());
        let mut live = pod.clone();
        live.metadata.resource_version = Some("42".into());
        let patch = claim_patch(&run, &live, &limits, &cfg, 600);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["controller"], true);
        // A pod's deadline counts from its start: ten minutes idle, then the run's own 33 s.
        assert_eq!(patch["spec"]["activeDeadlineSeconds"], 633);
    }

    #[test]
    fn runner_pods_go_where_the_settings_send_them() {
        use clap::Parser as _;
        let (pod, _) = build();
        let spec = pod.spec.unwrap();
        assert!(spec.node_selector.is_none() && spec.tolerations.is_none());

        let tolerate =
            r#"[{"key":"dedicated","operator":"Equal","value":"sandbox","effect":"NoSchedule"}]"#;
        let cfg = Config::try_parse_from([
            "operator",
            "--runner-node-selector",
            "pool=sandbox",
            "--runner-tolerations",
            tolerate,
        ])
        .unwrap();
        let applied = decide_isolation(&cfg, false).unwrap();
        let pool = PoolSpec::for_tests(Language::Python, 1);
        let pod = pool_pod(&pool, "sandbox", &cfg, &applied);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["pool"], "sandbox");
        assert_eq!(spec.tolerations.unwrap().len(), 1);
    }

    #[test]
    fn quantities_compare_whatever_their_spelling() {
        assert_eq!(quantity_units("1000m"), quantity_units("1"));
        assert_eq!(quantity_units("1Mi"), Some(1024 * 1024 * 1000));
        assert_eq!(quantity_units("162Mi"), quantity_units("169869312"));
        assert_eq!(quantity_units("bogus"), None);
    }

    #[test]
    fn apparmor_follows_the_mode_and_what_nodes_support() {
        let mut cfg = Config::for_tests();
        let applied = decide_isolation(&cfg, false).unwrap();
        assert_eq!(applied.apparmor, "none");
        assert!(applied.apparmor_note.is_some());
        assert_eq!(
            decide_isolation(&cfg, true).unwrap().apparmor,
            "Localhost/codeinterp-runner"
        );
        cfg.apparmor_mode = AppArmorMode::Required;
        assert!(decide_isolation(&cfg, false).is_err());
        cfg.apparmor_mode = AppArmorMode::Off;
        assert_eq!(decide_isolation(&cfg, true).unwrap().apparmor, "none");
    }

    #[test]
    fn deny_all_selects_runner_pods_and_allows_nothing() {
        let p = deny_all_policy("sandbox");
        let spec = p.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()[RUNNER_LABEL],
            "true"
        );
        assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
        assert!(spec.ingress.is_none() && spec.egress.is_none());
    }
}
