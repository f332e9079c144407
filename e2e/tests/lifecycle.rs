//! A run's life around the program: cancelling, garbage collection with the record kept,
//! the operator restarting mid-run, refusals that must not leave a run stuck, metrics.
use std::time::Duration;

use codeinterp_crds::{CodeRun, Language, Phase};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use testkit::*;

fn status_of(run: &CodeRun) -> &codeinterp_crds::CodeRunStatus {
    run.status.as_ref().expect("status")
}

#[tokio::test]
async fn cancelling_a_running_program_stops_it_and_keeps_what_it_printed() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-cancel").await;
    let runs = ns.runs();
    let mut s = spec(
        Language::Python,
        "import time\nprint('tick', flush=True)\nwhile True: time.sleep(0.1)",
    );
    s.limits.timeout_ms = Some(120_000);
    runs.create(&PostParams::default(), &CodeRun::new("long", s))
        .await
        .unwrap();
    wait_phase(&runs, "long", Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    runs.patch(
        "long",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    let run = wait_finished(&runs, "long", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        started.elapsed()
    );
    let st = status_of(&run);
    assert_eq!(st.phase, Some(Phase::Cancelled), "{st:?}");
    assert_eq!(
        st.stdout_preview.as_deref(),
        Some("tick\n"),
        "output before the cancel is kept"
    );
    // A cancelled run stays cancelled.
    let undo = runs
        .patch(
            "long",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": false}})),
        )
        .await;
    assert!(undo.is_err(), "un-cancelling was accepted");
}

#[tokio::test]
async fn a_finished_run_is_garbage_collected_after_its_ttl_and_its_record_stays() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-ttl").await;
    let runs = ns.runs();
    let mut s = spec(Language::Python, "print('kept')");
    s.ttl_seconds_after_finished = Some(2);
    runs.create(&PostParams::default(), &CodeRun::new("short-lived", s))
        .await
        .unwrap();
    let run = wait_finished(&runs, "short-lived", Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(status_of(&run).phase, Some(Phase::Completed));
    let gone = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(runs.clone(), "short-lived", |obj: Option<&CodeRun>| {
            obj.is_none()
        }),
    )
    .await;
    assert!(gone.is_ok(), "the CodeRun was not deleted after its TTL");
    assert!(
        ns.pods().get_opt("short-lived").await.unwrap().is_none(),
        "its pod is gone too"
    );
    let store = codeinterp_store::Store::open(run_dir().join("storage").to_str().unwrap()).unwrap();
    let tenant = format!("_ns-{}", ns.name);
    let uid = run.metadata.uid.clone().unwrap();
    let record = store
        .get_run(&tenant, &ns.name, &uid)
        .await
        .unwrap()
        .expect("record kept");
    let stdout = store
        .get_output(&record, codeinterp_store::OutputStream::Stdout)
        .await
        .unwrap();
    assert_eq!(
        (record.phase, &stdout[..]),
        (Phase::Completed, &b"kept\n"[..])
    );
}

#[tokio::test]
async fn a_pod_the_cluster_refuses_fails_the_run_with_the_reason_instead_of_hanging() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-quota").await;
    let quotas: kube::Api<k8s_openapi::api::core::v1::ResourceQuota> =
        kube::Api::namespaced(client.clone(), &ns.name);
    let quota = serde_json::from_value(
        json!({"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}),
    )
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // the quota controller fills in its status
    let run = run_to_end(
        &ns.runs(),
        spec(Language::Python, "print(1)"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let st = status_of(&run);
    assert_eq!(st.phase, Some(Phase::Failed));
    assert_eq!(st.reason.map(|r| r.as_str()), Some("pod_rejected"));
    assert!(
        st.message
            .as_deref()
            .unwrap_or("")
            .contains("exceeded quota"),
        "{st:?}"
    );
}

#[tokio::test]
async fn invalid_manifests_are_refused_by_the_schema_with_a_clear_message() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-schema").await;
    let runs = ns.runs();
    let cases = [
        (json!({"language": "cobol", "code": "x"}), "spec.language"),
        (json!({"language": "python", "code": ""}), "spec.code"),
        (
            json!({"language": "python", "code": "x".repeat(300 * 1024)}),
            "spec.code",
        ),
        (
            json!({"language": "python", "code": "x", "limits": {"timeoutMs": 10}}),
            "spec.limits.timeoutMs",
        ),
        (
            json!({"language": "python", "code": "x", "limits": {"memoryMb": 1000000}}),
            "spec.limits.memoryMb",
        ),
        (
            json!({"language": "python", "code": "x", "files": [{"name": "a"}]}),
            "exactly one of fileId and contentBase64",
        ),
        (
            json!({"language": "python", "code": "x", "files": [{"name": "../etc", "contentBase64": "eA=="}]}),
            "spec.files[0].name",
        ),
    ];
    for (i, (spec, expect)) in cases.into_iter().enumerate() {
        let obj = json!({"apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeRun",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec});
        let run: CodeRun = match serde_json::from_value(obj.clone()) {
            Ok(run) => run,
            Err(_) => {
                // Not even our own types accept it; send it raw to see the API server's answer.
                let dynamic = kube::api::DynamicObject::new(
                    &format!("bad-{i}"),
                    &kube::api::ApiResource::erase::<CodeRun>(&()),
                );
                let mut dynamic = dynamic;
                dynamic.data = json!({"spec": obj["spec"]});
                let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
                    client.clone(),
                    &ns.name,
                    &kube::api::ApiResource::erase::<CodeRun>(&()),
                );
                let err = api
                    .create(&PostParams::default(), &dynamic)
                    .await
                    .expect_err(&format!("case {i} accepted"));
                assert!(err.to_string().contains(expect), "case {i}: {err}");
                continue;
            }
        };
        let err = runs
            .create(&PostParams::default(), &run)
            .await
            .expect_err(&format!("case {i} accepted"));
        assert!(err.to_string().contains(expect), "case {i}: {err}");
    }
    // Unknown fields such as an image are dropped by the API server, never used: strict
    // field validation names them.
    let obj = json!({"apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeRun", "metadata": {"name": "strict"},
        "spec": {"language": "python", "code": "x", "image": "evil:latest"}});
    let path = std::env::temp_dir().join(format!("{}-strict.json", ns.name));
    std::fs::write(&path, obj.to_string()).unwrap();
    let out = std::process::Command::new(kubectl())
        .args([
            "apply",
            "-n",
            &ns.name,
            "--validate=strict",
            "-f",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"spec.image\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_operator_exports_run_metrics() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-metrics").await;
    run_to_end(
        &ns.runs(),
        spec(Language::Ruby, "puts 1"),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    // Scraped from the active replica through the API server's proxy, as Prometheus in the
    // cluster would scrape each pod.
    let leader = stack_pod(&client, "operator").await;
    let path = format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{leader}:9090/proxy/metrics");
    let body = client
        .request_text(http::Request::get(path).body(vec![]).unwrap())
        .await
        .unwrap();
    assert!(
        body.contains("codeinterp_operator_runs_total{language=\"ruby\",phase=\"Completed\"}"),
        "{body}"
    );
    assert!(body.contains("codeinterp_operator_run_duration_seconds_bucket"));
    assert!(body.contains("codeinterp_operator_queue_duration_seconds_count"));
    assert!(body.contains("codeinterp_operator_leader 1"));
    assert!(body.contains("codeinterp_operator_pool_idle_pods"));
}
