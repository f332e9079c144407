//! The warm pool on the real cluster: runs claim pre-started pods (and every isolation
//! guarantee holds there too), a claim is won once, a shape no pool has starts cold, the
//! pool refills after a burst, and a 50 MiB input reaches the program intact on both paths.
use std::collections::HashSet;
use std::time::Duration;

use codeinterp_crds::{CodeRun, CodeRunSpec, Language, Phase, StartMode};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use testkit::rest::SANDBOX_NAMESPACE;
use testkit::*;

const WITHIN: Duration = Duration::from_secs(120);

fn sandbox_runs(client: &kube::Client) -> Api<CodeRun> {
    Api::namespaced(client.clone(), SANDBOX_NAMESPACE)
}

/// Runs `spec` in the sandbox namespace on a warm pod: waits for an idle one first, and
/// tries again (the pool is shared) until the run lands on one.
async fn warm_run(client: &kube::Client, spec: CodeRunSpec) -> CodeRun {
    let runs = sandbox_runs(client);
    for _ in 0..5 {
        assert!(
            wait_for_idle_pool_pod(Duration::from_secs(90)).await,
            "the pool never refilled"
        );
        let name = format!("warm-{}", random_suffix());
        runs.create(&PostParams::default(), &CodeRun::new(&name, spec.clone()))
            .await
            .unwrap();
        let run = wait_finished(&runs, &name, WITHIN).await.unwrap();
        if run.status.as_ref().and_then(|s| s.start_mode) == Some(StartMode::Warm) {
            return run;
        }
    }
    panic!("no run landed on a warm pod in five tries");
}

