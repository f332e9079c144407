//! Live output over server-sent events, on the real stack: deltas arrive while the program
//! runs, a dropped stream resumes without gaps or repeats, a finished run replays, tenants
//! see only their own streams, and clients that read nothing cost a bounded buffer. (How a
//! stored run is replayed, its bounds and its resumption at every event, is tested without
//! a cluster in `apiserver/tests/routes.rs`.)
use std::time::Duration;

use codeinterp_crds::Language;
use serde_json::json;
use testkit::rest::*;
use testkit::*;

const WITHIN: Duration = Duration::from_secs(120);

/// Ten lines, one every 200 ms, flushed as they are written.
fn ticker(lang: Language) -> &'static str {
    match lang {
        Language::Python => {
            "import time\nfor i in range(10):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.2)"
        }
        Language::Node => {
            "let i = 0; const t = setInterval(() => { console.log(`tick ${i}`); if (++i === 10) clearInterval(t); }, 200);"
        }
        Language::Ruby => "$stdout.sync = true\n10.times { |i| puts \"tick #{i}\"; sleep 0.2 }",
        Language::Php => {
            "<?php for ($i = 0; $i < 10; $i++) { echo \"tick $i\\n\"; flush(); usleep(200000); }"
        }
    }
}

fn ticks() -> String {
    (0..10).map(|i| format!("tick {i}\n")).collect()
}

fn sequence_numbers(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.data["sequence_number"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn output_arrives_while_the_program_runs_in_all_four_languages() {
    let api = Api::main();
    let streams = [
        Language::Python,
        Language::Node,
        Language::Ruby,
        Language::Php,
    ]
    .map(|lang| {
        let api = api.clone();
        async move {
            let mut events = api
                .stream_run(json!({"language": lang.as_str(), "code": ticker(lang),
                    "limits": {"timeout_ms": 20000}}))
                .await;
            assert_eq!(events.status, 200, "{lang:?}: {:?}", events.error);
            (lang, events.to_end(WITHIN).await)
        }
    });
    for (lang, events) in futures::future::join_all(streams).await {
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            names[..3],
            ["run.created", "run.queued", "run.in_progress"],
            "{lang:?}"
        );
        let last = events.last().unwrap();
        assert_eq!(last.event, "run.completed", "{lang:?}: {names:?}");
        assert_eq!(streamed_output(&events, "stdout"), ticks(), "{lang:?}");
        assert_eq!(last.data["run"]["stdout"], ticks());
        // Numbered in order, without gaps.
        let seq = sequence_numbers(&events);
        assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>(), "{lang:?}");
        // The first line arrived while the program still had most of its 2 s to go.
        let first = events
            .iter()
            .find(|e| e.event == "run.output.delta")
            .unwrap();
        let ahead = last.at.duration_since(first.at);
        assert!(
            ahead >= Duration::from_millis(1200),
            "{lang:?}: first delta only {ahead:?} before the end"
        );
    }
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_its_last_event_without_gaps_or_repeats() {
    let api = Api::main();
    let mut first = api
        .stream_run(
            json!({"language": "python", "code": ticker(Language::Python),
            "limits": {"timeout_ms": 20000}}),
        )
        .await;
    let mut seen = Vec::new();
    while let Some(e) = first.next().await {
        let delta = e.event == "run.output.delta";
        seen.push(e);
        if delta
            && seen
                .iter()
                .filter(|e| e.event == "run.output.delta")
                .count()
                == 3
        {
            break;
        }
    }
    let id = seen[0].data["run"]["id"].as_str().unwrap().to_string();
    let last_id = seen.last().unwrap().id.clone();
    drop(first); // the connection drops mid-run
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = api.events(&id, Some(&last_id)).await;
    assert_eq!(second.status, 200);
    let rest = second.to_end(WITHIN).await;
    assert!(rest.last().is_some_and(SseEvent::is_terminal), "{rest:?}");
    let mut all = seen.clone();
    all.extend(rest);
    assert_eq!(streamed_output(&all, "stdout"), ticks());
    let seq = sequence_numbers(&all);
    assert!(seq.windows(2).all(|w| w[1] == w[0] + 1), "{seq:?}");
}

#[tokio::test]
async fn a_finished_run_replays_its_events_with_its_artifacts() {
    let api = Api::main();
    let run = api
        .create_run(json!({"language": "python", "code":
            "import sys\nprint('out')\nprint('err', file=sys.stderr)\nopen('outputs/plot.svg', 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\"/>')",
            "limits": {"timeout_ms": 20000}}))
        .await;
    assert_eq!(run["status"], "completed", "{run}");
    let mut events = api.events(run["id"].as_str().unwrap(), None).await;
    let all = events.to_end(WITHIN).await;
    let names: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"run.created"));
    assert!(names.contains(&"run.artifact"), "{names:?}");
    assert_eq!(names.last(), Some(&"run.completed"));
    assert_eq!(streamed_output(&all, "stdout"), "out\n");
    assert_eq!(streamed_output(&all, "stderr"), "err\n");
    let artifact = &all.iter().find(|e| e.event == "run.artifact").unwrap().data["artifact"];
    assert_eq!(artifact["filename"], "plot.svg");
    // An image is served as one (to be shown), under a policy that runs no script.
    let image = api
        .anonymous()
        .send(
            api.anonymous()
                .request(reqwest::Method::GET, artifact["url"].as_str().unwrap()),
        )
        .await;
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), Some("image/svg+xml"));
    assert!(
        image
            .header("content-security-policy")
            .unwrap()
            .contains("sandbox")
    );
    // Anything else is only ever a download.
    let text = api
        .create_run(json!({"language": "python", "code":
            "open('outputs/page.svg', 'w').write('<html><script>alert(1)</script></html>')",
            "limits": {"timeout_ms": 20000}}))
        .await;
    let url = text["artifacts"][0]["url"].as_str().unwrap();
    let page = api
        .anonymous()
        .send(api.anonymous().request(reqwest::Method::GET, url))
        .await;
    assert_eq!(
        page.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(
        page.header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
}

#[tokio::test]
async fn another_tenants_stream_is_not_found_and_streams_per_tenant_are_capped() {
    let (mine, theirs) = (Key::fresh("sse-a"), Key::fresh("sse-b"));
    let server = ApiServer::start(
        &Key::api_keys(&[&mine, &theirs]),
        &[("MAX_STREAMS_PER_TENANT", "2".into())],
    )
    .await;
    let api = server.api(&mine.token);
    let run = api
        .post("/v1/runs", &json!({"language": "python", "code":
            "import time\ntime.sleep(4)\nprint('mine')", "wait": false, "limits": {"timeout_ms": 20000}}))
        .await
        .expect(200);
    let id = run["id"].as_str().unwrap();
    let other = server.api(&theirs.token).events(id, None).await;
    assert_eq!(other.status, 404, "{:?}", other.error);
    // Two streams may be open; a third is refused until one closes.
    let mut a = api.events(id, None).await;
    let b = api.events(id, None).await;
    assert_eq!((a.status, b.status), (200, 200));
    let c = api.events(id, None).await;
    assert_eq!(c.status, 429, "{:?}", c.error);
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = api.events(id, None).await;
    assert_eq!(d.status, 200);
    let all = a.to_end(WITHIN).await;
    assert_eq!(streamed_output(&all, "stdout"), "mine\n");
}

/// The API server's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:").expect("the API server's memory") / 1024
}

