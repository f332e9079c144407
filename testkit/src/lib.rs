//! Helpers for the end-to-end tests. They run on the host against the real local cluster
//! (`make test` brings it up first) with the admin kubeconfig.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use codeinterp_crds::{CodeContainer, CodeRun, CodeRunSpec, Language, Limits};
use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Client, ResourceExt};
use rand::Rng;

pub mod rest;

/// Where the cluster keeps its state (see hack/cluster/lib.sh).
pub fn run_dir() -> PathBuf {
    std::env::var("CODEINTERP_RUN")
        .unwrap_or_else(|_| "/var/lib/codeinterp".into())
        .into()
}

pub fn runner_image(lang: &str) -> String {
    format!("localhost/codeinterp/runner-{lang}:dev")
}

pub async fn client() -> Client {
    Client::try_default()
        .await
        .expect("kubeconfig for the local cluster (run `make up`)")
}

pub fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..6)
        .map(|_| (b'a' + rng.random_range(0..26)) as char)
        .collect()
}

/// A namespace for one test, deleted when dropped (in the background).
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", random_suffix());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"codeinterp.dev/e2e": "true"}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // The default service account appears shortly after; pods need it to be admitted.
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sas.get_opt("default").await.unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "no default service account in {name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn runs(&self) -> Api<CodeRun> {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        clean_up(move |client| async move {
            let api: Api<Namespace> = Api::all(client);
            let _ = api.delete(&name, &DeleteParams::background()).await;
        });
    }
}

/// Deletes every CodeRun matching a label selector, in every namespace, when dropped: for
/// runs a test leaves where no namespace of its own takes them away (a shard of its own in
/// the sandbox namespace, served by an operator that stops with the test).
pub struct DeleteRunsOnDrop(pub String);

impl Drop for DeleteRunsOnDrop {
    fn drop(&mut self) {
        let selector = self.0.clone();
        clean_up(move |client| async move {
            let api: Api<CodeRun> = Api::all(client);
            let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
                return;
            };
            for run in list.items {
                let ns = run.namespace().unwrap_or_default();
                let _ = Api::<CodeRun>::namespaced(api.clone().into_client(), &ns)
                    .delete(&run.name_any(), &DeleteParams::background())
                    .await;
            }
        });
    }
}

/// Deletes every CodeContainer matching a label selector, in every namespace, when dropped:
/// the containers a test made through the REST API (selected by its fresh tenant) live in the
/// sandbox namespace, which outlives the test; their pods go with them.
pub struct DeleteContainersOnDrop(pub String);

impl Drop for DeleteContainersOnDrop {
    fn drop(&mut self) {
        let selector = self.0.clone();
        clean_up(move |client| async move {
            let api: Api<CodeContainer> = Api::all(client);
            let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
                return;
            };
            for container in list.items {
                let ns = container.namespace().unwrap_or_default();
                let _ = Api::<CodeContainer>::namespaced(api.clone().into_client(), &ns)
                    .delete(&container.name_any(), &DeleteParams::background())
                    .await;
            }
        });
    }
}

/// Runs a clean-up to its end from a thread, runtime and client of its own: a task spawned
/// on the test's runtime is dropped unrun when the test returns, and the test's client may
/// need that runtime to make progress.
fn clean_up<F, Fut>(f: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(client) = Client::try_default().await {
                let _ = tokio::time::timeout(Duration::from_secs(20), f(client)).await;
            }
        });
    })
    .join();
}

/// A pod from JSON (tests read better with the manifest inline).
pub fn pod(manifest: serde_json::Value) -> Pod {
    serde_json::from_value(manifest).expect("valid pod manifest")
}

fn pod_finished() -> impl Condition<Pod> {
    |obj: Option<&Pod>| {
        obj.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    }
}

fn pod_running() -> impl Condition<Pod> {
    |obj: Option<&Pod>| {
        obj.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Running")
    }
}

/// Creates a pod and waits until it has run to the end.
pub async fn run_pod_to_end(
    pods: &Api<Pod>,
    manifest: serde_json::Value,
    within: Duration,
) -> anyhow::Result<Pod> {
    let p = pods.create(&PostParams::default(), &pod(manifest)).await?;
    let name = p.name_any();
    let done = tokio::time::timeout(within, await_condition(pods.clone(), &name, pod_finished()))
        .await
        .with_context(|| format!("pod {name} did not finish within {within:?}"))??;
    done.context("pod disappeared")
}

