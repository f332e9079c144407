//! The runner pod, its inputs Secret and the namespace's deny-all NetworkPolicy, built from a
//! CodeRun without I/O. Every hardening default lives here, so one unit test can read them.
use std::collections::BTreeMap;

use codeinterp_crds::{Applied, CodeRun, EffectiveLimits, RUN_LABEL, RUNNER_LABEL};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, Container, EmptyDirVolumeSource, Pod, PodDNSConfig,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;
use runner_protocol::{InputFile, JOB_DIR, JOB_FILE, Job, JobLimits, WORK_DIR};

use crate::config::Config;

/// Name of the per-namespace NetworkPolicy that denies all traffic to and from runner pods.
pub const DENY_ALL_POLICY: &str = "codeinterp-runner-deny-all";
pub const RUNNER_CONTAINER: &str = "runner";
/// The image's non-root user.
pub const RUNNER_UID: i64 = 65532;

/// Inputs resolved to bytes: the operator fetches uploaded files before building the Secret.
pub struct ResolvedInputs {
    pub files: Vec<(String, Vec<u8>)>,
}

/// The pod and the Secret share the CodeRun's name (different kinds may share one).
pub fn child_name(run: &CodeRun) -> String {
    run.metadata.name.clone().unwrap_or_default()
}

fn labels(run: &CodeRun) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUNNER_LABEL.to_string(), "true".to_string()),
        (RUN_LABEL.to_string(), child_name(run)),
        (
            "codeinterp.dev/language".to_string(),
            run.spec.language.as_str().to_string(),
        ),
    ])
}

fn owned_meta(run: &CodeRun) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(run)),
        namespace: run.metadata.namespace.clone(),
        labels: Some(labels(run)),
        owner_references: run.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

pub fn job(run: &CodeRun, limits: &EffectiveLimits, inputs: &ResolvedInputs) -> Job {
    Job {
        language: run.spec.language,
        source_key: run.spec.language.source_file().to_string(),
        stdin_key: run.spec.stdin.as_ref().map(|_| "stdin".to_string()),
        args: run.spec.args.clone(),
        files: inputs
            .files
            .iter()
            .enumerate()
            .map(|(i, (name, _))| InputFile {
                name: name.clone(),
                secret_key: format!("file-{i}"),
            })
            .collect(),
        limits: JobLimits {
            timeout_ms: limits.timeout_ms,
            cpu_ms: limits.cpu_ms,
            max_output_bytes: limits.max_output_bytes,
            max_artifacts: limits.max_artifacts,
            max_artifact_bytes: limits.max_artifact_bytes,
            max_artifact_total_bytes: limits.max_artifact_total_bytes,
            max_file_bytes: limits.disk_mb * 1024 * 1024,
            max_open_files: 256,
            max_processes: limits.max_processes,
        },
    }
}

/// The inputs Secret: the job description, the source, stdin and input files. Immutable.
pub fn secret(run: &CodeRun, limits: &EffectiveLimits, inputs: &ResolvedInputs) -> Secret {
    let job = job(run, limits, inputs);
    let mut data = BTreeMap::new();
    data.insert(
        JOB_FILE.to_string(),
        ByteString(serde_json::to_vec(&job).expect("job serializes")),
    );
    data.insert(
        job.source_key.clone(),
        ByteString(run.spec.code.clone().into_bytes()),
    );
    if let Some(stdin) = &run.spec.stdin {
        data.insert("stdin".to_string(), ByteString(stdin.clone().into_bytes()));
    }
    for (file, (_, bytes)) in job.files.iter().zip(&inputs.files) {
        data.insert(file.secret_key.clone(), ByteString(bytes.clone()));
    }
    Secret {
        metadata: owned_meta(run),
        data: Some(data),
        immutable: Some(true),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Total bytes the inputs Secret will hold (Kubernetes refuses Secrets over 1 MiB).
pub fn secret_size(secret: &Secret) -> usize {
    secret
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| k.len() + v.0.len()).sum())
        .unwrap_or(0)
}