fn stdout(run: &CodeRun) -> String {
    run.status
        .as_ref()
        .and_then(|s| s.stdout_preview.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_isolation_guarantee_holds_on_the_warm_path() {
    let client = client().await;
    let node = node_ip(&client).await;
    let listener = HostListener::start().await;
    let py = |code: &str| spec(Language::Python, code);

    // Network: a listener on the node, which a plain pod reaches (cluster.rs shows that).
    let net = warm_run(
        &client,
        py(&format!(
            "import socket\ntry:\n    socket.create_connection(('{node}', {}), timeout=3); print('connected')\nexcept OSError as e:\n    print('refused', e.errno)",
            listener.port
        )),
    )
    .await;
    assert!(stdout(&net).starts_with("refused"), "{}", stdout(&net));
    assert_eq!(
        listener.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // Identity, token, environment.
    let who = warm_run(
        &client,
        py("import os\nprint(os.getuid(), os.path.exists('/var/run/secrets/kubernetes.io'), sorted(os.environ))"),
    )
    .await;
    let out = stdout(&who);
    assert!(out.starts_with("65532 False"), "{out}");
    assert!(!out.contains("KUBERNETES"), "{out}");

    // The root filesystem is read-only; /work is writable.
    let fs = warm_run(
        &client,
        py("try:\n    open('/etc/x', 'w'); print('root written')\nexcept OSError:\n    print('root refused')\nopen('/work/y', 'w').write('y'); print('work ok')"),
    )
    .await;
    assert_eq!(stdout(&fs), "root refused\nwork ok\n");

    // A syscall the profile denies.
    let sys = warm_run(
        &client,
        py("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\nr = libc.unshare(0x10000000)\nprint(r, errno.errorcode[ctypes.get_errno()] if r else 'ok')"),
    )
    .await;
    assert_eq!(stdout(&sys), "-1 EPERM\n");

    // A fork bomb is contained and the run ends.
    let mut bomb = py(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    );
    bomb.limits.timeout_ms = Some(5000);
    let bomb = warm_run(&client, bomb).await;
    assert!(bomb.is_finished());

    // A memory bomb is an OOM kill.
    let mem = warm_run(
        &client,
        py("x = []\nwhile True:\n    x.append(bytearray(16 << 20))"),
    )
    .await;
    assert_eq!(
        mem.status.as_ref().unwrap().reason.map(|r| r.as_str()),
        Some("oom_killed"),
        "{:?}",
        mem.status
    );

    // Output over the cap is cut and flagged.
    let mut flood = py("import sys\nsys.stdout.write('z' * 600000)");
    flood.limits.max_output_bytes = Some(1000);
    let flood = warm_run(&client, flood).await;
    let st = flood.status.unwrap();
    assert!(st.stdout_truncated);
    assert_eq!(st.phase, Some(Phase::Completed));
}

#[tokio::test]
async fn of_two_claims_racing_for_one_pod_exactly_one_wins() {
    // Two runs claim the same idle pod at once through the operator's own claim
    // (`pool::try_claim`: a merge patch guarded by the pod's resourceVersion).
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-claim").await;
    start_pod(
        &ns.pods(),
        json!({"metadata": {"name": "idle"}, "spec": {"containers": [{
            "name": "c", "image": runner_image("python"), "imagePullPolicy": "Never",
            "command": ["sleep", "600"]}]}}),
    )
    .await
    .unwrap();
    // Settled (running, its status written): the version both claims start from.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = ns.pods().get("idle").await.unwrap();
    let runs = ns.runs();
    let mut claimants = Vec::new();
    for name in ["run-a", "run-b"] {
        let run = CodeRun::new(name, spec(Language::Python, "print(1)"));
        claimants.push(runs.create(&PostParams::default(), &run).await.unwrap());
    }
    let cfg = <codeinterp_operator::config::Config as clap::Parser>::parse_from(["operator"]);
    let limits = codeinterp_crds::Maxima::default().defaults;
    let pods = ns.pods();
    let claims = claimants
        .iter()
        .map(|run| codeinterp_operator::pool::try_claim(&pods, run, &idle, &limits, &cfg));
    let results: Vec<_> = join_all(claims)
        .await
        .into_iter()
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        lost.contains("the object has been modified") || lost.contains("409"),
        "{lost}"
    );
    let claimed = ns.pods().get("idle").await.unwrap();
    let winner = claimants
        .iter()
        .find(|run| codeinterp_operator::pod_spec::owned_by(&claimed, &run.uid().unwrap()))
        .expect("the pod's controller is one of the runs");
    assert_eq!(
        claimed.labels().get(codeinterp_crds::RUN_UID_LABEL),
        winner.uid().as_ref()
    );
    assert_eq!(claimed.owner_references().len(), 1, "one owner, not two");
}

#[tokio::test]
async fn a_burst_larger_than_the_pool_gives_each_pod_one_run_and_the_pool_refills() {
    let client = client().await;
    let runs = sandbox_runs(&client);
    assert!(wait_for_idle_pool_pod(Duration::from_secs(90)).await);
    let names: Vec<String> = (0..6)
        .map(|i| format!("pool-burst-{}-{i}", random_suffix()))
        .collect();
    join_all(names.iter().map(|name| {
        let runs = runs.clone();
        async move {
            runs.create(
                &PostParams::default(),
                &CodeRun::new(name, spec(Language::Python, "print('burst')")),
            )
            .await
            .unwrap();
        }
    }))
    .await;
    let done = join_all(names.iter().map(|name| {
        let runs = runs.clone();
        async move { wait_finished(&runs, name, WITHIN).await.unwrap() }
    }))
    .await;
    let mut pods = HashSet::new();
    let mut warm = 0;
    for run in &done {
        let st = run.status.clone().unwrap();
        assert_eq!(st.phase, Some(Phase::Completed), "{st:?}");
        assert!(
            pods.insert(st.pod_name.clone().unwrap()),
            "a pod served two runs: {st:?}"
        );
        warm += usize::from(st.start_mode == Some(StartMode::Warm));
    }
    assert!(warm >= 1, "no run of the burst was warm");
    assert!(warm < done.len(), "more warm runs than pool pods");
    // The pool refills to its size with fresh pods.
    let pool: Api<Pod> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let refilled = eventually_async(Duration::from_secs(90), || async {
        pool.list(
            &ListParams::default()
                .labels("codeinterp.dev/pool,!codeinterp.dev/run-uid,codeinterp.dev/held-by"),
        )
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
            >= 2
    })
    .await;
    assert!(refilled, "the pool did not refill");
}

#[tokio::test]
async fn a_run_whose_shape_no_pool_has_starts_cold_and_completes() {
    let client = client().await;
    let runs = sandbox_runs(&client);
    let mut s = spec(Language::Python, "print('cold')");
    s.limits.memory_mb = Some(256);
    let run = run_to_end(&runs, s, WITHIN).await.unwrap();
    let st = run.status.unwrap();
    assert_eq!(
        (st.phase, st.start_mode),
        (Some(Phase::Completed), Some(StartMode::Cold))
    );
    assert_eq!(st.stdout_preview.as_deref(), Some("cold\n"));
}

#[tokio::test]
async fn a_50_mib_input_file_reaches_the_program_intact_on_both_paths() {
    let api = testkit::rest::Api::main();
    let data: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = hex::encode(Sha256::digest(&data));
    let id = api.upload_ok("big.bin", &data).await;
    let code = "import hashlib\nprint(hashlib.sha256(open('big.bin', 'rb').read()).hexdigest())";
    for limits in [
        json!({"timeout_ms": 60000}),
        json!({"timeout_ms": 60000, "memory_mb": 384}),
    ] {
        let run = api
            .create_run(
                json!({"language": "python", "code": code, "files": [id], "limits": limits}),
            )
            .await;
        assert_eq!(run["status"], "completed", "{limits}: {run}");
        assert_eq!(run["stdout"].as_str().unwrap().trim(), want, "{limits}");
    }
}
