//! The Helm chart, installed as a second release beside the one `make up` installed: it
//! passes lint and server-side validation, serves a run through its in-cluster API with a
//! downloadable artifact, rolls its Deployments on upgrade without losing a run in flight,
//! and uninstalls leaving only what it documents it keeps.
use std::process::Command;
use std::time::Duration;

use codeinterp_crds::{CodeRun, Language, Phase, SHARD_LABEL};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testkit::*;

fn repo() -> std::path::PathBuf {
    testkit::rest::repo_root()
}

fn helm_bin() -> std::path::PathBuf {
    let versions = std::fs::read_to_string(repo().join("hack/cluster/versions.env")).unwrap();
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .unwrap();
    let cache =
        std::env::var("CODEINTERP_CACHE").unwrap_or_else(|_| "/var/cache/codeinterp".into());
    std::path::PathBuf::from(cache).join(format!("bin/helm-{version}/helm"))
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(helm_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Release {
    name: String,
    ns: String,
    sandbox: String,
    values: Vec<String>,
}

impl Release {
    fn set_args(&self) -> Vec<String> {
        let mut args = vec![];
        for v in &self.values {
            args.push("--set-string".to_string());
            args.push(v.clone());
        }
        args
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new(helm_bin())
            .args(["uninstall", &self.name, "-n", &self.ns])
            .output();
        for ns in [&self.ns, &self.sandbox] {
            let _ = Command::new(kubectl())
                .args(["delete", "namespace", ns, "--wait=false"])
                .output();
        }
    }
}

#[tokio::test]
async fn the_chart_lints_validates_serves_upgrades_and_uninstalls_cleanly() {
    let client = client().await;
    let id = random_suffix();
    let release = Release {
        name: format!("chart-{id}"),
        ns: format!("chart-{id}-system"),
        sandbox: format!("chart-{id}-sandbox"),
        values: vec![
            format!("sandbox.namespace=chart-{id}-sandbox"),
            format!("operator.shard=chart-{id}"),
            "apiserver.apiKeys=k_chart:chart-tenant:50:100".into(),
            format!(
                "seccomp.kubeletSeccompDir={}",
                run_dir().join("kubelet/seccomp").display()
            ),
            format!("seccomp.profile=chart-{id}/runner.json"),
        ],
    };
    let chart = repo().join("charts/codeinterp");
    let chart = chart.to_str().unwrap();

    // Lint, then render and validate against the real API server (server-side dry run).
    helm(&["lint", chart]);
    let mut template = vec!["template", &release.name, chart, "-n", &release.ns];
    let set = release.set_args();
    template.extend(set.iter().map(String::as_str));
    let rendered = helm(&template);
    Command::new(kubectl())
        .args(["create", "namespace", &release.ns])
        .output()
        .unwrap();
    let path = std::env::temp_dir().join(format!("{}.yaml", release.name));
    std::fs::write(&path, &rendered).unwrap();
    // The sandbox namespace is itself in the manifests: create it first for the dry run.
    let dry = Command::new(kubectl())
        .args(["apply", "--dry-run=server", "-f", path.to_str().unwrap()])
        .output()
        .unwrap();
    let dry_err = String::from_utf8_lossy(&dry.stderr).to_string();
    assert!(
        dry.status.success()
            || dry_err
                .lines()
                .all(|l| l.contains(&format!("namespaces \"{}\" not found", release.sandbox))),
        "server-side validation failed: {dry_err}"
    );

    // Install.
    let mut install = vec![
        "install",
        &release.name,
        chart,
        "-n",
        &release.ns,
        "--wait",
        "--timeout",
        "3m",
    ];
    install.extend(set.iter().map(String::as_str));
    helm(&install);
    let profile = run_dir().join(format!("kubelet/seccomp/chart-{id}/runner.json"));
    assert!(
        eventually(Duration::from_secs(30), || profile.exists()).await,
        "the DaemonSet did not install the seccomp profile"
    );
    assert_eq!(
        std::fs::read(&profile).unwrap(),
        std::fs::read(repo().join("policies/seccomp/runner.json")).unwrap()
    );

    // A run through the in-cluster API, from a client pod, with its artifact downloaded
    // through the signed URL and no token.
    let services: Api<Service> = Api::namespaced(client.clone(), &release.ns);
    let svc = services
        .get(&format!("{}-apiserver", release.name))
        .await
        .unwrap();
    let api = format!("http://{}:8080", svc.spec.unwrap().cluster_ip.unwrap());
    let client_code = r#"
import json, sys, urllib.request, urllib.parse
api = sys.argv[1]
req = urllib.request.Request(api + '/v1/runs', method='POST', headers={'Authorization': 'Bearer k_chart', 'Content-Type': 'application/json'},
    data=json.dumps({'language': 'python', 'code': "open('outputs/out.txt','w').write('from the chart')\nprint('ran')"}).encode())
run = json.load(urllib.request.urlopen(req, timeout=120))
url = urllib.parse.urlsplit(run['artifacts'][0]['url'])
body = urllib.request.urlopen(api + url.path + '?' + url.query, timeout=30).read().decode()
print(json.dumps({'status': run['status'], 'stdout': run['stdout'], 'artifact': body}))
"#;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &release.ns);
    run_pod_to_end(
        &pods,
        json!({"metadata": {"name": "client"}, "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": runner_image("python"), "imagePullPolicy": "Never",
            "command": ["python3", "-c", client_code, api]}]}}),
        Duration::from_secs(150),
    )
    .await
    .unwrap();
    let log = pod_log(&pods, "client").await.unwrap();
    let got: serde_json::Value =
        serde_json::from_str(log.trim()).unwrap_or_else(|_| panic!("client said: {log}"));
    assert_eq!(
        got,
        json!({"status": "completed", "stdout": "ran\n", "artifact": "from the chart"})
    );

    // Upgrade with changed values while a run is in flight: both Deployments roll, the run
    // still completes.
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), &release.sandbox);
    let mut inflight = CodeRun::new(
        "inflight",
        spec(
            Language::Python,
            "import time\nprint('before', flush=True)\ntime.sleep(8)\nprint('after')",
        ),
    );
    inflight.metadata.labels = Some(labels(&[(SHARD_LABEL, &format!("chart-{id}"))]));
    runs.create(&PostParams::default(), &inflight)
        .await
        .unwrap();
    let running = |obj: Option<&CodeRun>| {
        obj.and_then(|r| r.phase())
            .is_some_and(|p| p != Phase::Queued)
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(runs.clone(), "inflight", running),
    )
    .await
    .unwrap()
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.ns);
    let generation = |d: &Deployment| d.metadata.generation.unwrap_or(0);
    let op_before = generation(
        &deployments
            .get(&format!("{}-operator", release.name))
            .await
            .unwrap(),
    );
    let api_before = generation(
        &deployments
            .get(&format!("{}-apiserver", release.name))
            .await
            .unwrap(),
    );
    let mut upgrade = vec![
        "upgrade",
        &release.name,
        chart,
        "-n",
        &release.ns,
        "--wait",
        "--timeout",
        "3m",
    ];
    upgrade.extend(set.iter().map(String::as_str));
    upgrade.extend([
        "--set",
        "operator.runTtlSeconds=7200",
        "--set",
        "apiserver.urlTtlSeconds=600",
    ]);
    helm(&upgrade);
    let op_after = generation(
        &deployments
            .get(&format!("{}-operator", release.name))
            .await
            .unwrap(),
    );
    let api_after = generation(
        &deployments
            .get(&format!("{}-apiserver", release.name))
            .await
            .unwrap(),
    );
    assert!(
        op_after > op_before && api_after > api_before,
        "the Deployments did not roll"
    );
    let done = wait_finished(&runs, "inflight", Duration::from_secs(90))
        .await
        .unwrap();
    let st = done.status.unwrap();
    assert_eq!(st.phase, Some(Phase::Completed), "{st:?}");
    assert_eq!(st.stdout_preview.as_deref(), Some("before\nafter\n"));

    // Uninstall: nothing of the release is left but the CRD and the sandbox namespace,
    // which NOTES.txt and the chart's README say are kept.
    helm(&["uninstall", &release.name, "-n", &release.ns, "--wait"]);
    let by_release =
        ListParams::default().labels(&format!("app.kubernetes.io/instance={}", release.name));
    macro_rules! none_left {
        ($kind:ty, $api:expr) => {{
            let api: Api<$kind> = $api;
            let left: Vec<String> = api
                .list(&by_release)
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| o.name_any())
                .collect();
            assert!(
                left.is_empty(),
                "{} left behind: {left:?}",
                stringify!($kind)
            );
        }};
    }
    none_left!(Deployment, Api::all(client.clone()));
    none_left!(DaemonSet, Api::all(client.clone()));
    none_left!(Service, Api::all(client.clone()));
    none_left!(Secret, Api::all(client.clone()));
    none_left!(ConfigMap, Api::all(client.clone()));
    none_left!(ServiceAccount, Api::all(client.clone()));
    none_left!(Role, Api::all(client.clone()));
    none_left!(RoleBinding, Api::all(client.clone()));
    none_left!(ClusterRole, Api::all(client.clone()));
    none_left!(ClusterRoleBinding, Api::all(client.clone()));
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    assert!(
        namespaces
            .get_opt(&release.sandbox)
            .await
            .unwrap()
            .is_some(),
        "the sandbox namespace is kept"
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    assert!(
        crds.get_opt("coderuns.codeinterp.dev")
            .await
            .unwrap()
            .is_some(),
        "the CRD is kept"
    );
}

