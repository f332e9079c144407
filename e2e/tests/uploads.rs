//! Uploads as an attack on the API server's memory (issue 18, item 3): an upload is held in
//! memory a part at a time until the part goes to object storage, so many slow uploads at
//! once each hold a part. The server bounds the bytes its uploads may hold, in all and per
//! tenant, and refuses an upload beyond them with 429 before reading it.
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use testkit::proc_status_kib;
use testkit::rest::*;

/// The attack as it was measured: 40 uploads of 30 MiB at once, each at 300 KiB/s.
const UPLOADS: usize = 40;
const UPLOAD_BYTES: u64 = 30 << 20;
const CHUNK: usize = 30 << 10;
const CHUNK_EVERY: Duration = Duration::from_millis(100);
/// Long enough for each admitted upload to fill a whole 5 MiB part (17 s at 300 KiB/s) and
/// hand it over.
const ATTACK_FOR: Duration = Duration::from_secs(25);

/// What one slow upload came to before the attack ended.
#[derive(Debug)]
enum Outcome {
    /// Still sending when the attack ended.
    Sending,
    Answered(Reply),
    /// The server closed the connection without an answer the client could read.
    Broken(String),
}

/// `POST /v1/files` of `UPLOAD_BYTES` with a Content-Length, as OpenAI's SDKs send it, the
/// file part trickling at 300 KiB/s.
async fn slow_upload(base: String, token: String) -> Outcome {
    let chunks = futures::stream::unfold(0u64, |sent| async move {
        if sent >= UPLOAD_BYTES {
            return None;
        }
        tokio::time::sleep(CHUNK_EVERY).await;
        let n = (UPLOAD_BYTES - sent).min(CHUNK as u64);
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; n as usize])),
            sent + n,
        ))
    });
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(chunks),
        UPLOAD_BYTES,
    )
    .file_name("big.bin");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "assistants")
        .part("file", part);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let sent = http
        .post(format!("{base}/v1/files"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await;
    match sent {
        Ok(res) => Outcome::Answered(Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
        }),
        Err(e) => Outcome::Broken(format!("{e:?}")),
    }
}

/// What the attack cost a server, and what its uploads came to.
struct Attack {
    before_mib: u64,
    peak_mib: u64,
    outcomes: Vec<Outcome>,
}

/// `UPLOADS` slow uploads at once from one tenant, for `ATTACK_FOR`; the server's resident
/// memory before, and its peak (VmHWM) by the end.
async fn attack(server: &ApiServer, token: &str) -> Attack {
    let pid = server.process.pid();
    let before_mib = proc_status_kib(pid, "VmRSS:").unwrap() / 1024;
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|_| tokio::spawn(slow_upload(server.base.clone(), token.to_string())))
        .collect();
    tokio::time::sleep(ATTACK_FOR).await;
    let peak_mib = proc_status_kib(pid, "VmHWM:").unwrap() / 1024;
    let mut outcomes = Vec::new();
    for upload in uploads {
        if upload.is_finished() {
            outcomes.push(upload.await.unwrap());
        } else {
            upload.abort();
            outcomes.push(Outcome::Sending);
        }
    }
    Attack {
        before_mib,
        peak_mib,
        outcomes,
    }
}

#[tokio::test]
async fn parallel_slow_uploads_are_refused_past_the_upload_budget_and_memory_stays_bounded() {
    let attacker = Key::fresh("upload-flood");
    let polite = Key::fresh("upload-polite");
    let keys = Key::api_keys(&[&attacker, &polite]);
    // The defaults, spelled out: 64 MiB of upload buffers per server, 32 MiB per tenant,
    // one 5 MiB part held per upload.
    let bounded = ApiServer::start(
        &keys,
        &[
            ("UPLOAD_BUFFER_MB", "64".into()),
            ("UPLOAD_BUFFER_PER_TENANT_MB", "32".into()),
            ("UPLOAD_PARTS_BUFFERED", "1".into()),
        ],
    )
    .await;
    // The control: the same attack on a server whose bounds are out of reach holds a part
    // for every upload, which is what the bound is for.
    let unbounded = ApiServer::start(
        &keys,
        &[
            ("UPLOAD_BUFFER_MB", "4096".into()),
            ("UPLOAD_BUFFER_PER_TENANT_MB", "4096".into()),
            ("UPLOAD_PARTS_BUFFERED", "1".into()),
        ],
    )
    .await;
    let polite_api = bounded.api(&polite.token);
    let polite_work = async {
        // Into the attack, once the attacker's uploads hold what they may.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let file = polite_api.upload("small.csv", b"a,b\n1,2\n".to_vec()).await;
        let run = polite_api
            .post(
                "/v1/runs",
                &json!({"language": "python", "code": "print(1+1)", "limits": {"timeout_ms": 10000}}),
            )
            .await;
        (file, run)
    };
    let (hit, control, (file, run)) = tokio::join!(
        attack(&bounded, &attacker.token),
        attack(&unbounded, &attacker.token),
        polite_work,
    );
    eprintln!(
        "API server RSS: bounded {} MiB before, peak {} MiB; control {} MiB before, peak {} MiB",
        hit.before_mib, hit.peak_mib, control.before_mib, control.peak_mib
    );
    let control_grew = control.peak_mib - control.before_mib;
    assert!(
        control_grew > 120,
        "the control grew by only {control_grew} MiB: the attack did not load the server"
    );
    // The bound: 32 MiB of the attacker's parts, plus each connection's buffers.
    assert!(
        hit.peak_mib < 200 && hit.peak_mib - hit.before_mib < 80,
        "{} uploads took the API server from {} to {} MiB\n{}",
        UPLOADS,
        hit.before_mib,
        hit.peak_mib,
        bounded.process.log_tail()
    );
    let refused: Vec<&Reply> = hit
        .outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Answered(r) if r.status == 429 => Some(r),
            _ => None,
        })
        .collect();
    let broken: Vec<&str> = hit
        .outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Broken(e) => Some(e.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        refused.len() >= UPLOADS / 2,
        "too few uploads were refused ({} broken off: {broken:?}): {:?}",
        broken.len(),
        hit.outcomes
    );
    for reply in &refused {
        let error = reply.openai_error(429);
        assert_eq!(error["code"], "upload_capacity_exceeded", "{error}");
        assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
    }
    file.expect(200);
    let run = run.expect(200);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["stdout"], "2\n");
}
