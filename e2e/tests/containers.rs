//! Containers through kubectl's path (CodeContainers and CodeRuns made directly, a
//! namespace's tenant): what the operator and the container's pod must hold beyond what the
//! REST tests (`containers_api.rs`) show. A timeout interrupts the program and keeps the
//! state; an interpreter that dies is started afresh and the run says so, the files stay;
//! an idle container expires; a new leader goes on with the same pod and its state, and
//! finishes a run the old one left going; every isolation guarantee of a one-shot run
//! holds in a container's pod.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeContainer, CodeRun, ContainerPhase, Language, Phase, Reason};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testkit::*;

const WITHIN: Duration = Duration::from_secs(120);

/// A new container in the namespace, idle for at most `idle_minutes`.
async fn container(ns: &TestNamespace, idle_minutes: u32) -> String {
    let name = format!("box-{}", random_suffix());
    let c: CodeContainer = serde_json::from_value(json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
        "metadata": {"name": name},
        "spec": {"memoryLimit": "1g", "idleMinutes": idle_minutes},
    }))
    .unwrap();
    containers(ns)
        .create(&PostParams::default(), &c)
        .await
        .unwrap();
    name
}

fn containers(ns: &TestNamespace) -> Api<CodeContainer> {
    Api::namespaced(ns.runs().into_client(), &ns.name)
}

/// A run of `code` in the container, waited for.
async fn run_in(ns: &TestNamespace, container: &str, language: Language, code: &str) -> CodeRun {
    run_in_with(ns, container, spec(language, code)).await
}

async fn run_in_with(
    ns: &TestNamespace,
    container: &str,
    mut s: codeinterp_crds::CodeRunSpec,
) -> CodeRun {
    s.container = Some(container.to_string());
    run_to_end(&ns.runs(), s, WITHIN).await.unwrap()
}

fn out(run: &CodeRun) -> String {
    let st = run.status.as_ref().unwrap();
    st.stdout_preview.clone().unwrap_or_default()
}

fn ended(run: &CodeRun) -> (Option<Phase>, Option<Reason>) {
    let st = run.status.as_ref().unwrap();
    (st.phase, st.reason)
}

