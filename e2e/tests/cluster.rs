//! The local cluster is real: pods from locally built images run, their logs come back
//! through the API, and NetworkPolicy, seccomp, memory limits and deadlines are enforced.
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PostParams;
use serde_json::json;
use testkit::*;

const PY: &str = "python";

#[tokio::test]
async fn a_pod_from_a_locally_built_image_runs_and_its_log_is_read_through_the_api() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-log").await;
    let pod = run_pod_to_end(
        &ns.pods(),
        json!({
            "metadata": {"name": "hello"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": runner_image(PY), "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import sys; print('hello from', sys.version_info[:2])"]
            }]}
        }),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Succeeded"));
    let log = pod_log(&ns.pods(), "hello").await.unwrap();
    assert_eq!(log.trim(), "hello from (3, 13)");
}

/// A Python probe: tries each host:port and prints one line `target ok|refused|timeout|error`.
const PROBE: &str = r#"
import socket, sys, time
time.sleep(float(sys.argv[1]))
for target in sys.argv[2:]:
    host, port = target.rsplit(':', 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, 'ok', flush=True)
    except socket.timeout:
        print(target, 'timeout', flush=True)
    except ConnectionRefusedError:
        print(target, 'refused', flush=True)
    except OSError as e:
        print(target, 'error', e.errno, flush=True)
"#;

fn probe_pod(name: &str, labels: serde_json::Value, targets: &[String]) -> serde_json::Value {
    let mut args = vec!["python3".to_string(), "-c".into(), PROBE.into(), "2".into()];
    args.extend(targets.iter().cloned());
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": runner_image(PY), "imagePullPolicy": "Never", "command": args
        }]}
    })
}

fn results(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(t, r)| (t.to_string(), r.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn deny_all_policy_blocks_a_selected_pod_from_pods_node_and_api_server_but_not_others() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-netpol").await;
    let pods = ns.pods();
    let node = node_ip(&client).await;
    let host = HostListener::start().await;

    // Targets, all on this machine: a listener in another pod, one on the node, the API server.
    let listener = start_pod(
        &pods,
        json!({
            "metadata": {"name": "listener", "labels": {"app": "listener"}},
            "spec": {"containers": [{
                "name": "main", "image": runner_image(PY), "imagePullPolicy": "Never",
                "command": ["python3", "-c",
                    "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 8080)); s.listen()\nwhile True:\n    c,_=s.accept(); c.sendall(b'hi'); c.close()"]
            }]}
        }),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // let it bind
    let targets = vec![
        format!("{}:8080", pod_ip(&listener)),
        format!("{node}:{}", host.port),
        format!("{node}:6443"),
    ];

    let policies: kube::Api<NetworkPolicy> = kube::Api::namespaced(client.clone(), &ns.name);
    let deny: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny-all"},
        "spec": {"podSelector": {"matchLabels": {"sandboxed": "true"}}, "policyTypes": ["Ingress", "Egress"]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &deny)
        .await
        .unwrap();

    let control = run_pod_to_end(
        &pods,
        probe_pod("control", json!({}), &targets),
        Duration::from_secs(90),
    );
    let sandboxed = run_pod_to_end(
        &pods,
        probe_pod("sandboxed", json!({"sandboxed": "true"}), &targets),
        Duration::from_secs(90),
    );
    let (control, sandboxed) = tokio::join!(control, sandboxed);
    control.unwrap();
    sandboxed.unwrap();

    let control_log = pod_log(&pods, "control").await.unwrap();
    let sandboxed_log = pod_log(&pods, "sandboxed").await.unwrap();
    let control = results(&control_log);
    let sandboxed = results(&sandboxed_log);
    assert_eq!(control.len(), 3, "control probe output: {control_log}");
    assert_eq!(
        sandboxed.len(),
        3,
        "sandboxed probe output: {sandboxed_log}"
    );
    for (target, result) in &control {
        assert_eq!(
            result, "ok",
            "the unselected pod must reach {target}: the network works"
        );
    }
    for (target, result) in &sandboxed {
        assert_ne!(result, "ok", "the deny-all pod reached {target}");
    }
    assert!(
        host.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the node listener saw the control"
    );
}

#[tokio::test]
async fn a_localhost_seccomp_profile_denies_its_syscall_and_only_under_that_profile() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-seccomp").await;
    // A profile that allows everything but mkdir/mkdirat.
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let dir = run_dir().join("kubelet/seccomp/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("deny-mkdir.json"), profile.to_string()).unwrap();

    let code = "import os\ntry:\n    os.mkdir('/tmp/x'); print('made')\nexcept PermissionError: print('denied')";
    let manifest = |name: &str, seccomp: serde_json::Value| {
        json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "securityContext": {"seccompProfile": seccomp}, "containers": [{
                "name": "main", "image": runner_image(PY), "imagePullPolicy": "Never",
                "command": ["python3", "-c", code]
            }]}
        })
    };
    let pods = ns.pods();
    let (a, b) = tokio::join!(
        run_pod_to_end(
            &pods,
            manifest(
                "confined",
                json!({"type": "Localhost", "localhostProfile": "e2e/deny-mkdir.json"})
            ),
            Duration::from_secs(90)
        ),
        run_pod_to_end(
            &pods,
            manifest("unconfined", json!({"type": "Unconfined"})),
            Duration::from_secs(90)
        ),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(pod_log(&pods, "confined").await.unwrap().trim(), "denied");
    assert_eq!(pod_log(&pods, "unconfined").await.unwrap().trim(), "made");
}

#[tokio::test]
async fn a_pod_over_its_memory_limit_is_oom_killed() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-oom").await;
    let pod = run_pod_to_end(
        &ns.pods(),
        json!({
            "metadata": {"name": "hog"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": runner_image(PY), "imagePullPolicy": "Never",
                "command": ["python3", "-c", "b = bytearray(400 * 1024 * 1024); print('survived')"],
                "resources": {"limits": {"memory": "64Mi"}}
            }]}
        }),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    let terminated = container_terminated(&pod);
    assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(terminated.exit_code, 137);
}

#[tokio::test]
async fn active_deadline_seconds_ends_a_pod_that_runs_too_long() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-deadline").await;
    let started = std::time::Instant::now();
    let pod = run_pod_to_end(
        &ns.pods(),
        json!({
            "metadata": {"name": "sleeper"},
            "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 3, "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main", "image": runner_image(PY), "imagePullPolicy": "Never",
                    "command": ["python3", "-c", "import time; time.sleep(120)"]
                }]}
        }),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended after {:?}",
        started.elapsed()
    );
}
