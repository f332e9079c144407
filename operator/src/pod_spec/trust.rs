//! Whether a live pod is one this operator made: its whole spec and its labels exactly what
//! the operator would create, once the API server has filled in its defaults. A pod anyone
//! could have planted with the right labels and owner (a readiness probe printing `/work`
//! into events, a lifecycle hook, a toleration for a node of the planter's choosing, a shared
//! process namespace, a resolver) differs somewhere and is not trusted. Pure; read where a
//! pool pod is trusted and before a job is handed to any pod.
//!
//! What a live pod may carry beyond what the operator wrote, and why:
//! - what the API server defaults on create: the scheduler's and the service account's
//!   names, priority 0 and its preemption policy, each container's termination message
//!   path, requests equal to limits where only a limit was given;
//! - quantities in the API server's spelling (`1000m` is stored as `1`);
//! - `nodeName`, set when the pod is scheduled;
//! - the `NoExecute` tolerations of `node.kubernetes.io/not-ready` and `.../unreachable`
//!   that the DefaultTolerationSeconds admission plugin adds (their seconds are the
//!   cluster's setting);
//! - labels the operator itself sets later ([`Loose::labels`]) and, for a claimed pool
//!   pod, the deadline its claim set ([`Loose::deadline`]).
//!
//! Annotations are not compared: CNIs (Calico, for one) write them on every pod after it
//! starts. Fields newer than the Kubernetes API this operator is built against are not seen
//! (the typed pod drops them). The chart's admission policy, which lets only the operator
//! make a pod a run's or a pool's, is what stops a planted pod; this check is the second
//! line.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};

use super::quantity_units;

/// What a live pod may differ in from the pod the operator would create, because the
/// operator itself changes it after creating the pod.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loose {
    /// Labels the operator sets later (any value, or none).
    pub labels: &'static [&'static str],
    /// The deadline, set when a run claims a pool pod.
    pub deadline: bool,
}

/// At most this many differences are reported (a planted pod may differ everywhere).
const REPORTED: usize = 4;

/// Where `live` differs from `want` (paths such as `spec.containers[0].readinessProbe`);
/// empty when the live pod is exactly what the operator would create.
pub fn differences(live: &Pod, want: &Pod, loose: Loose) -> Vec<String> {
    let mut out = Vec::new();
    let mut live_labels = live.metadata.labels.clone().unwrap_or_default();
    let mut want_labels = want.metadata.labels.clone().unwrap_or_default();
    for key in loose.labels {
        live_labels.remove(*key);
        want_labels.remove(*key);
    }
    diff(
        "metadata.labels",
        &labels_value(&live_labels),
        &labels_value(&want_labels),
        &mut out,
    );
    let mut live_spec = serde_json::to_value(&live.spec).unwrap_or(Value::Null);
    let mut want_spec = serde_json::to_value(&want.spec).unwrap_or(Value::Null);
    as_the_api_server_stores(&mut want_spec);
    set_after_create(&mut live_spec, &want_spec, loose);
    canonical_quantities(&mut live_spec);
    canonical_quantities(&mut want_spec);
    diff("spec", &live_spec, &want_spec, &mut out);
    out.truncate(REPORTED);
    out
}

fn labels_value(labels: &BTreeMap<String, String>) -> Value {
    serde_json::to_value(labels).unwrap_or(Value::Null)
}

/// The defaults the API server fills into a pod spec that leaves them out.
fn as_the_api_server_stores(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let default = |spec: &mut Map<String, Value>, key: &str, value: Value| {
        spec.entry(key).or_insert(value);
    };
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "serviceAccountName", json!("default"));
    // The deprecated spelling of the same, mirrored by the API server.
    let account = spec["serviceAccountName"].clone();
    default(spec, "serviceAccount", account);
    if !spec.contains_key("priorityClassName") {
        default(spec, "priority", json!(0));
    }
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else {
                continue;
            };
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            requests_default_to_limits(c);
            drop_false_plain_bools(c);
        }
    }
}

