//! Hostile input and hostile tenants, on the real stack: each attack is tried and asserted to
//! fail, next to a control that shows the same request works where it is legitimate.
use std::collections::BTreeMap;
use std::time::Duration;

use codeinterp_crds::{CodeRun, Language, Phase, TENANT_LABEL};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use testkit::rest::*;
use testkit::*;

const WITHIN: Duration = Duration::from_secs(120);

fn by_language(lang: Language, python: &str, node: &str, ruby: &str, php: &str) -> String {
    match lang {
        Language::Python => python,
        Language::Node => node,
        Language::Ruby => ruby,
        Language::Php => php,
    }
    .to_string()
}

// ---- 1. whatever a program prints, the run ends with exactly that output ----

#[tokio::test]
async fn every_character_up_to_ff_reaches_the_answer_exactly_in_all_four_languages() {
    let api = Api::main();
    // Characters U+0000..U+00FF written as UTF-8 (C0, DEL and the C1 controls among them),
    // then raw bytes 0x80..0xFF that are no UTF-8 at all.
    let programs = [
        (
            Language::Python,
            "import sys\nsys.stdout.write(''.join(map(chr, range(256))))\nsys.stdout.flush()\nsys.stderr.buffer.write(bytes(range(128, 256)))",
        ),
        (
            Language::Node,
            "process.stdout.write(Array.from({length: 256}, (_, i) => String.fromCharCode(i)).join(''));\nprocess.stderr.write(Buffer.from(Array.from({length: 128}, (_, i) => i + 128)));",
        ),
        (
            Language::Ruby,
            "$stdout.write((0..255).map { |i| i.chr(Encoding::UTF_8) }.join)\n$stdout.flush\n$stderr.write((128..255).to_a.pack('C*'))",
        ),
        (
            Language::Php,
            "<?php foreach (range(0, 255) as $i) { echo $i < 128 ? chr($i) : chr(0xC0 | ($i >> 6)) . chr(0x80 | ($i & 0x3F)); } fwrite(STDERR, implode('', array_map('chr', range(128, 255))));",
        ),
    ];
    let want: String = (0u32..256).filter_map(char::from_u32).collect();
    let runs = futures::future::join_all(programs.iter().map(|(lang, code)| {
        let api = api.clone();
        async move {
            api.create_run(json!({"language": lang.as_str(), "code": code}))
                .await
        }
    }))
    .await;
    let client = client().await;
    let coderuns: kube::Api<CodeRun> = kube::Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    for ((lang, _), run) in programs.iter().zip(runs) {
        assert_eq!(run["status"], "completed", "{lang:?}: {run}");
        assert_eq!(
            run["stdout"].as_str().unwrap(),
            want,
            "{lang:?}: stdout not exact"
        );
        // Bytes that are no UTF-8 come back as U+FFFD, one each.
        assert_eq!(
            run["stderr"].as_str().unwrap(),
            "\u{FFFD}".repeat(128),
            "{lang:?}"
        );
        // The CodeRun's preview is made safe for a terminal: no control character but
        // newline and tab.
        let cr = coderuns.get(run["id"].as_str().unwrap()).await.unwrap();
        let preview = cr.status.unwrap().stdout_preview.unwrap();
        assert!(
            !preview
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{lang:?}: {preview:?}"
        );
        // And the answer read back later is the same.
        let again = api.wait_run(run["id"].as_str().unwrap(), WITHIN).await;
        assert_eq!(again["stdout"], run["stdout"]);
    }
}

// ---- 2. tenant identity and uploaded files belong to the REST API ----

/// A service account in a namespace of its own that may create CodeRuns there and in the
/// sandbox namespace: someone allowed to apply CodeRuns, not the REST API.
async fn coderun_author(client: &kube::Client, ns: &TestNamespace) -> String {
    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), &ns.name);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "author"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    for target in [ns.name.as_str(), SANDBOX_NAMESPACE] {
        let roles: kube::Api<Role> = kube::Api::namespaced(client.clone(), target);
        let name = format!("author-{}", ns.name);
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["codeinterp.dev"], "resources": ["coderuns"],
                       "verbs": ["create", "get", "update", "patch", "delete"]}]
        }))
        .unwrap();
        let _ = roles.create(&PostParams::default(), &role).await;
        let bindings: kube::Api<RoleBinding> = kube::Api::namespaced(client.clone(), target);
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "author", "namespace": ns.name}]
        }))
        .unwrap();
        let _ = bindings.create(&PostParams::default(), &binding).await;
    }
    format!("system:serviceaccount:{}:author", ns.name)
}