#[tokio::test]
async fn clients_that_read_nothing_cost_the_server_a_bounded_buffer() {
    // A server of its own, so what other tests run meanwhile does not move its figure; the
    // per-tenant cap of streams, all held by one tenant.
    let key = Key::fresh("sse-stall");
    let server = ApiServer::start(
        &Key::api_keys(&[&key]),
        &[("MAX_STREAMS_PER_TENANT", "32".into())],
    )
    .await;
    let pid = server.process.pid();
    let api = server.api(&key.token);
    // The most a run may keep, of the byte that grows most as JSON (six times), on both
    // streams: before, every stalled replay held the whole run as JSON, about 12 MiB, in
    // each of its first events, and 32 of them took the API server past its 256 MiB limit.
    let code =
        "import sys\nsys.stdout.write('\\x01' * 1048576)\nsys.stderr.write('\\x01' * 1048576)";
    let run = api
        .create_run(json!({"language": "python", "code": code,
            "limits": {"max_output_bytes": 1048576, "timeout_ms": 60000}}))
        .await;
    assert_eq!(run["status"], "completed", "{}", run["error"]);
    let id = run["id"].as_str().unwrap();
    let before = rss_mib(pid);
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let events = api.events(id, None).await;
        assert_eq!(events.status, 200, "{:?}", events.error);
        stalled.push(events);
    }
    // Nothing is read while the server writes what it can and then waits.
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_mib(pid));
    }
    let grew = peak - before;
    eprintln!("API server RSS {before} MiB before, at most {peak} MiB with 32 stalled streams");
    // The stated bound: under 1 MiB a stream (one event of at most 96 KiB of JSON and the
    // connection's ~400 KiB write buffer), so 32 MiB, with as much again for the allocator.
    assert!(
        grew < 64,
        "32 stalled streams grew the server by {grew} MiB\n{}",
        server.process.log_tail()
    );
    // One client then reads to the end and gets every byte, once.
    let mut reader = stalled.pop().unwrap();
    drop(stalled);
    let all = reader.to_end(WITHIN).await;
    let last = all.last().expect("events");
    assert_eq!(last.event, "run.completed");
    assert!(last.data["run"]["stdout"].as_str().unwrap().len() <= 4096);
    let whole = "\u{1}".repeat(1 << 20);
    assert!(
        streamed_output(&all, "stdout") == whole,
        "stdout is not whole"
    );
    assert!(
        streamed_output(&all, "stderr") == whole,
        "stderr is not whole"
    );
    let seq = sequence_numbers(&all);
    assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stream_delivers_on_the_warm_path_and_the_cold_path() {
    use codeinterp_crds::StartMode;
    let api = Api::main();
    let kube: kube::Api<codeinterp_crds::CodeRun> =
        kube::Api::namespaced(client().await, SANDBOX_NAMESPACE);
    // The default shape is the warm pool's; 256 MiB is no pool's. Other tests share the pool,
    // so the warm one is tried until it lands on a warm pod.
    for (limits, want) in [
        (json!({"timeout_ms": 20000}), StartMode::Warm),
        (
            json!({"timeout_ms": 20000, "memory_mb": 256}),
            StartMode::Cold,
        ),
    ] {
        let mut got = None;
        for _ in 0..5 {
            wait_for_idle_pool_pod(Duration::from_secs(60)).await;
            let mut events = api
                .stream_run(json!({"language": "python", "code": ticker(Language::Python), "limits": limits}))
                .await;
            let all = events.to_end(WITHIN).await;
            assert_eq!(
                all.last().map(|e| e.event.as_str()),
                Some("run.completed"),
                "{limits}"
            );
            assert_eq!(streamed_output(&all, "stdout"), ticks(), "{limits}");
            let id = all[0].data["run"]["id"].as_str().unwrap();
            got = kube.get(id).await.unwrap().status.unwrap().start_mode;
            if got == Some(want) {
                break;
            }
        }
        assert_eq!(got, Some(want), "{limits}");
    }
}