/// The container's pod, once it runs.
async fn pod_of(ns: &TestNamespace, container: &str) -> Pod {
    let api = containers(ns);
    let deadline = Instant::now() + WITHIN;
    loop {
        let name = api
            .get(container)
            .await
            .ok()
            .and_then(|c| c.status?.pod_name);
        if let Some(name) = name
            && let Ok(pod) = ns.pods().get(&name).await
        {
            return pod;
        }
        assert!(Instant::now() < deadline, "the container has no pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_timeout_keeps_the_state_and_a_lost_interpreter_starts_afresh_with_the_files_kept() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "ctr-life").await;
    let c = container(&ns, 20).await;
    let first = run_in(
        &ns,
        &c,
        Language::Python,
        "x = 41\nopen('keep.txt', 'w').write('kept')\nprint('set')",
    )
    .await;
    assert_eq!(out(&first), "set\n", "{:?}", first.status);
    let st = first.status.as_ref().unwrap();
    assert_eq!(st.start_mode, Some(codeinterp_crds::StartMode::Container));
    // The file the run wrote is its output file.
    assert!(st.artifacts.iter().any(|a| a.name == "keep.txt"), "{st:?}");

    let mut slow = spec(Language::Python, "import time\ny = 1\ntime.sleep(60)");
    slow.limits.timeout_ms = Some(2000);
    let started = Instant::now();
    let slow = run_in_with(&ns, &c, slow).await;
    assert_eq!(
        ended(&slow),
        (Some(Phase::TimedOut), Some(Reason::TimedOut)),
        "{:?}",
        slow.status
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The interpreter was interrupted, not restarted: what came before is there.
    let after = run_in(&ns, &c, Language::Python, "x += 1\nprint(x, y)").await;
    assert_eq!(out(&after), "42 1\n", "{:?}", after.status);

    let lost = run_in(&ns, &c, Language::Python, "import os\nos._exit(3)").await;
    assert_eq!(
        ended(&lost),
        (Some(Phase::Failed), Some(Reason::InterpreterLost)),
        "{:?}",
        lost.status
    );
    // A fresh interpreter, the same folder.
    let fresh = run_in(
        &ns,
        &c,
        Language::Python,
        "print('x' in globals(), open('keep.txt').read())",
    )
    .await;
    assert_eq!(out(&fresh), "False kept\n", "{:?}", fresh.status);
    // Other languages keep their own interpreter in the same folder.
    let node = run_in(
        &ns,
        &c,
        Language::Node,
        "const fs = require('fs'); console.log(fs.readFileSync('keep.txt', 'utf8'))",
    )
    .await;
    assert_eq!(out(&node), "kept\n", "{:?}", node.status);
}

#[tokio::test]
async fn a_container_idle_past_its_minutes_expires_and_a_run_to_it_fails_as_expired() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "ctr-idle").await;
    let c = container(&ns, 1).await;
    let first = run_in(&ns, &c, Language::Python, "print('once')").await;
    assert_eq!(out(&first), "once\n");
    let pod = pod_of(&ns, &c).await;
    let api = containers(&ns);
    let expired = eventually_async(Duration::from_secs(150), || async {
        api.get(&c)
            .await
            .ok()
            .and_then(|c| c.status?.phase)
            .is_some_and(|p| p == ContainerPhase::Expired)
    })
    .await;
    assert!(expired, "the container did not expire");
    let gone = eventually_async(Duration::from_secs(60), || async {
        ns.pods()
            .get_opt(&pod.name_any())
            .await
            .unwrap()
            .is_none_or(|p| p.uid() != pod.uid() || p.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert!(gone, "the expired container's pod is still there");
    let late = run_in(&ns, &c, Language::Python, "print('too late')").await;
    assert_eq!(
        ended(&late),
        (Some(Phase::Failed), Some(Reason::ContainerExpired))
    );
    assert_eq!(
        late.status.unwrap().message.as_deref(),
        Some("Container is expired.")
    );
}

#[tokio::test]
async fn a_new_leader_goes_on_with_the_same_pod_and_its_state() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "ctr-leader").await;
    let c = container(&ns, 20).await;
    let set = run_in(&ns, &c, Language::Ruby, "$n = 1\nputs $n").await;
    assert_eq!(out(&set), "1\n", "{:?}", set.status);
    let pod = pod_of(&ns, &c).await;
    // A run still going when the leader dies, made longer ago than a container may take to
    // show in the cache: the new leader lists runs and containers side by side, and must
    // not fail it as naming no container while its containers are still being listed. It
    // runs once: the new leader reads its record if it still runs when it attaches, and if
    // it ended before, the run is not run again and says its record is lost.
    let mut slow = spec(Language::Ruby, "sleep 14\n$n += 1\nputs $n");
    slow.container = Some(c.clone());
    let name = format!("flight-{}", random_suffix());
    let made = Instant::now();
    ns.runs()
        .create(&PostParams::default(), &CodeRun::new(&name, slow))
        .await
        .unwrap();
    wait_phase(&ns.runs(), &name, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(made.elapsed())).await;
    kill_leader(&client).await;
    let flown = wait_finished(&ns.runs(), &name, WITHIN).await.unwrap();
    match ended(&flown) {
        (Some(Phase::Completed), None) => assert_eq!(out(&flown), "2\n", "{:?}", flown.status),
        ended => assert_eq!(
            ended,
            (Some(Phase::Failed), Some(Reason::RecordLost)),
            "{:?}",
            flown.status
        ),
    }
    let after = run_in(&ns, &c, Language::Ruby, "$n += 1\nputs $n").await;
    assert_eq!(out(&after), "3\n", "{:?}", after.status);
    // The same pod served both: the new leader attached to it again.
    let now = pod_of(&ns, &c).await;
    assert_eq!(now.uid(), pod.uid());
    let runs = ns.runs().list(&ListParams::default()).await.unwrap().items;
    assert!(runs.iter().all(|r| r.is_finished()));
}

#[tokio::test]
async fn every_isolation_guarantee_of_a_run_holds_in_a_container() {
    let client = client().await;
    let node = node_ip(&client).await;
    let listener = HostListener::start().await;
    let ns = TestNamespace::new(&client, "ctr-iso").await;
    let c = container(&ns, 20).await;
    let py = |code: String| run_in_with(&ns, &c, spec(Language::Python, &code));
    // The network: a listener on the node (a plain pod reaches it: cluster.rs shows that).
    let net = py(format!(
        "import socket\ntry:\n    socket.create_connection(('{node}', {}), timeout=3); print('connected')\nexcept OSError as e:\n    print('refused', e.errno)",
        listener.port
    ))
    .await;
    assert!(out(&net).starts_with("refused"), "{}", out(&net));
    assert_eq!(
        listener.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let who = py("import os\nprint(os.getuid(), os.path.exists('/var/run/secrets/kubernetes.io'), sorted(os.environ))".into()).await;
    let text = out(&who);
    assert!(text.starts_with("65532 False"), "{text}");
    assert!(!text.contains("KUBERNETES"), "{text}");
    let fs = py("try:\n    open('/etc/x', 'w'); print('root written')\nexcept OSError:\n    print('root refused')\nopen('/mnt/data/y', 'w').write('y'); print('data ok')".into()).await;
    assert_eq!(out(&fs), "root refused\ndata ok\n");
    let sys = py("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\nr = libc.unshare(0x10000000)\nprint(r, errno.errorcode[ctypes.get_errno()] if r else 'ok')".into()).await;
    assert_eq!(out(&sys), "-1 EPERM\n");
    // The pod itself: the same hardening as a run's, no token, stdin held open.
    let pod = pod_of(&ns, &c).await;
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.host_users, Some(false));
    let runner = &spec.containers[0];
    let sc = runner.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    // Its stdin stays open between runs (stdinOnce false, stored as absent).
    assert_eq!(runner.stdin, Some(true));
    assert_ne!(runner.stdin_once, Some(true));
}