fn manifest(name: &str, ns: &str, tenant: Option<&str>, file_id: Option<&str>) -> String {
    let mut run = json!({
        "apiVersion": "codeinterp.dev/v1alpha1",
        "kind": "CodeRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"language": "python", "code": "print('applied')", "limits": {"timeoutMs": 20000}}
    });
    if let Some(t) = tenant {
        run["metadata"]["labels"] = json!({ TENANT_LABEL: t });
    }
    if let Some(id) = file_id {
        run["spec"]["files"] = json!([{"name": "in.txt", "fileId": id}]);
    }
    run.to_string()
}

#[tokio::test]
async fn only_the_rest_apis_account_may_set_a_tenant_or_read_a_tenants_files() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-vap").await;
    let author = coderun_author(&client, &ns).await;
    let api = Api::main();
    let file = api
        .upload_ok("secret.txt", b"the dev tenant's secret")
        .await;
    let suffix = random_suffix();
    let apply =
        |who: &str, body: String| kubectl_run(&["--as", who, "create", "-f", "-"], Some(&body));
    // The attacks: the dev tenant's label, and the dev tenant's file, in the sandbox.
    let (ok, out) = apply(
        &author,
        manifest(
            &format!("forged-{suffix}"),
            SANDBOX_NAMESPACE,
            Some("dev"),
            None,
        ),
    );
    assert!(!ok && out.contains("codeinterp.dev/tenant"), "{out}");
    let (ok, out) = apply(
        &author,
        manifest(
            &format!("fileid-{suffix}"),
            SANDBOX_NAMESPACE,
            None,
            Some(&file),
        ),
    );
    assert!(!ok && out.contains("fileId"), "{out}");
    // Adding the label to a run afterwards is refused too.
    let (ok, out) = apply(
        &author,
        manifest(&format!("plain-{suffix}"), SANDBOX_NAMESPACE, None, None),
    );
    assert!(ok, "the control, an ordinary run, was refused: {out}");
    let (ok, out) = kubectl_run(
        &[
            "--as",
            &author,
            "label",
            "coderun",
            "-n",
            SANDBOX_NAMESPACE,
            &format!("plain-{suffix}"),
            "codeinterp.dev/tenant=dev",
        ],
        None,
    );
    assert!(!ok, "relabelling was allowed: {out}");
    // The REST API's own account may do both (it is how every REST run is made).
    let rest = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:codeinterp-apiserver");
    let (ok, out) = apply(
        &rest,
        manifest(
            &format!("rest-{suffix}"),
            SANDBOX_NAMESPACE,
            Some("dev"),
            Some(&file),
        ),
    );
    assert!(ok, "the REST API's account was refused: {out}");
    let runs: kube::Api<CodeRun> = kube::Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let done = wait_finished(&runs, &format!("rest-{suffix}"), WITHIN)
        .await
        .unwrap();
    assert_eq!(done.phase(), Some(Phase::Completed), "{:?}", done.status);
    // Elsewhere a label names no one: a run in another namespace that reuses a REST run's id
    // and the dev label is its namespace's, and reads none of dev's files.
    let real = api
        .create_run(json!({"language": "python", "code": "print('the real run')"}))
        .await;
    let id = real["id"].as_str().unwrap();
    let (ok, out) = apply(&author, manifest(id, &ns.name, Some("dev"), None));
    assert!(ok, "{out}");
    let forged = wait_finished(&ns.runs(), id, WITHIN).await.unwrap();
    assert_eq!(forged.phase(), Some(Phase::Completed));
    let (ok, _) = apply(&author, manifest("reads-file", &ns.name, None, Some(&file)));
    assert!(ok);
    let refused = wait_finished(&ns.runs(), "reads-file", WITHIN)
        .await
        .unwrap();
    assert_eq!(refused.phase(), Some(Phase::Failed));
    assert_eq!(
        refused.status.unwrap().reason.map(|r| r.as_str()),
        Some("invalid_input")
    );
    // The tenant's run still answers with its own output.
    let again = api.wait_run(id, WITHIN).await;
    assert_eq!(again["stdout"], "the real run\n");
    for name in [format!("plain-{suffix}"), format!("rest-{suffix}")] {
        let _ = runs.delete(&name, &DeleteParams::background()).await;
    }
}

// ---- 3. objects the operator did not create are neither used nor deleted ----