/// A container's `stdin`, `stdinOnce` and `tty` are plain `bool`s with `omitempty` in the
/// API server's types: `false` is stored as absent.
fn drop_false_plain_bools(c: &mut Map<String, Value>) {
    for key in ["stdin", "stdinOnce", "tty"] {
        if c.get(key) == Some(&Value::Bool(false)) {
            c.remove(key);
        }
    }
}

/// A resource with a limit and no request is requested at its limit.
fn requests_default_to_limits(container: &mut Map<String, Value>) {
    let Some(resources) = container
        .get_mut("resources")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = resources
        .entry("requests")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(requests) = requests {
        for (name, limit) in limits {
            requests.entry(name).or_insert(limit);
        }
    }
}

/// Takes out of the live spec what is set after the pod was created: its node, the default
/// tolerations, and (when loose) the deadline a claim set.
fn set_after_create(live: &mut Value, want: &Value, loose: Loose) {
    let Some(spec) = live.as_object_mut() else {
        return;
    };
    if want.get("nodeName").is_none() {
        spec.remove("nodeName");
    }
    if loose.deadline {
        spec.remove("activeDeadlineSeconds");
    }
    if let Some(Value::Array(tolerations)) = spec.get_mut("tolerations") {
        let wanted = want.get("tolerations").and_then(Value::as_array);
        tolerations.retain(|t| !is_default_toleration(t) || wanted.is_some_and(|w| w.contains(t)));
        if tolerations.is_empty() && wanted.is_none() {
            spec.remove("tolerations");
        }
    }
}

/// A toleration the DefaultTolerationSeconds admission plugin adds to every pod.
fn is_default_toleration(t: &Value) -> bool {
    let key = t.get("key").and_then(Value::as_str);
    let keys = [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ];
    let fields: Vec<&String> = t
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    key.is_some_and(|k| keys.contains(&k))
        && t.get("operator") == Some(&json!("Exists"))
        && t.get("effect") == Some(&json!("NoExecute"))
        && t.get("tolerationSeconds").is_some_and(Value::is_u64)
        && fields.len() == 4
}

/// Quantities (resources, volume sizes) as whole numbers of thousandths, whoever spelled
/// them; one that does not parse stays as written (and then differs).
fn canonical_quantities(spec: &mut Value) {
    let canon = |q: &mut Value| {
        if let Some(n) = q.as_str().and_then(quantity_units) {
            *q = json!(n.to_string());
        }
    };
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for part in ["limits", "requests"] {
                let found = c.pointer_mut(&format!("/resources/{part}"));
                for q in found.and_then(Value::as_object_mut).into_iter().flatten() {
                    canon(q.1);
                }
            }
        }
    }
    for v in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(q) = v.pointer_mut("/emptyDir/sizeLimit") {
            canon(q);
        }
    }
}

/// The paths where `a` and `b` differ (a key present in one only, a list of another
/// length, another value).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if out.len() >= REPORTED || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let at = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(&at, x, y, out),
                    (Some(_), None) => out.push(format!("{at} (not the operator's)")),
                    (None, _) => out.push(format!("{at} (missing)")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ => out.push(path.to_string()),
    }
}

