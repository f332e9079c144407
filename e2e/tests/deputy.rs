//! The operator and the REST API as confused deputies (issue 18, items 8 to 10): what anyone
//! with ordinary RBAC in the sandbox namespace may write (a pod, a run's status, a queued
//! run's spec) must not get them to hand a tenant's job, files or links to someone else.
//! Each attack is made by a ServiceAccount holding such rights, next to a control showing
//! those rights work where they are legitimate. Where the chart's admission policy refuses
//! an attack, the operator's (or the REST API's) own check is tried too, with the policy
//! bypassed by acting as the operator's account.
use std::time::Duration;

use codeinterp_crds::{CodeRun, Phase, SHARD_LABEL};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testkit::rest::{ApiServer, Key, SANDBOX_NAMESPACE};
use testkit::*;

const WITHIN: Duration = Duration::from_secs(120);
const OPERATOR: &str = "system:serviceaccount:codeinterp-system:codeinterp-operator";
const REST_API: &str = "system:serviceaccount:codeinterp-system:codeinterp-apiserver";

/// A ServiceAccount (in the test's namespace) holding `rules` in the sandbox namespace, and
/// the ClusterRole `edit` there too when `edit`: what a platform team hands out.
async fn sandbox_user(
    client: &kube::Client,
    ns: &TestNamespace,
    name: &str,
    rules: Value,
    edit: bool,
) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let sa = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let role_name = format!("{name}-{}", ns.name);
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": ns.name}]);
    let roles: Api<Role> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let role = json!({"metadata": {"name": role_name}, "rules": rules});
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let mut refs = vec![("Role", role_name.clone(), role_name.clone())];
    if edit {
        refs.push(("ClusterRole", "edit".into(), format!("{role_name}-edit")));
    }
    for (kind, role, binding) in refs {
        let body = json!({
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": subject,
        });
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .unwrap();
    }
    format!("system:serviceaccount:{}:{name}", ns.name)
}

/// Removes the Roles and bindings [`sandbox_user`] made in the sandbox namespace.
async fn forget_user(client: &kube::Client, ns: &TestNamespace, name: &str) {
    let role_name = format!("{name}-{}", ns.name);
    let roles: Api<Role> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    for binding in [role_name.clone(), format!("{role_name}-edit")] {
        let _ = bindings.delete(&binding, &DeleteParams::default()).await;
    }
}

/// `kubectl create` of a manifest as `who`.
fn create_as(who: &str, manifest: &Value) -> (bool, String) {
    kubectl_run(
        &["--as", who, "create", "-f", "-"],
        Some(&manifest.to_string()),
    )
}

/// A merge patch of an object in the sandbox namespace as `who`.
fn patch_as(who: &str, what: &str, patch: Value, status: bool) -> (bool, String) {
    let mut args = vec!["--as", who, "-n", SANDBOX_NAMESPACE, "patch", what];
    if status {
        args.push("--subresource=status");
    }
    let patch = patch.to_string();
    args.extend(["--type=merge", "-p", &patch]);
    kubectl_run(&args, None)
}

fn refused(ok: bool, out: &str, says: &str) -> bool {
    !ok && out.contains(says)
}

/// A run in the sandbox namespace that no operator serves yet (its shard is nobody's), so
/// an attack can be set up while it waits; [`unpark`] hands it to the operator.
fn parked(name: &str, shard: &str, code: &str, stdin: Option<&str>) -> Value {
    let mut run = json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeRun",
        "metadata": {"name": name, "namespace": SANDBOX_NAMESPACE, "labels": {SHARD_LABEL: shard}},
        "spec": {"language": "python", "code": code, "limits": {"timeoutMs": 20000}},
    });
    if let Some(stdin) = stdin {
        run["spec"]["stdin"] = json!(stdin);
    }
    run
}