#[tokio::test]
async fn a_pod_and_a_secret_named_like_a_run_are_neither_used_nor_deleted() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-clash").await;
    let bystander: Pod = pod(json!({
        "metadata": {"name": "clash", "labels": {"codeinterp.dev/runner": "true"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": runner_image("python"), "imagePullPolicy": "Never",
            "command": ["python3", "-c", "import time; time.sleep(600)"],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
        }]}
    }));
    let made = ns
        .pods()
        .create(&PostParams::default(), &bystander)
        .await
        .unwrap();
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "clash"}, "stringData": {"password": "hunter2"}
    }))
    .unwrap();
    let kept = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let runs = ns.runs();
    runs.create(
        &PostParams::default(),
        &CodeRun::new(
            "clash",
            spec(Language::Python, "print(open('/work/password').read())"),
        ),
    )
    .await
    .unwrap();
    let run = wait_finished(&runs, "clash", WITHIN).await.unwrap();
    let st = run.status.clone().unwrap();
    assert_eq!(
        (st.phase, st.reason.map(|r| r.as_str())),
        (Some(Phase::Failed), Some("name_conflict")),
        "{st:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = ns.pods().get("clash").await.unwrap();
    assert_eq!(still.uid(), made.uid(), "the bystander pod was replaced");
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "the bystander pod is being deleted"
    );
    assert!(still.owner_references().is_empty());
    assert_eq!(secrets.get("clash").await.unwrap().uid(), kept.uid());
    // The control: a run whose name is free in the same namespace runs.
    let ok = run_to_end(&runs, spec(Language::Python, "print('free')"), WITHIN)
        .await
        .unwrap();
    assert_eq!(ok.phase(), Some(Phase::Completed));
}

// ---- 4. disk_mb is a limit the kernel enforces ----

#[tokio::test]
async fn writing_past_disk_mb_fails_with_enospc_and_disk_limit_exceeded_in_all_four_languages() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-disk").await;
    let runs = ns.runs();
    // Write 1 MiB at a time until the disk refuses; report how much got written.
    let fill = |lang: Language| {
        by_language(
            lang,
            "import sys\nn = 0\nwith open('/work/fill', 'wb') as f:\n    while n < 200:\n        f.write(b'x' * 1048576); f.flush(); n += 1\n",
            "const fs = require('fs'); const fd = fs.openSync('/work/fill', 'w'); const mb = Buffer.alloc(1048576, 120); for (let n = 0; n < 200; n++) { fs.writeSync(fd, mb); }",
            "File.open('/work/fill', 'wb') { |f| 200.times { f.write('x' * 1048576); f.flush } }",
            "<?php $f = fopen('/work/fill', 'wb'); $mb = str_repeat('x', 1048576); for ($n = 0; $n < 200; $n++) { if (fwrite($f, $mb) === false || !fflush($f)) { fwrite(STDERR, 'write failed'); exit(1); } }",
        )
    };
    let mut tasks = Vec::new();
    for lang in [
        Language::Python,
        Language::Node,
        Language::Ruby,
        Language::Php,
    ] {
        let mut s = spec(lang, &fill(lang));
        s.limits.disk_mb = Some(16);
        tasks.push(run_to_end(&runs, s, WITHIN));
    }
    // posix_fallocate: the allocation itself is refused at the cap.
    let mut s = spec(
        Language::Python,
        "import os\nfor i in range(64):\n    fd = os.open(f'/work/f{i}', os.O_CREAT | os.O_WRONLY)\n    os.posix_fallocate(fd, 0, 15 << 20)\n    os.close(fd)\n",
    );
    s.limits.disk_mb = Some(16);
    tasks.push(run_to_end(&runs, s, WITHIN));
    // The control: the same disk holds 8 MiB, and a program that writes that completes.
    let mut control = spec(
        Language::Python,
        "open('/work/ok', 'wb').write(b'x' * (8 << 20))\nprint('ok')",
    );
    control.limits.disk_mb = Some(16);
    tasks.push(run_to_end(&runs, control, WITHIN));
    let mut done = futures::future::join_all(tasks).await;
    let control = done.pop().unwrap().unwrap();
    assert_eq!(
        control.phase(),
        Some(Phase::Completed),
        "{:?}",
        control.status
    );
    for run in done {
        let run = run.unwrap();
        let st = run.status.clone().unwrap();
        assert_eq!(
            (st.phase, st.reason.map(|r| r.as_str())),
            (Some(Phase::Failed), Some("disk_limit_exceeded")),
            "{} {st:?}",
            run.spec.language.as_str()
        );
    }
}