pub async fn start_pod(pods: &Api<Pod>, manifest: serde_json::Value) -> anyhow::Result<Pod> {
    let p = pods.create(&PostParams::default(), &pod(manifest)).await?;
    let name = p.name_any();
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), &name, pod_running()),
    )
    .await
    .with_context(|| format!("pod {name} did not start"))??;
    running.context("pod disappeared")
}

/// A pod's log, read through the API server (which fetches it from the kubelet).
pub async fn pod_log(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    let mut stream = pods.log_stream(name, &LogParams::default()).await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod has an IP")
}

/// The node's address (the kubelet's InternalIP).
pub async fn node_ip(client: &Client) -> String {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let list = nodes.list(&Default::default()).await.unwrap();
    list.items[0]
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
        .expect("node InternalIP")
}

pub fn container_terminated(pod: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("container terminated")
}

/// A CodeRun spec with defaults, for tests.
pub fn spec(language: Language, code: &str) -> CodeRunSpec {
    CodeRunSpec {
        language,
        code: code.to_string(),
        stdin: None,
        args: vec![],
        files: vec![],
        limits: Limits {
            timeout_ms: Some(20_000),
            ..Default::default()
        },
        ttl_seconds_after_finished: None,
        cancel: None,
        container: None,
    }
}

/// Creates a CodeRun and waits until it reaches a final phase.
pub async fn run_to_end(
    runs: &Api<CodeRun>,
    spec: CodeRunSpec,
    within: Duration,
) -> anyhow::Result<CodeRun> {
    let name = format!("e2e-{}-{}", spec.language.as_str(), random_suffix());
    let run = CodeRun::new(&name, spec);
    runs.create(&PostParams::default(), &run).await?;
    wait_finished(runs, &name, within).await
}

pub async fn wait_finished(
    runs: &Api<CodeRun>,
    name: &str,
    within: Duration,
) -> anyhow::Result<CodeRun> {
    let cond = |obj: Option<&CodeRun>| obj.is_some_and(|r| r.is_finished());
    let done = tokio::time::timeout(within, await_condition(runs.clone(), name, cond))
        .await
        .with_context(|| format!("CodeRun {name} did not finish within {within:?}"))??;
    done.context("CodeRun disappeared")
}

/// Every event recorded for an object, oldest first: "Reason: note".
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&Default::default()).await.unwrap();
    let mut evs: Vec<_> = list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    evs.into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// A TCP listener on this host that answers every connection with a fixed line, counting
/// how many it accepted. Bound on all addresses, so pods reach it at the node's address.
pub struct HostListener {
    pub port: u16,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HostListener {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                use tokio::io::AsyncWriteExt;
                let _ = sock.write_all(b"hello from the node\n").await;
            }
        });
        HostListener { port, accepted }
    }
}

/// kubectl of the cluster's version (built with it), for tests of the kubectl workflow.
pub fn kubectl() -> PathBuf {
    let version = std::fs::read_to_string(rest::repo_root().join("hack/cluster/versions.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION=").map(str::to_string))
        .unwrap();
    let cache =
        std::env::var("CODEINTERP_CACHE").unwrap_or_else(|_| "/var/cache/codeinterp".into());
    PathBuf::from(cache).join(format!("bin/kubernetes-{version}/kubectl"))
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits for a condition polled every 200 ms (for things with no watch, e.g. a host counter).
pub async fn eventually<F: FnMut() -> bool>(within: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f()
}

/// Where `make up` installs the chart (the operator and the REST API).
pub const OPERATOR_NAMESPACE: &str = "codeinterp-system";

/// Like [`eventually`], for an async check.
pub async fn eventually_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// Waits until a CodeRun reaches `phase`.
pub async fn wait_phase(runs: &Api<CodeRun>, name: &str, phase: codeinterp_crds::Phase) -> CodeRun {
    let cond = move |obj: Option<&CodeRun>| obj.and_then(|r| r.phase()).is_some_and(|p| p == phase);
    tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(runs.clone(), name, cond),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} never reached {phase:?}"))
    .unwrap()
    .unwrap()
}