async fn unpark(runs: &Api<CodeRun>, name: &str) {
    let patch = json!({"metadata": {"labels": {SHARD_LABEL: null}}});
    runs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// A pod that takes whatever arrives on its stdin and prints it to its log: what anyone
/// planting a pod for a run's job would run. Labelled and owned as `metadata` says.
fn planted_pod(metadata: Value) -> Value {
    let echo = "import os\nwhile True:\n    d = os.read(0, 65536)\n    if not d:\n        break\n    os.write(1, d)\n";
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "runner", "image": runner_image("python"), "imagePullPolicy": "Never",
                "command": ["python3", "-c", echo], "stdin": true, "stdinOnce": true,
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    })
}

/// Everything a pod logs until it ends or is deleted, collected in the background.
fn follow_log(pods: &Api<Pod>, name: &str) -> tokio::task::JoinHandle<String> {
    let (pods, name) = (pods.clone(), name.to_string());
    tokio::spawn(async move {
        let params = LogParams {
            follow: true,
            ..Default::default()
        };
        let Ok(stream) = pods.log_stream(&name, &params).await else {
            return String::new();
        };
        let mut lines = stream.lines();
        let mut out = String::new();
        while let Some(Ok(line)) = lines.next().await {
            out.push_str(&line);
            out.push('\n');
        }
        out
    })
}

