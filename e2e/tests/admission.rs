//! Admission on the real cluster: a burst far larger than the node's room completes, fairly
//! between tenants, with no run failed for lack of room. In a file of its own: the burst
//! fills the node, and test files run one after another.
use std::time::Duration;

use codeinterp_crds::{CodeRun, ConditionType, Language, Phase};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use testkit::*;

/// What one run of `memory_mb` (and 16 MiB of disk) requests, as the operator sizes pods.
fn demand_bytes(memory_mb: u64) -> u64 {
    (memory_mb + 2 * 16 + 4) << 20
}

/// How many such runs the node can hold now: allocatable memory less every pod's requests.
async fn room_for(client: &kube::Client, memory_mb: u64) -> u64 {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = &nodes.list(&ListParams::default()).await.unwrap().items[0];
    let alloc = &node.status.as_ref().unwrap().allocatable.as_ref().unwrap()["memory"].0;
    let alloc: u64 = alloc.trim_end_matches("Ki").parse::<u64>().unwrap() * 1024;
    let pods: Api<Pod> = Api::all(client.clone());
    let used: u64 = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter_map(|c| {
            c.resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("memory")
                .cloned()
        })
        .map(|q| parse_bytes(&q.0))
        .sum();
    alloc.saturating_sub(used) / demand_bytes(memory_mb)
}

fn parse_bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap_or(0);
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => 1,
    }
}

#[tokio::test]
async fn a_burst_of_five_times_the_room_from_two_tenants_completes_and_the_small_tenant_is_not_starved()
 {
    let client = client().await;
    let big = TestNamespace::new(&client, "e2e-burst-big").await;
    let small = TestNamespace::new(&client, "e2e-burst-small").await;
    let memory_mb = 2048;
    let room = room_for(&client, memory_mb).await.max(2);
    let total = 5 * room;
    let small_count = 4;
    eprintln!("the node holds {room} runs of {memory_mb} MiB: a burst of {total}");
    let run = |lang| {
        let mut s = spec(lang, "import time\ntime.sleep(2)\nprint('done')");
        s.limits.memory_mb = Some(memory_mb);
        s.limits.disk_mb = Some(16);
        s.limits.timeout_ms = Some(30_000);
        s
    };
    // The big tenant's backlog first, then the small tenant's few runs.
    let creates = (0..total - small_count).map(|i| {
        let runs = big.runs();
        let s = run(Language::Python);
        async move {
            runs.create(
                &PostParams::default(),
                &CodeRun::new(&format!("big-{i:03}"), s),
            )
            .await
            .unwrap();
        }
    });
    join_all(creates).await;
    for i in 0..small_count {
        small
            .runs()
            .create(
                &PostParams::default(),
                &CodeRun::new(&format!("small-{i}"), run(Language::Python)),
            )
            .await
            .unwrap();
    }
    // While the backlog waits, waiting runs say so, with their place in line.
    let waiting_seen = eventually_async(Duration::from_secs(60), || async {
        big.runs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|r| {
                let st = r.status.clone().unwrap_or_default();
                st.queue_position.is_some()
                    && st
                        .condition(ConditionType::Admitted)
                        .is_some_and(|c| c.status == "False" && c.reason == "WaitingForCapacity")
            })
    })
    .await;
    assert!(waiting_seen, "no run showed that it waited for room");

    let within = Duration::from_secs(600);
    let bigs = join_all((0..total - small_count).map(|i| {
        let runs = big.runs();
        async move {
            wait_finished(&runs, &format!("big-{i:03}"), within)
                .await
                .unwrap()
        }
    }))
    .await;
    let smalls = join_all((0..small_count).map(|i| {
        let runs = small.runs();
        async move {
            wait_finished(&runs, &format!("small-{i}"), within)
                .await
                .unwrap()
        }
    }))
    .await;
    for r in bigs.iter().chain(&smalls) {
        assert_eq!(
            r.phase(),
            Some(Phase::Completed),
            "{} {:?}",
            r.name_any(),
            r.status
        );
    }
    let started = |r: &CodeRun| {
        r.status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .map(|t| t.0)
            .unwrap()
    };
    let small_last = smalls.iter().map(started).max().unwrap();
    let big_last = bigs.iter().map(started).max().unwrap();
    assert!(
        small_last < big_last,
        "the small tenant's last run started at {small_last}, after the big backlog drained at {big_last}"
    );
}
