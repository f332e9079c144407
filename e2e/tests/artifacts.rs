//! Output files as large as inputs: streamed from the attach stream into object storage as
//! the record brings them, never held whole by the operator or the API server.
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use testkit::rest::Api;
use testkit::*;

/// Writes 100 MiB of pseudo-random bytes to /work/outputs and prints their sha256.
const WRITER: &str = r#"import hashlib, random
r = random.Random(7)
h = hashlib.sha256()
with open('/work/outputs/model.bin', 'wb') as f:
    for _ in range(100):
        chunk = r.randbytes(1 << 20)
        h.update(chunk)
        f.write(chunk)
print(h.hexdigest())"#;

#[tokio::test]
async fn four_runs_at_once_each_return_a_100_mib_file_intact_and_the_servers_stay_bounded() {
    let client = client().await;
    let api = Api::main();
    let operator = stack_pod(&client, "operator").await;
    let apiserver = stack_pod(&client, "apiserver").await;
    let body = json!({
        "language": "python", "code": WRITER, "wait": false,
        "limits": {"disk_mb": 128, "timeout_ms": 120000},
    });
    let mut ids = Vec::new();
    for _ in 0..4 {
        let run = api.post("/v1/runs", &body).await.expect(200);
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let run = api.wait_run(id, Duration::from_secs(300)).await;
        assert_eq!(run["status"], "completed", "{run}");
        let printed = run["stdout"].as_str().unwrap().trim().to_string();
        let artifact = &run["artifacts"][0];
        assert_eq!(artifact["bytes"], 100 << 20, "{run}");
        // The file through its signed URL, with no token, byte for byte what was written.
        let url = artifact["url"].as_str().unwrap();
        let reply = api.anonymous().get(url).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let bytes = reply.body;
        assert_eq!(bytes.len(), 100 << 20);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), printed);
    }
    let peak = |pid: u32| proc_status_kib(pid, "VmHWM:").unwrap() / 1024;
    let op_pid = pod_process(&client, OPERATOR_NAMESPACE, &operator, "operator")
        .await
        .expect("the operator's process");
    let api_pid = pod_process(&client, OPERATOR_NAMESPACE, &apiserver, "apiserver")
        .await
        .expect("the API server's process");
    let (op_peak, api_peak) = (peak(op_pid), peak(api_pid));
    eprintln!("peak RSS with 4 x 100 MiB files: operator {op_peak} MiB, apiserver {api_peak} MiB");
    // 400 MiB passed through each: what stays is a few buffers per file in flight.
    assert!(op_peak < 150, "the operator peaked at {op_peak} MiB");
    assert!(api_peak < 200, "the API server peaked at {api_peak} MiB");
}