/// What isolation the pod gets, decided from the settings and what the nodes support.
pub fn decide_isolation(cfg: &Config, apparmor_on_nodes: bool) -> Result<Applied, String> {
    use crate::config::{AppArmorMode, UserNamespaces};
    let seccomp = if cfg.seccomp_profile == "RuntimeDefault" {
        "RuntimeDefault".to_string()
    } else {
        format!("Localhost/{}", cfg.seccomp_profile)
    };
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
        seccomp,
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

pub fn pod(run: &CodeRun, limits: &EffectiveLimits, cfg: &Config, applied: &Applied) -> Pod {
    let seccomp_profile = match applied.seccomp.strip_prefix("Localhost/") {
        Some(path) => SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some(path.to_string()),
        },
        None => SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        },
    };
    let apparmor_profile =
        applied
            .apparmor
            .strip_prefix("Localhost/")
            .map(|name| AppArmorProfile {
                type_: "Localhost".into(),
                localhost_profile: Some(name.to_string()),
            });
    let disk = format!("{}Mi", limits.disk_mb);
    // /work and /tmp each up to disk_mb, plus room for the container's log.
    let ephemeral = format!("{}Mi", limits.disk_mb * 2 + 32);
    let resource_limits = BTreeMap::from([
        (
            "cpu".to_string(),
            quantity(format!("{}m", limits.cpu_millicores)),
        ),
        (
            "memory".to_string(),
            quantity(format!("{}Mi", limits.memory_mb)),
        ),
        ("ephemeral-storage".to_string(), quantity(ephemeral)),
    ]);
    // Memory is requested in full so the node never overcommits it under a burst of runs;
    // CPU is requested small so short runs pack densely and borrow idle cores.
    let requests = BTreeMap::from([
        (
            "cpu".to_string(),
            quantity(format!("{}m", limits.cpu_millicores.min(100))),
        ),
        (
            "memory".to_string(),
            quantity(format!("{}Mi", limits.memory_mb)),
        ),
    ]);
    let backstop = limits.timeout_ms.div_ceil(1000) + cfg.deadline_slack_seconds;
    let empty_dir = |size: &str| EmptyDirVolumeSource {
        size_limit: Some(quantity(size.to_string())),
        ..Default::default()
    };

    Pod {
        metadata: owned_meta(run),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(backstop as i64),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            dns_policy: Some("None".into()),
            // Kubernetes wants a nameserver with dnsPolicy None: loopback, where nothing answers
            // (the program has no network anyway).
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["127.0.0.1".into()]),
                ..Default::default()
            }),
            host_users: applied.user_namespace.then_some(false),
            runtime_class_name: applied.runtime_class.clone(),
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
                image: Some(cfg.image(run.spec.language).to_string()),
                image_pull_policy: Some("IfNotPresent".into()),
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
                    limits: Some(resource_limits),
                    requests: Some(requests),
                    ..Default::default()
                }),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "work".into(),
                        mount_path: WORK_DIR.into(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "tmp".into(),
                        mount_path: "/tmp".into(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "job".into(),
                        mount_path: JOB_DIR.into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                ]),
                termination_message_policy: Some("File".into()),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "work".into(),
                    empty_dir: Some(empty_dir(&disk)),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(empty_dir(&disk)),
                    ..Default::default()
                },
                Volume {
                    name: "job".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(child_name(run)),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Denies every packet to and from runner pods in a namespace: no ingress, no egress, DNS
/// included. Results leave through the container log, which the API server fetches from the
/// kubelet, so the pods need no network at all.
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
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(vec![]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeRunSpec, Language, Limits};

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
                    ..Default::default()
                },
                ttl_seconds_after_finished: None,
                cancel: None,
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
        (pod(&run, &limits, &cfg, &applied), applied)
    }

    #[test]
    fn runner_pod_has_every_hardening_default() {
        let (pod, _) = build();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.dns_policy.as_deref(), Some("None"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
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
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "128Mi");
        assert!(limits.contains_key("cpu") && limits.contains_key("ephemeral-storage"));
        assert_eq!(pod.metadata.labels.unwrap()[RUNNER_LABEL], "true");
    }

    #[test]
    fn the_deadline_is_a_backstop_past_the_runs_own_timeout() {
        let (pod, _) = build();
        // 3 s timeout + 30 s slack: the wrapper's own clock fires long before.
        assert_eq!(pod.spec.unwrap().active_deadline_seconds, Some(33));
    }

    #[test]
    fn the_pod_and_secret_are_owned_by_the_coderun() {
        let (pod, _) = build();
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "CodeRun");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn apparmor_follows_the_mode_and_what_nodes_support() {
        use crate::config::AppArmorMode;
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
    fn the_secret_carries_job_source_stdin_and_files() {
        let cfg = Config::for_tests();
        let run = run();
        let limits = run.spec.limits.clamp(&cfg.maxima());
        let inputs = ResolvedInputs {
            files: vec![("data.csv".into(), b"a,b\n".to_vec())],
        };
        let s = secret(&run, &limits, &inputs);
        let data = s.data.unwrap();
        assert_eq!(data["main.py"].0, b"print(1+1)");
        assert_eq!(data["stdin"].0, b"hi");
        assert_eq!(data["file-0"].0, b"a,b\n");
        let job: Job = serde_json::from_slice(&data["job.json"].0).unwrap();
        assert_eq!(job.files[0].name, "data.csv");
        assert_eq!(job.limits.timeout_ms, 3000);
        assert_eq!(s.immutable, Some(true));
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
        assert!(spec.ingress.unwrap().is_empty() && spec.egress.unwrap().is_empty());
    }
}