// ---- 5. what records hold cannot exhaust the API server's or the operator's memory ----

#[tokio::test]
async fn fifty_runs_of_escaped_output_keep_both_servers_within_their_bounds() {
    let client = client().await;
    let api = Api::main();
    let apiserver = stack_pod(&client, "apiserver").await;
    let operator = stack_pod(&client, "operator").await;
    let restarts_before = restarts(&client, OPERATOR_NAMESPACE, &apiserver).await;
    // 1 MiB of \x01 on each stream: escaped into JSON each byte becomes six.
    let code =
        "import sys\nsys.stdout.write('\\x01' * 1048576)\nsys.stderr.write('\\x01' * 1048576)";
    let mut ids = Vec::new();
    for _ in 0..50 {
        let run = api
            .post(
                "/v1/runs",
                &json!({"language": "python", "code": code, "wait": false,
                        "limits": {"max_output_bytes": 1048576, "timeout_ms": 60000}}),
            )
            .await
            .expect(200);
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let run = api.wait_run(id, Duration::from_secs(300)).await;
        assert_eq!(run["status"], "completed", "{}", run["error"]);
        assert_eq!(run["stdout"].as_str().unwrap().len(), 1048576);
    }
    // Every page size, all the way through, and each run on its own.
    for limit in [1, 5, 20, 100] {
        let mut after: Option<String> = None;
        let mut seen = 0;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/runs?limit={limit}&after={a}"),
                None => format!("/v1/runs?limit={limit}"),
            };
            let page = api.get(&path).await.expect(200);
            for item in page["data"].as_array().unwrap() {
                // A list item carries at most 4 KiB of each stream.
                assert!(item["stdout"].as_str().unwrap().len() <= 4096);
                seen += 1;
            }
            if !page["has_more"].as_bool().unwrap() || seen >= 120 {
                break;
            }
            after = page["last_id"].as_str().map(str::to_string);
        }
        assert!(seen >= 50, "limit {limit}: saw {seen}");
    }
    for id in &ids {
        api.get(&format!("/v1/runs/{id}")).await.expect(200);
    }
    // Peak resident memory since each process started (VmHWM).
    let peak = |pid: u32| proc_status_kib(pid, "VmHWM:").unwrap() / 1024;
    let api_pid = pod_process(&client, OPERATOR_NAMESPACE, &apiserver, "apiserver")
        .await
        .expect("the API server's process");
    let op_pid = pod_process(&client, OPERATOR_NAMESPACE, &operator, "operator")
        .await
        .expect("the operator's process");
    let (api_peak, op_peak) = (peak(api_pid), peak(op_pid));
    eprintln!("peak RSS: apiserver {api_peak} MiB, operator {op_peak} MiB");
    // Stated bounds: the API server's run cache (64 MiB) and a few runs being loaded and
    // answered; the operator's few records being stored at once.
    assert!(api_peak < 200, "the API server peaked at {api_peak} MiB");
    assert!(op_peak < 200, "the operator peaked at {op_peak} MiB");
    assert_eq!(
        restarts(&client, OPERATOR_NAMESPACE, &apiserver).await,
        restarts_before
    );
}

// ---- 6. and 7. wrong tokens and junk signatures cost their sender, not others ----