/// The pod as the API server stores and reports it once scheduled: what a pool pod of
/// this operator looked like on a real v1.37 cluster. For tests.
#[cfg(test)]
pub fn stored(pod: &Pod) -> Pod {
    let mut v = serde_json::to_value(pod).unwrap();
    let spec = v["spec"].as_object_mut().unwrap();
    spec.insert("nodeName".into(), json!("node-1"));
    spec.insert("schedulerName".into(), json!("default-scheduler"));
    spec.insert("serviceAccount".into(), json!("default"));
    spec.insert("serviceAccountName".into(), json!("default"));
    spec.insert("priority".into(), json!(0));
    spec.insert("preemptionPolicy".into(), json!("PreemptLowerPriority"));
    // Appended after the pod's own tolerations by DefaultTolerationSeconds.
    let tolerations = spec.entry("tolerations").or_insert(json!([]));
    tolerations.as_array_mut().unwrap().extend([
        json!({"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300}),
        json!({"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}),
    ]);
    let c = &mut spec.get_mut("containers").unwrap()[0];
    drop_false_plain_bools(c.as_object_mut().unwrap());
    c["terminationMessagePath"] = json!("/dev/termination-log");
    let limits = c["resources"]["limits"].clone();
    c["resources"]["requests"]["ephemeral-storage"] = limits["ephemeral-storage"].clone();
    // The API server's spelling of a quantity.
    if limits["cpu"] == json!("1000m") {
        c["resources"]["limits"]["cpu"] = json!("1");
    }
    serde_json::from_value(v).unwrap()
}

#[cfg(test)]
mod tests {
    use codeinterp_crds::{
        Applied, CodeRun, CodeRunSpec, HELD_LABEL, Language, Limits, RUN_UID_LABEL,
    };
    use k8s_openapi::api::core::v1::{PodSpec, Probe};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::ResourceExt;
    use serde_json::json;

    use crate::config::{Config, PoolSpec};
    use crate::pod_spec::{
        cold_pod, decide_isolation, is_trusted_pool_pod, pool_pod, pool_pod_differences,
        run_pod_differences, stored,
    };

    fn setup() -> (Config, Applied, PoolSpec) {
        let cfg = Config::for_tests();
        let applied = decide_isolation(&cfg, false).unwrap();
        (cfg, applied, PoolSpec::for_tests(Language::Python, 1))
    }

    fn run() -> CodeRun {
        let mut run = CodeRun::new(
            "run-abc",
            CodeRunSpec {
                language: Language::Python,
                code: "print(1)".into(),
                stdin: None,
                args: vec![],
                files: vec![],
                limits: Limits::default(),
                ttl_seconds_after_finished: None,
                cancel: None,
                container: None,
            },
        );
        run.metadata.namespace = Some("sandbox".into());
        run.metadata.uid = Some("run-uid".into());
        run
    }

    #[test]
    fn a_pool_pod_as_the_api_server_stores_it_is_trusted() {
        let (cfg, applied, pool) = setup();
        let mut live = stored(&pool_pod(&pool, "sandbox", &cfg, &applied));
        live.labels_mut()
            .insert(HELD_LABEL.into(), "operator-1".into());
        assert_eq!(
            pool_pod_differences(&live, &pool, &cfg, &applied),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_pool_pod_with_anything_the_operator_would_not_write_is_not_trusted() {
        let (cfg, applied, pool) = setup();
        let honest = stored(&pool_pod(&pool, "sandbox", &cfg, &applied));
        type Tamper = Box<dyn Fn(&mut PodSpec)>;
        let probe = || {
            serde_json::from_value::<Probe>(
                json!({"exec": {"command": ["sh", "-c", "cat /work/*; exit 1"]}}),
            )
            .unwrap()
        };
        let tamper: Vec<(&str, Tamper)> = vec![
            (
                "readinessProbe",
                Box::new(move |s| s.containers[0].readiness_probe = Some(probe())),
            ),
            (
                "livenessProbe",
                Box::new(move |s| s.containers[0].liveness_probe = Some(probe())),
            ),
            (
                "lifecycle",
                Box::new(|s| {
                    s.containers[0].lifecycle = serde_json::from_value(
                        json!({"preStop": {"exec": {"command": ["cat", "/work/in.txt"]}}}),
                    )
                    .unwrap()
                }),
            ),
            (
                "a toleration",
                Box::new(|s| {
                    s.tolerations.as_mut().unwrap().push(
                        serde_json::from_value(json!({"key": "dedicated", "operator": "Exists"}))
                            .unwrap(),
                    )
                }),
            ),
            (
                "shareProcessNamespace",
                Box::new(|s| s.share_process_namespace = Some(true)),
            ),
            (
                "DNS options",
                Box::new(|s| {
                    s.dns_config.as_mut().unwrap().options =
                        serde_json::from_value(json!([{"name": "ndots", "value": "1"}])).unwrap()
                }),
            ),
            (
                "terminationMessagePath",
                Box::new(|s| {
                    s.containers[0].termination_message_path = Some("/work/in.txt".into())
                }),
            ),
            (
                "image",
                Box::new(|s| s.containers[0].image = Some("evil:latest".into())),
            ),
            ("hostNetwork", Box::new(|s| s.host_network = Some(true))),
            (
                "token",
                Box::new(|s| s.automount_service_account_token = Some(true)),
            ),
            (
                "runAsUser",
                Box::new(|s| s.security_context.as_mut().unwrap().run_as_user = Some(0)),
            ),
            (
                "a volume",
                Box::new(|s| s.volumes.as_mut().unwrap()[0].empty_dir = None),
            ),
            (
                "serviceAccountName",
                Box::new(|s| s.service_account_name = Some("admin".into())),
            ),
            (
                "command",
                Box::new(|s| s.containers[0].command = Some(vec!["/bin/sh".into()])),
            ),
            (
                "a memory limit",
                Box::new(|s| {
                    let r = s.containers[0].resources.as_mut().unwrap();
                    r.limits
                        .as_mut()
                        .unwrap()
                        .insert("memory".into(), Quantity("8Gi".into()));
                }),
            ),
            (
                "a deadline",
                Box::new(|s| s.active_deadline_seconds = Some(5)),
            ),
            (
                "a priority class",
                Box::new(|s| s.priority_class_name = Some("system-node-critical".into())),
            ),
        ];
        for (what, change) in &tamper {
            let mut pod = honest.clone();
            change(pod.spec.as_mut().unwrap());
            assert!(
                !is_trusted_pool_pod(&pod, &pool, &cfg, &applied),
                "{what} was trusted"
            );
        }
        let mut labelled = honest.clone();
        labelled
            .labels_mut()
            .insert("allow-egress".into(), "true".into());
        let differs = pool_pod_differences(&labelled, &pool, &cfg, &applied);
        assert_eq!(
            differs,
            ["metadata.labels.allow-egress (not the operator's)"]
        );
        let mut unselected = honest;
        unselected
            .labels_mut()
            .remove(codeinterp_crds::RUNNER_LABEL);
        assert!(!is_trusted_pool_pod(&unselected, &pool, &cfg, &applied));
    }

    #[test]
    fn a_pod_sent_to_a_dedicated_pool_is_trusted_as_stored_and_not_without_its_selector() {
        use clap::Parser as _;
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
        let live = stored(&pool_pod(&pool, "sandbox", &cfg, &applied));
        assert_eq!(
            live.spec
                .as_ref()
                .unwrap()
                .tolerations
                .as_ref()
                .unwrap()
                .len(),
            3
        );
        assert!(is_trusted_pool_pod(&live, &pool, &cfg, &applied));
        let mut moved = live.clone();
        moved.spec.as_mut().unwrap().node_selector = None;
        assert!(!is_trusted_pool_pod(&moved, &pool, &cfg, &applied));
        // Nor is a pod of the plain settings, on which the selector was never set.
        let plain = Config::for_tests();
        assert!(!is_trusted_pool_pod(&live, &pool, &plain, &applied));
    }

    #[test]
    fn a_difference_is_named_by_its_path() {
        let (cfg, applied, pool) = setup();
        let mut pod = stored(&pool_pod(&pool, "sandbox", &cfg, &applied));
        pod.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe::default());
        assert_eq!(
            pool_pod_differences(&pod, &pool, &cfg, &applied),
            ["spec.containers[0].readinessProbe (not the operator's)"]
        );
    }

    #[test]
    fn a_claimed_pool_pod_is_trusted_with_its_runs_label_and_deadline_only() {
        let (cfg, applied, pool) = setup();
        let run = run();
        let limits = run.spec.limits.clamp(&cfg.maxima());
        let mut claimed = stored(&pool_pod(&pool, "sandbox", &cfg, &applied));
        claimed
            .labels_mut()
            .insert(RUN_UID_LABEL.into(), "run-uid".into());
        claimed
            .labels_mut()
            .insert(HELD_LABEL.into(), "operator-1".into());
        claimed.spec.as_mut().unwrap().active_deadline_seconds = Some(633);
        let pools = [pool.clone()];
        assert!(run_pod_differences(&claimed, &run, &limits, &pools, &cfg, &applied).is_empty());
        // Another run's pod, and a pod of a pool that is gone.
        let mut other = claimed.clone();
        other
            .labels_mut()
            .insert(RUN_UID_LABEL.into(), "other-uid".into());
        assert!(!run_pod_differences(&other, &run, &limits, &pools, &cfg, &applied).is_empty());
        assert!(!run_pod_differences(&claimed, &run, &limits, &[], &cfg, &applied).is_empty());
    }

    #[test]
    fn a_cold_pod_is_trusted_as_stored_and_not_with_a_probe() {
        let (cfg, applied, _) = setup();
        let run = run();
        let limits = run.spec.limits.clamp(&cfg.maxima());
        let honest = stored(&cold_pod(&run, &limits, &cfg, &applied));
        assert_eq!(
            run_pod_differences(&honest, &run, &limits, &[], &cfg, &applied),
            Vec::<String>::new()
        );
        let mut planted = honest;
        planted.spec.as_mut().unwrap().containers[0].startup_probe = Some(Probe::default());
        assert!(!run_pod_differences(&planted, &run, &limits, &[], &cfg, &applied).is_empty());
    }

    fn container(memory: &str) -> codeinterp_crds::CodeContainer {
        let mut c: codeinterp_crds::CodeContainer = serde_json::from_value(json!({
            "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
            "metadata": {"name": "box", "namespace": "sandbox", "uid": "box-uid"},
            "spec": {"memoryLimit": memory},
        }))
        .unwrap();
        c.metadata.namespace = Some("sandbox".into());
        c
    }

    #[test]
    fn a_container_pool_pod_is_trusted_once_claimed_and_only_by_its_container() {
        let (cfg, applied, mut pool) = setup();
        pool.container = true;
        pool.memory_mb = 1024;
        let pools = [pool.clone()];
        let idle = stored(&pool_pod(&pool, "sandbox", &cfg, &applied));
        assert!(pool_pod_differences(&idle, &pool, &cfg, &applied).is_empty());
        // The pool makes container pods, not run pods.
        let runner = &idle.spec.as_ref().unwrap().containers[0];
        // Its stdin stays open between runs (stdinOnce false, which the API server stores
        // as absent: a pool of such pods was replaced forever when that was taken for a
        // difference).
        assert_eq!(runner.stdin_once, None);
        assert_eq!(runner.image.as_deref(), Some(cfg.image_container.as_str()));
        let mine = container("1g");
        let mut claimed = idle.clone();
        claimed
            .labels_mut()
            .insert(crate::pod_spec::CONTAINER_LABEL.into(), "box-uid".into());
        let differs = |pod: &k8s_openapi::api::core::v1::Pod,
                       c: &codeinterp_crds::CodeContainer| {
            crate::pod_spec::container_pod_differences(pod, c, &pools, &cfg, &applied)
        };
        assert_eq!(differs(&claimed, &mine), Vec::<String>::new());
        // Another container's pod; a pod with a probe more.
        let mut theirs = container("1g");
        theirs.metadata.uid = Some("their-uid".into());
        assert!(!differs(&claimed, &theirs).is_empty());
        let mut planted = claimed.clone();
        planted.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe::default());
        assert!(!differs(&planted, &mine).is_empty());
        // A cold container pod is trusted as stored.
        let cold = stored(&crate::pod_spec::container_pod(&mine, &cfg, &applied));
        assert_eq!(differs(&cold, &mine), Vec::<String>::new());
    }
}
