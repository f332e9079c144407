//! The S3 storage path end to end: a real S3-compatible server (s3s-fs, on loopback, with
//! credentials), a second operator and a second API server of their own shard storing
//! there, real runner pods on the cluster. What a client sees must be what it sees with
//! local storage, and the objects must really be in the S3 server (and not on disk where
//! the main stack keeps its results).
use serde_json::json;
use testkit::random_suffix;
use testkit::rest::*;

/// An S3 server, and an operator and an API server of a fresh shard storing in it. Dropping
/// it ends all three, and deletes the shard's CodeRuns (no operator would collect them).
struct S3Stack {
    _runs: testkit::DeleteRunsOnDrop,
    key: Key,
    api: ApiServer,
    operator: Process,
    s3: S3Server,
}

impl S3Stack {
    async fn start() -> Self {
        let s3 = S3Server::start().await;
        let shard = format!("s3-{}", random_suffix());
        let storage = s3.storage_env();
        let operator = start_operator(&shard, &storage).await;
        let key = Key::fresh("e2e-s3");
        let mut env = storage;
        env.push(("SHARD", shard.clone()));
        let api = ApiServer::start(&Key::api_keys(&[&key]), &env).await;
        S3Stack {
            _runs: testkit::DeleteRunsOnDrop(format!("{}={shard}", codeinterp_crds::SHARD_LABEL)),
            key,
            api,
            operator,
            s3,
        }
    }

    fn client(&self) -> Api {
        self.api.api(&self.key.token)
    }

    /// What a failure message needs to be understood.
    fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.api.process.log_tail(),
            self.operator.log_tail(),
            self.s3.process.log_tail()
        )
    }
}

#[tokio::test]
async fn a_run_on_the_s3_shard_keeps_its_record_and_artifact_in_s3_and_serves_the_artifact() {
    let stack = S3Stack::start().await;
    let api = stack.client();
    let input = api.upload_ok("factor.txt", b"7").await;
    let run = api
        .create_run(json!({
            "language": "python",
            "code": "import os\nf = int(open('/work/factor.txt').read())\n\
                     os.makedirs('/work/outputs', exist_ok=True)\n\
                     open('/work/outputs/table.csv', 'w').write(f'n,x{f}\\n1,{f}\\n')\n\
                     print('made table')",
            "files": [input],
            "limits": {"timeout_ms": 20000},
        }))
        .await;
    assert_eq!(run["status"], "completed", "{run}\n{}", stack.logs());
    assert_eq!(run["stdout"], "made table\n");
    let run_id = run["id"].as_str().unwrap();
    let artifact = &run["artifacts"][0];
    assert_eq!(artifact["filename"], "table.csv", "{run}");
    let artifact_id = artifact["id"].as_str().unwrap();

    let tenant = &stack.key.tenant;
    // Stored by the CodeRun's UID (the id is bound to it beside), its output as raw bytes.
    let runs: kube::Api<codeinterp_crds::CodeRun> =
        kube::Api::namespaced(testkit::client().await, SANDBOX_NAMESPACE);
    let uid = runs.get(run_id).await.unwrap().metadata.uid.unwrap();
    let dir = format!("tenants/{tenant}/runs/{SANDBOX_NAMESPACE}/{uid}");
    assert!(
        stack
            .s3
            .object_path(&format!("tenants/{tenant}/run-ids/{run_id}.json"))
            .is_file(),
        "the run id is bound in S3"
    );
    assert_eq!(
        std::fs::read(stack.s3.object_path(&format!("{dir}/stdout"))).unwrap(),
        b"made table\n"
    );
    let record = stack.s3.object_path(&format!("{dir}/record.json"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap_or_else(|e| {
            panic!(
                "no run record at {}: {e}\n{}",
                record.display(),
                stack.logs()
            )
        }))
        .unwrap();
    assert_eq!(record["stdout_head"], "made table\n");
    let content = stack
        .s3
        .object_path(&format!("tenants/{tenant}/files/{artifact_id}/content"));
    assert_eq!(std::fs::read(&content).unwrap(), b"n,x7\n1,7\n");
    assert!(
        !main_storage().join("tenants").join(tenant).exists(),
        "nothing of this tenant is in the main stack's local storage"
    );

    let url = artifact["url"].as_str().unwrap();
    assert!(url.starts_with(&stack.api.base), "{url}");
    let download = api.anonymous().get(url).await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert_eq!(download.body, b"n,x7\n1,7\n");
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"table.csv\"")
    );
    // The record answers from S3 too.
    let again = api.get(&format!("/v1/runs/{run_id}")).await.expect(200);
    assert_eq!(again["stdout"], "made table\n");
}

#[tokio::test]
async fn files_upload_to_and_download_from_s3() {
    let stack = S3Stack::start().await;
    let api = stack.client();
    // Every byte value, so any re-encoding on the way through S3 would show.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let file = api.upload("bytes.bin", bytes.clone()).await;
    let file = file.expect(200);
    let id = file["id"].as_str().unwrap();
    let tenant = &stack.key.tenant;
    let stored = stack
        .s3
        .object_path(&format!("tenants/{tenant}/files/{id}/content"));
    assert_eq!(
        std::fs::read(&stored).unwrap_or_else(|e| panic!(
            "{}: {e}\n{}",
            stored.display(),
            stack.logs()
        )),
        bytes
    );
    let listed = api.get("/v1/files").await.expect(200);
    assert_eq!(listed["data"][0]["id"], id, "{listed}");
    let content = api.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status, 200, "{}", content.text());
    assert_eq!(content.body, bytes);
    api.delete(&format!("/v1/files/{id}")).await.expect(200);
    assert!(!stored.exists(), "deleted from S3 too");
}