#[tokio::test]
async fn wrong_tokens_are_throttled_per_client_and_a_right_guess_is_not_told_apart() {
    let key = Key::fresh("guess");
    let server = ApiServer::start(
        &Key::api_keys(&[&key]),
        &[
            ("AUTH_FAILURE_RPS", "0.5".into()),
            ("AUTH_FAILURE_BURST", "20".into()),
        ],
    )
    .await;
    let mut statuses = BTreeMap::new();
    let started = std::time::Instant::now();
    for i in 0..400 {
        let r = server.api(&format!("wrong-{i}")).get("/v1/files").await;
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    // The burst of 20, and what refilled at 0.5 a second meanwhile; the rest refused.
    let refilled = (started.elapsed().as_secs_f64() * 0.5).ceil() as u32 + 1;
    let unauthorized = statuses.get(&401).copied().unwrap_or(0);
    assert!((20..=20 + refilled).contains(&unauthorized), "{statuses:?}");
    assert_eq!(
        statuses.get(&429).copied().unwrap_or(0),
        400 - unauthorized,
        "{statuses:?}"
    );
    // Over the budget, the right token gets the same 429: guessing learns nothing.
    let r = server.api(&key.token).get("/v1/files").await;
    r.openai_error(429);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    // Once the budget refills, the right token works (the control).
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    server.api(&key.token).get("/v1/files").await.expect(200);
}

#[tokio::test]
async fn a_flood_of_junk_links_does_not_block_a_valid_signed_link() {
    let key = Key::fresh("links");
    let server = ApiServer::start(
        &Key::api_keys(&[&key]),
        &[
            ("ANONYMOUS_RPS", "2".into()),
            ("ANONYMOUS_BURST", "5".into()),
        ],
    )
    .await;
    let api = server.api(&key.token);
    let run = api
        .create_run(json!({"language": "python", "code":
            "open('/work/outputs/r.txt', 'w').write('result')", "limits": {"timeout_ms": 20000}}))
        .await;
    assert_eq!(run["status"], "completed", "{run}");
    let url = run["artifacts"][0]["url"].as_str().unwrap().to_string();
    let anonymous = api.anonymous();
    let mut junk = BTreeMap::new();
    for _ in 0..300 {
        let r = anonymous
            .get("/v1/files/file-x/content?expires=9999999999&signature=00")
            .await;
        *junk.entry(r.status).or_insert(0) += 1;
    }
    assert!(!junk.contains_key(&200), "{junk:?}");
    let r = anonymous
        .send(anonymous.request(reqwest::Method::GET, &url))
        .await;
    assert_eq!(
        r.status,
        200,
        "a valid link was refused after the flood: {}",
        r.text()
    );
    assert_eq!(r.text(), "result");
}

// ---- 8. a name the store could not hold is refused at the door ----

#[tokio::test]
async fn an_overlong_coderun_name_is_refused_by_the_api_server() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-name").await;
    let long = "a".repeat(200);
    let err = ns
        .runs()
        .create(
            &PostParams::default(),
            &CodeRun::new(&long, spec(Language::Python, "print(1)")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 63"), "{err}");
    let ok = "a".repeat(63);
    ns.runs()
        .create(
            &PostParams::default(),
            &CodeRun::new(&ok, spec(Language::Python, "print(1)")),
        )
        .await
        .unwrap();
    let run = wait_finished(&ns.runs(), &ok, WITHIN).await.unwrap();
    assert_eq!(run.phase(), Some(Phase::Completed));
}

// ---- 9. the smaller ones ----

#[tokio::test]
async fn socketpair_of_any_family_but_unix_is_denied_in_a_run_and_not_in_a_plain_pod() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-socketpair").await;
    let probe = "import socket, errno\nfor fam in (socket.AF_UNIX, socket.AF_INET, socket.AF_NETLINK):\n    try:\n        socket.socketpair(fam, socket.SOCK_DGRAM); print(fam, 'ok')\n    except OSError as e:\n        print(fam, errno.errorcode[e.errno])\n";
    let run = run_to_end(&ns.runs(), spec(Language::Python, probe), WITHIN)
        .await
        .unwrap();
    let out = run.status.unwrap().stdout_preview.unwrap();
    assert!(
        out.contains("AddressFamily.AF_UNIX ok") || out.contains("1 ok"),
        "{out}"
    );
    assert!(
        !out.contains("EOPNOTSUPP") && out.matches("EPERM").count() == 2,
        "{out}"
    );
    // Without the profile the kernel itself gets to the family (and creates sockets first).
    let plain = run_pod_to_end(
        &ns.pods(),
        json!({"metadata": {"name": "plain"}, "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": runner_image("python"), "imagePullPolicy": "Never",
            "command": ["python3", "-c", probe]}]}}),
        WITHIN,
    )
    .await
    .unwrap();
    let log = pod_log(&ns.pods(), &plain.name_any()).await.unwrap();
    assert!(!log.contains("EPERM"), "{log}");
}

#[tokio::test]
async fn metrics_are_not_public_on_the_api_port_but_served_on_their_own() {
    let api = Api::main().anonymous();
    api.get("/metrics").await.openai_error(404);
    let text = main_metrics().await;
    assert!(
        text.contains("codeinterp_apiserver_http_requests_total"),
        "{text}"
    );
}

#[tokio::test]
async fn a_flood_of_readiness_probes_is_answered_from_a_short_cache() {
    let api = Api::main().anonymous();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        api.get("/readyz").await.expect(200);
    }
    // Each probe would otherwise ask Kubernetes and storage (tens of milliseconds).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
