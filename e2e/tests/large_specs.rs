//! Specs a tenant makes large (issue 18, round three): 150 CodeRuns of 1 MiB of code each,
//! read by the leading operator as they are created and then all at once by a new leader
//! that lists them. The operator holds what its decisions need, not the specs, both ways.
//! In a file of its own: it kills the leader, and test files run one after another.
use std::time::{Duration, Instant};

use codeinterp_crds::CodeRun;
use futures::StreamExt;
use kube::api::PostParams;
use testkit::rest::Api;
use testkit::*;

/// The operator's bound: its memory limit is 256 MiB, the specs are 150.
const BOUND_MIB: u64 = 200;

#[tokio::test]
async fn a_hundred_and_fifty_mib_of_coderun_specs_leave_the_operator_under_its_bound_watched_or_listed()
 {
    let client = client().await;
    let ns = TestNamespace::new(&client, "bigspec").await;
    let runs = ns.runs();
    // 262,000 four-byte characters: 1 MiB of code per run, about the most the CRD allows.
    // They are cancelled from the start, so the operator ends each without a pod: what is
    // tested is what it holds of them.
    let code = format!("# {}\npass\n", "😀".repeat(262_000));
    let n = 150;
    let started = Instant::now();
    let created = futures::stream::iter(0..n)
        .map(|i| {
            let runs = runs.clone();
            let mut spec = spec(codeinterp_crds::Language::Python, &code);
            spec.cancel = Some(true);
            async move {
                let run = CodeRun::new(&format!("big-{i}"), spec);
                runs.create(&PostParams::default(), &run).await.is_ok()
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    eprintln!(
        "created {created} runs of {} bytes of code in {:?}",
        code.len(),
        started.elapsed()
    );
    // The control: the specs really are that large in the API (holding them would break
    // the bound).
    assert_eq!(created, n);
    let listed = runs.list(&Default::default()).await.unwrap();
    let bytes: usize = listed.items.iter().map(|r| r.spec.code.len()).sum();
    assert!(bytes > 149 << 20, "{bytes} bytes of code");
    drop(listed);
    // 1. Watched as they arrive: a polite tenant's run goes meanwhile, and every one ends
    // (cancelled), none lost.
    Api::main().polite_run_completes().await;
    let all_ended = eventually_async(Duration::from_secs(120), || async {
        let list = runs.list(&Default::default()).await.unwrap();
        list.items.iter().filter(|r| r.is_finished()).count() == n
    })
    .await;
    assert!(all_ended, "not every run ended");
    let peak = operator_peak_mib(&client).await;
    eprintln!(
        "watched: operator peak RSS {peak} MiB with {} MiB of specs",
        bytes >> 20
    );
    assert!(peak < BOUND_MIB, "the operator peaked at {peak} MiB");
    // 2. Listed at once: the leader dies and the standby, taking over, lists every run there
    // is (a paged list would read them in one page of 150 MiB). It serves, and stays under
    // the bound.
    let handover = kill_leader_and_await_standby(&client).await;
    eprintln!("handover took {handover:?}");
    Api::main().polite_run_completes().await;
    let peak = operator_peak_mib(&client).await;
    eprintln!("listed: the new leader's peak RSS {peak} MiB");
    assert!(peak < BOUND_MIB, "the new leader peaked at {peak} MiB");
}