/// The environment of a rendered Deployment's only container, by name.
fn deployment_env(rendered: &str, component: &str) -> std::collections::BTreeMap<String, String> {
    let doc = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(component))
        })
        .unwrap_or_else(|| panic!("no {component} Deployment rendered"));
    doc["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn one_value_feeds_both_components_what_they_must_agree_on() {
    // Values chosen to be unlike any default, and large enough that a template printing
    // numbers as floats would show it.
    let rendered = helm(&[
        "template",
        "t",
        "charts/codeinterp",
        "--set",
        "limits.maxTimeoutMs=123000,limits.maxMemoryMb=3072,limits.maxInputMb=77",
        "--set",
        "admission.maxQueuedPerTenant=4321,sandbox.namespace=agreed-ns,apiserver.maxUploadBytes=536870912",
    ]);
    let operator = deployment_env(&rendered, "-operator");
    let api = deployment_env(&rendered, "-apiserver");
    for (name, value) in [
        ("MAX_TIMEOUT_MS", "123000"),
        ("MAX_MEMORY_MB", "3072"),
        ("MAX_INPUT_MB", "77"),
        ("MAX_QUEUED_PER_TENANT", "4321"),
        ("SANDBOX_NAMESPACE", "agreed-ns"),
    ] {
        assert_eq!(
            operator.get(name).map(String::as_str),
            Some(value),
            "operator {name}"
        );
        assert_eq!(
            api.get(name).map(String::as_str),
            Some(value),
            "apiserver {name}"
        );
    }
    assert_eq!(api["MAX_UPLOAD_BYTES"], "536870912");
    // Nothing the operator alone applies is given to the API server to ignore.
    for name in ["SECCOMP_PROFILE", "APPARMOR_PROFILE", "RUNNER_IMAGE_PYTHON"] {
        assert!(!api.contains_key(name), "the API server is given {name}");
    }
}