/// The host process of a pod's first container whose command is `comm` (single-node
/// cluster: the container's processes are this host's), found by the container's id in
/// the processes' cgroups.
pub async fn pod_process(client: &Client, ns: &str, pod: &str, comm: &str) -> Option<u32> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = pods.get_opt(pod).await.ok()??;
    let id = p
        .status?
        .container_statuses?
        .first()?
        .container_id
        .clone()?;
    let id = id.rsplit("://").next()?.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&id))
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == comm)
        })
}

/// A `kB` field of /proc/<pid>/status, in KiB: `VmRSS:` (now), `VmHWM:` (peak).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The leading operator replica's peak resident memory so far (VmHWM), in MiB.
pub async fn operator_peak_mib(client: &Client) -> u64 {
    let operator = stack_pod(client, "operator").await;
    let pid = pod_process(client, OPERATOR_NAMESPACE, &operator, "operator")
        .await
        .expect("the operator's process");
    proc_status_kib(pid, "VmHWM:").unwrap() / 1024
}

/// Deletes the leading operator replica at once and returns when another holds the lease:
/// the name of the replica killed, and how long the handover took.
pub async fn kill_leader(client: &Client) -> (String, Duration) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leader = stack_pod(client, "operator").await;
    let killed = Instant::now();
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete(&leader, &now).await.unwrap();
    let took_over = eventually_async(Duration::from_secs(60), || async {
        leases
            .get("codeinterp-operator")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .is_some_and(|holder| holder != leader)
    })
    .await;
    assert!(took_over, "no standby took the lease");
    (leader, killed.elapsed())
}

/// Deletes the leading replica outright (no time to hand over); waits for a standby to take
/// the lease and for the Deployment to have its standby back. Returns how long the handover
/// took.
pub async fn kill_leader_and_await_standby(client: &Client) -> Duration {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let (leader, handover) = kill_leader(client).await;
    // The Deployment replaces the killed replica: wait for that standby to be ready, so the
    // next kill again leaves one to take over.
    let holder = stack_pod(client, "operator").await;
    let standby_back = eventually_async(Duration::from_secs(120), || async {
        let selector = "app.kubernetes.io/component=operator";
        let list = pods
            .list(&kube::api::ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.iter().any(|p| {
            let name = p.name_any();
            name != leader
                && name != holder
                && p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
    })
    .await;
    assert!(standby_back, "the Deployment did not get its standby back");
    handover
}

/// The pod of the stack's component (`apiserver` or `operator`): for the operator, the
/// replica holding the lease.
pub async fn stack_pod(client: &Client, component: &str) -> String {
    if component == "operator" {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let lease = leases
            .get("codeinterp-operator")
            .await
            .expect("the operator's lease");
        return lease
            .spec
            .and_then(|s| s.holder_identity)
            .expect("a leader holds the lease");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let list = pods
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("app.kubernetes.io/component={component}")),
        )
        .await
        .unwrap();
    list.items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| p.name_any())
        .unwrap_or_else(|| panic!("no running {component} pod"))
}

/// Restarts of a pod's containers so far.
pub async fn restarts(client: &Client, ns: &str, pod: &str) -> i32 {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.get(pod)
        .await
        .ok()
        .and_then(|p| p.status?.container_statuses)
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Runs kubectl of the cluster's version; returns (success, stdout+stderr).
pub fn kubectl_run(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(kubectl())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits until the sandbox namespace has an idle, running warm pool pod that the operator
/// holds a session to (a run can claim it).
pub async fn wait_for_idle_pool_pod(within: Duration) -> bool {
    let client = client().await;
    let pods: Api<Pod> = Api::namespaced(client, rest::SANDBOX_NAMESPACE);
    eventually_async(within, || async {
        pods.list(
            &kube::api::ListParams::default()
                .labels("codeinterp.dev/pool,!codeinterp.dev/run-uid,codeinterp.dev/held-by"),
        )
        .await
        .map(|l| {
            l.items.iter().any(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| cs.iter().all(|c| c.ready))
            })
        })
        .unwrap_or(false)
    })
    .await
}