/// Changes an annotation of the pod every 100 ms for a few seconds, or until it is gone.
fn touch_until_gone(pods: &Api<Pod>, name: &str) -> tokio::task::JoinHandle<()> {
    let (pods, name) = (pods.clone(), name.to_string());
    tokio::spawn(async move {
        for i in 0..50 {
            let patch = json!({"metadata": {"annotations": {"touched": i.to_string()}}});
            let params = PatchParams::default();
            if pods
                .patch(&name, &params, &Patch::Merge(&patch))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> bool {
    eventually_async(Duration::from_secs(60), || async {
        pods.get_opt(name)
            .await
            .ok()
            .flatten()
            .is_some_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Running"))
    })
    .await
}

async fn gone(pods: &Api<Pod>, name: &str, within: Duration) -> bool {
    eventually_async(within, || async {
        pods.get_opt(name)
            .await
            .ok()
            .flatten()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await
}

// ---- 8. a pod that names a run as its controller does not get the run's job ----

#[tokio::test]
async fn a_pod_planted_as_a_runs_own_is_refused_and_never_handed_the_job() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-deputy-pod").await;
    let read_runs = json!([{"apiGroups": ["codeinterp.dev"], "resources": ["coderuns"],
                            "verbs": ["get", "list", "watch"]}]);
    let planter = sandbox_user(&client, &ns, "planter", read_runs, true).await;
    let suffix = random_suffix();
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let name = format!("victim-{suffix}");
    let secret = format!("the victim's stdin {suffix}");
    let code = "print('the victim ran: ' + input())";
    let (ok, out) = create_as(
        REST_API,
        &parked(&name, &format!("parked-{suffix}"), code, Some(&secret)),
    );
    assert!(ok, "{out}");
    let uid = runs.get(&name).await.unwrap().uid().unwrap();
    let planted_name = format!("planted-{suffix}");
    let planted = planted_pod(json!({
        "name": planted_name, "namespace": SANDBOX_NAMESPACE,
        "labels": {"codeinterp.dev/runner": "true"},
        "ownerReferences": [{"apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeRun",
                             "name": name, "uid": uid, "controller": true}],
    }));

    // The attack: a pod naming the run as its controller, by someone who may create pods.
    let (ok, out) = create_as(&planter, &planted);
    assert!(
        refused(ok, &out, "only the codeinterp operator"),
        "the planted pod was admitted: {out}"
    );
    // The control: the same pod, neither labelled nor owned, is theirs to create.
    let plain =
        planted_pod(json!({"name": format!("plain-{suffix}"), "namespace": SANDBOX_NAMESPACE}));
    let (ok, out) = create_as(&planter, &plain);
    assert!(ok, "the planter may not create pods at all: {out}");

    // The operator's own check, the policy bypassed: the pod is not one it would create.
    let (ok, out) = create_as(OPERATOR, &planted);
    assert!(ok, "{out}");
    assert!(wait_running(&pods, &planted_name).await);
    let seen = follow_log(&pods, &planted_name);
    // The operator forgets pods of runs it does not serve: the pod changes (as anything may
    // change it) around the moment the run is handed over, so the operator sees it then.
    let touching = touch_until_gone(&pods, &planted_name);
    tokio::time::sleep(Duration::from_millis(300)).await;
    unpark(&runs, &name).await;
    let done = wait_finished(&runs, &name, WITHIN).await.unwrap();
    let status = done.status.clone().unwrap_or_default();
    assert!(
        gone(&pods, &planted_name, Duration::from_secs(30)).await,
        "the planted pod is still there"
    );
    touching.abort();
    let leaked = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .map(|r| r.unwrap_or_default())
        .unwrap_or_default();
    assert!(
        !leaked.contains(&secret),
        "the planted pod was handed the job: {leaked}"
    );
    // The run itself ran, on a pod of the operator's, once the planted one was replaced.
    assert_eq!(done.phase(), Some(Phase::Completed), "{status:?}");
    assert_eq!(
        status.stdout_preview.as_deref(),
        Some(format!("the victim ran: {secret}\n").as_str())
    );
    assert_eq!(status.restarts, 1, "the planted pod was not replaced");
    let _ = runs.delete(&name, &DeleteParams::background()).await;
    let _ = pods
        .delete(&format!("plain-{suffix}"), &DeleteParams::background())
        .await;
    forget_user(&client, &ns, "planter").await;
}

/// A RunnerPool of a shape no other pool has, with one idle pod; its name.
async fn own_pool(client: &kube::Client, suffix: &str) -> String {
    let name = format!("deputy-{suffix}");
    let pools: Api<codeinterp_crds::RunnerPool> =
        Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let pool = json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "RunnerPool",
        "metadata": {"name": name, "namespace": SANDBOX_NAMESPACE},
        "spec": {"language": "python", "memoryMb": 96, "kernel": false,
                 "minReplicas": 1, "maxReplicas": 1},
    });
    pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(pool).unwrap(),
        )
        .await
        .unwrap();
    name
}

/// The pool's idle pod the operator holds a session to, once it has one.
async fn idle_pool_pod(pods: &Api<Pod>, pool: &str) -> Option<Pod> {
    let selector =
        format!("codeinterp.dev/pool={pool},!codeinterp.dev/run-uid,codeinterp.dev/held-by");
    let params = ListParams::default().labels(&selector);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let list = pods
            .list(&params)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let idle = list.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if idle.is_some() {
            return idle;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// A copy of a genuine idle pool pod with one readiness probe more, which prints whatever
/// input files a run put in `/work` into the pod's events.
fn with_a_probe(genuine: &Pod) -> Value {
    let mut pod = serde_json::to_value(genuine).unwrap();
    let meta = &genuine.metadata;
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.remove("codeinterp.dev/held-by");
    pod["metadata"] = json!({
        "generateName": format!("{}x", meta.generate_name.clone().unwrap_or_default()),
        "namespace": SANDBOX_NAMESPACE, "labels": labels,
        "ownerReferences": meta.owner_references,
    });
    pod.as_object_mut().unwrap().remove("status");
    pod["spec"].as_object_mut().unwrap().remove("nodeName");
    let show =
        "import glob, sys\nprint([open(f).read() for f in glob.glob('/work/*')])\nsys.exit(1)";
    pod["spec"]["containers"][0]["readinessProbe"] = json!({
        "exec": {"command": ["python3", "-c", show]}, "periodSeconds": 1,
    });
    pod
}

#[tokio::test]
async fn a_pool_pod_planted_with_one_probe_more_is_refused_and_never_claimed() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-deputy-pool").await;
    let read_pools = json!([{"apiGroups": ["codeinterp.dev"], "resources": ["runnerpools"],
                             "verbs": ["get", "list", "watch"]}]);
    let planter = sandbox_user(&client, &ns, "planter", read_pools, true).await;
    let suffix = random_suffix();
    let pods: Api<Pod> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let pool = own_pool(&client, &suffix).await;
    let genuine = idle_pool_pod(&pods, &pool)
        .await
        .expect("the pool's idle pod");
    let planted = with_a_probe(&genuine);

    // The attack: the pool's pod, copied with one probe more, by someone who may create pods.
    let (ok, out) = create_as(&planter, &planted);
    assert!(
        refused(ok, &out, "only the codeinterp operator"),
        "the planted pool pod was admitted: {out}"
    );
    // The control: the very same pod, without the pool's labels and owner, is theirs to make.
    let mut plain = planted.clone();
    plain["metadata"] = json!({"name": format!("plain-{suffix}"), "namespace": SANDBOX_NAMESPACE});
    let (ok, out) = create_as(&planter, &plain);
    assert!(ok, "the planter may not create pods at all: {out}");

    // The operator's own check, the policy bypassed: the pod is never trusted and goes.
    let (ok, out) = create_as(OPERATOR, &planted);
    assert!(ok, "{out}");
    let planted_name = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pod/"))
        .expect("the planted pod's name")
        .to_string();
    assert!(
        gone(&pods, &planted_name, Duration::from_secs(30)).await,
        "the planted pool pod was kept"
    );
    // The controls: the genuine pod is trusted (the first run claims it), and the pool serves
    // on. Before the fix the second run claimed the planted pod and its probe showed /work.
    let limits = json!({"memoryMb": 96, "timeoutMs": 20000});
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let secret = format!("pool secret {suffix}");
    let mut finished = Vec::new();
    for (i, code) in [
        "print('first')",
        "import time\ntime.sleep(4)\nprint(open('secret.txt').read())",
    ]
    .into_iter()
    .enumerate()
    {
        let run = json!({
            "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeRun",
            "metadata": {"name": format!("pooled-{i}-{suffix}"), "namespace": SANDBOX_NAMESPACE},
            "spec": {"language": "python", "code": code, "limits": limits,
                     "files": [{"name": "secret.txt",
                                "contentBase64": base64_of(&secret)}]},
        });
        runs.create(
            &PostParams::default(),
            &serde_json::from_value(run).unwrap(),
        )
        .await
        .unwrap();
        let done = wait_finished(&runs, &format!("pooled-{i}-{suffix}"), WITHIN)
            .await
            .unwrap();
        finished.push(done);
    }
    let first = finished[0].status.clone().unwrap_or_default();
    assert_eq!(finished[0].phase(), Some(Phase::Completed), "{first:?}");
    assert_eq!(
        first.start_mode.map(|m| format!("{m:?}")).as_deref(),
        Some("Warm"),
        "a genuine pool pod was not trusted: {first:?}"
    );
    let second = finished[1].status.clone().unwrap_or_default();
    assert_eq!(finished[1].phase(), Some(Phase::Completed), "{second:?}");
    assert_eq!(
        second.stdout_preview.as_deref(),
        Some(format!("{secret}\n").as_str())
    );
    let shown = probe_output(&client, &planted_name).await;
    assert!(
        !shown.contains(&secret),
        "the planted pod's probe showed the run's input: {shown}"
    );
    for run in &finished {
        let _ = runs
            .delete(&run.name_any(), &DeleteParams::background())
            .await;
    }
    let pools: Api<codeinterp_crds::RunnerPool> =
        Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let _ = pools.delete(&pool, &DeleteParams::background()).await;
    let _ = pods
        .delete(&format!("plain-{suffix}"), &DeleteParams::background())
        .await;
    forget_user(&client, &ns, "planter").await;
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What the events of a pod say (a failing probe's output among them).
async fn probe_output(client: &kube::Client, pod: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
        .filter_map(|e| e.note)
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- 9. a signed link only for a file the run's own record lists ----

#[tokio::test]
async fn a_status_naming_another_tenants_file_gets_no_signed_link() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-deputy-status").await;
    let status_rules = json!([
        {"apiGroups": ["codeinterp.dev"], "resources": ["coderuns"], "verbs": ["get", "list"]},
        {"apiGroups": ["codeinterp.dev"], "resources": ["coderuns/status"],
         "verbs": ["get", "patch", "update"]},
    ]);
    let writer = sandbox_user(&client, &ns, "writer", status_rules, false).await;
    let (victim, thief) = (Key::fresh("e2e-victim"), Key::fresh("e2e-thief"));
    let server = ApiServer::start(&Key::api_keys(&[&victim, &thief]), &[]).await;
    let (victim_api, thief_api) = (server.api(&victim.token), server.api(&thief.token));
    let secret = format!("the victim's secret {}", random_suffix());
    let file = victim_api.upload_ok("secret.txt", secret.as_bytes()).await;
    let sleeper = json!({"language": "python", "code": "import time\ntime.sleep(30)",
                         "limits": {"timeout_ms": 60000}, "wait": false});
    let run = thief_api.create_run(sleeper).await;
    let id = run["id"].as_str().unwrap().to_string();
    thief_api
        .wait_run_until(&id, WITHIN, |r| r["status"] == "running")
        .await;
    let forged = json!({"status": {"artifacts": [
        {"id": file, "name": "loot.txt", "bytes": secret.len(), "sha256": "00"}]}});

    // The attack: the thief's own run's status names the victim's file.
    let (ok, out) = patch_as(&writer, &format!("coderun/{id}"), forged.clone(), true);
    assert!(
        refused(
            ok,
            &out,
            "only the codeinterp operator may write the status"
        ),
        "the status was written: {out}"
    );
    // The REST API's own check, the policy bypassed: it signs only what the record lists.
    let (ok, out) = patch_as(OPERATOR, &format!("coderun/{id}"), forged, true);
    assert!(ok, "{out}");
    let seen = thief_api.get(&format!("/v1/runs/{id}")).await.expect(200);
    for artifact in seen["artifacts"].as_array().into_iter().flatten() {
        let url = artifact["url"].as_str().unwrap_or_default();
        let got = thief_api.anonymous().get(url).await;
        assert!(
            !got.text().contains(&secret),
            "the thief downloaded the victim's file through {url}"
        );
    }
    assert_eq!(seen["artifacts"], json!([]), "{seen}");
    thief_api
        .post_empty(&format!("/v1/runs/{id}/cancel"))
        .await
        .expect(200);

    // The control: the thief's own output file is signed and downloads without a key.
    let own = json!({"language": "python", "code":
        "import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/mine.txt', 'w').write('mine')"});
    let done = thief_api.create_run(own).await;
    assert_eq!(done["status"], "completed", "{done}");
    let url = done["artifacts"][0]["url"].as_str().expect("a signed link");
    assert_eq!(thief_api.anonymous().get(url).await.text(), "mine");
    forget_user(&client, &ns, "writer").await;
}

// ---- 10. a run's spec is fixed once created ----

#[tokio::test]
async fn nothing_can_be_added_to_a_queued_runs_spec_but_cancel() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-deputy-spec").await;
    let editor_rules = json!([{"apiGroups": ["codeinterp.dev"],
        "resources": ["coderuns", "codecontainers"], "verbs": ["get", "list", "patch", "update"]}]);
    let editor = sandbox_user(&client, &ns, "editor", editor_rules, false).await;
    let suffix = random_suffix();
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let name = format!("queued-{suffix}");
    let code = "import os, sys\nprint('stdin', repr(sys.stdin.read()), 'args', sys.argv[1:], 'files', sorted(os.listdir('.')))";
    // A tenant's run, made by the REST API's account, waiting in line.
    let mut run = parked(&name, &format!("parked-{suffix}"), code, None);
    run["metadata"]["labels"]["codeinterp.dev/tenant"] = json!("dev");
    let (ok, out) = create_as(REST_API, &run);
    assert!(ok, "{out}");
    let what = format!("coderun/{name}");
    let attacks = [
        (json!({"spec": {"stdin": "injected"}}), "stdin is immutable"),
        (
            json!({"spec": {"args": ["--injected"]}}),
            "args are immutable",
        ),
        (
            json!({"spec": {"files": [{"name": "x.py", "contentBase64": base64_of("injected")}]}}),
            "files are immutable",
        ),
        (
            json!({"spec": {"ttlSecondsAfterFinished": 0}}),
            "ttlSecondsAfterFinished is immutable",
        ),
        (
            json!({"spec": {"container": "someone-elses"}}),
            "container is immutable",
        ),
        (
            json!({"spec": {"limits": {"memoryMb": 64}}}),
            "limits are immutable",
        ),
    ];
    for (patch, says) in attacks {
        let (ok, out) = patch_as(&editor, &what, patch.clone(), false);
        assert!(refused(ok, &out, says), "{patch} was taken: {out}");
    }
    // The control: the editor may change the run where that is allowed (a label).
    let (ok, out) = kubectl_run(
        &[
            "--as",
            &editor,
            "-n",
            SANDBOX_NAMESPACE,
            "label",
            &what,
            "seen=yes",
        ],
        None,
    );
    assert!(ok, "the editor may not touch the run at all: {out}");
    unpark(&runs, &name).await;
    let done = wait_finished(&runs, &name, WITHIN).await.unwrap();
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(done.phase(), Some(Phase::Completed), "{status:?}");
    let printed = status.stdout_preview.unwrap_or_default();
    assert!(
        printed.starts_with("stdin '' args []") && !printed.contains("injected"),
        "the run took something added after it was made: {printed}"
    );
    let _ = runs.delete(&name, &DeleteParams::background()).await;
    forget_user(&client, &ns, "editor").await;
}

#[tokio::test]
async fn a_containers_file_operations_are_the_rest_apis_and_its_settings_are_fixed() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-deputy-ctr").await;
    let editor_rules = json!([{"apiGroups": ["codeinterp.dev"],
        "resources": ["codecontainers"], "verbs": ["get", "list", "patch", "update"]}]);
    let editor = sandbox_user(&client, &ns, "editor", editor_rules, false).await;
    let suffix = random_suffix();
    let name = format!("ctr-{suffix}");
    let container = json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
        "metadata": {"name": name, "namespace": SANDBOX_NAMESPACE,
                     "labels": {SHARD_LABEL: format!("parked-{suffix}"), "codeinterp.dev/tenant": "dev"}},
        "spec": {"displayName": "analysis", "idleMinutes": 20},
    });
    let (ok, out) = create_as(REST_API, &container);
    assert!(ok, "{out}");
    let what = format!("codecontainer/{name}");
    let put = json!({"spec": {"fileOps": [{"seq": 1, "kind": "Put", "path": "x.csv", "fileId": "file-of-someone"}]}});
    let attacks = [
        (
            put.clone(),
            "only the codeinterp REST API may add or change a container's fileOps",
        ),
        (
            json!({"spec": {"idleMinutes": 1440}}),
            "idleMinutes is immutable",
        ),
        (
            json!({"spec": {"displayName": "renamed"}}),
            "displayName is immutable",
        ),
        (
            json!({"spec": {"memoryLimit": "64g"}}),
            "memoryLimit is immutable",
        ),
    ];
    for (patch, says) in attacks {
        let (ok, out) = patch_as(&editor, &what, patch.clone(), false);
        assert!(refused(ok, &out, says), "{patch} was taken: {out}");
    }
    // The controls: the REST API appends file operations; anyone allowed may stop it.
    let (ok, out) = patch_as(REST_API, &what, put, false);
    assert!(ok, "the REST API's account was refused: {out}");
    let (ok, out) = patch_as(&editor, &what, json!({"spec": {"stop": true}}), false);
    assert!(ok, "{out}");
    let containers: Api<codeinterp_crds::CodeContainer> =
        Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let _ = containers.delete(&name, &DeleteParams::background()).await;
    forget_user(&client, &ns, "editor").await;
}
