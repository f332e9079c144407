//! Containers that keep state between runs (issue 20), measured next to their baselines in
//! the same round:
//! - a run in a live container (`x += 1; print(x)` after a first `x = 0`), `POST /v1/runs`
//!   with `"container"` to its answer, each answer checked to be the next number;
//! - baseline A: a one-shot warm run (`print(1)`, the default shape, so it claims a pod of
//!   the default warm pool);
//! - baseline B: what a session of llm-sandbox does for each step, a fresh interpreter
//!   started in an existing pod: `kubectl exec <the container's pod> -c <its container> --
//!   python3 -c 'print(1)'`, with the cluster's kubectl;
//!
//!   the three interleaved (which goes first rotates), each after the warm pools are back
//!   to their idle size, so none pays for another's refill;
//! - creating a container: `POST /v1/containers` to its answer, and from that request to
//!   the answer of its first `print(1)` run, one container at a time after the container
//!   pool has an idle pod again; whether each claimed a pod of the container pool (its pod
//!   carries the pool's label) or had a pod of its own made.
//!
//! Every container it makes is deleted afterwards, through the API and, for any left
//! (an error, a panic, a request that timed out), by deleting its CodeContainer.
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use codeinterp_crds::{
    CodeContainer, CodeRun, HELD_LABEL, POOL_LABEL, RUN_UID_LABEL, RunnerPool, StartMode,
};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Args;
use crate::rest::Run;
use crate::stats::{self, Summary};
use crate::suite::{Env, progress};

/// The label the operator puts on a container's pod (the CodeContainer's UID).
const CONTAINER_LABEL: &str = "codeinterp.dev/container";
/// The runner's container in every sandbox pod (what `kubectl exec -c` names when the
/// pod spec cannot be read).
const RUNNER_CONTAINER: &str = "runner";
const STATE_CODE: &str = "x += 1\nprint(x)";
const ONE_SHOT_CODE: &str = "print(1)";
/// Longest wait for the warm pools to be back to their idle size before a step.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// Longest a `kubectl exec` may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
pub struct ContainersReport {
    /// Rounds of the interleaved loop (one of each step per round).
    pub runs: usize,
    /// Runs in the live container that answered completed with the expected number.
    pub container_run: Summary,
    /// Completed runs whose stdout was not the expected number (left out of the figures).
    pub container_mismatches: usize,
    /// Runs that failed or did not complete (left out of the figures).
    pub container_failures: usize,
    /// The live container's pod, and whether it was a pool pod the container claimed.
    pub live_pod: Option<String>,
    pub live_pod_from_pool: Option<bool>,
    /// Baseline A: warm one-shot `print(1)` runs served from a pool pod.
    pub one_shot: Summary,
    /// One-shot runs that completed without a pool pod (cold; left out of the figures).
    pub one_shot_misses: usize,
    pub one_shot_failures: usize,
    /// Baseline B: `kubectl exec ... python3 -c 'print(1)'` in the live container's pod,
    /// process start to exit.
    pub kubectl_exec: Summary,
    pub kubectl_exec_failures: usize,
    /// The kubectl binary and the target (`pod -c container`).
    pub kubectl: String,
    pub exec_target: Option<String>,
    /// Container run p50 (p99) over the one-shot's, and over kubectl exec's.
    pub p50_ratio_to_one_shot: Option<f64>,
    pub p99_ratio_to_one_shot: Option<f64>,
    pub p50_ratio_to_kubectl_exec: Option<f64>,
    pub p99_ratio_to_kubectl_exec: Option<f64>,
    pub creations: Creations,
    /// Containers deleted at the end (through the API or their CodeContainer), and any
    /// that could not be.
    pub cleaned_up: usize,
    pub left_behind: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Creations {
    /// The container pool the new containers (1g) may claim a pod of, if there is one.
    pub pool: Option<String>,
    pub attempted: usize,
    /// `POST /v1/containers` to its answer.
    pub create: Summary,
    /// From that request to the answer of the container's first `print(1)` run.
    pub create_to_first_run: Summary,
    /// The same, split by whether the container claimed an idle pool pod or got a new pod.
    pub create_to_first_run_from_pool: Summary,
    pub create_to_first_run_new_pod: Summary,
    /// The first run alone (its `POST /v1/runs` to its answer).
    pub first_run: Summary,
    /// `DELETE /v1/containers/{id}` to its answer.
    pub delete: Summary,
    /// Creations whose container claimed a pool pod, got a new pod, or whose pod could not
    /// be read.
    pub from_pool: usize,
    pub new_pod: usize,
    pub pod_unknown: usize,
    /// Creations made while the pool's status said it had an idle pod.
    pub pool_ready_before: usize,
    /// Creations refused as over the tenant's container limit and retried (429).
    pub retried_429: usize,
    pub items: Vec<Creation>,
}

#[derive(Debug, Default, Serialize)]
pub struct Creation {
    pub index: usize,
    pub id: Option<String>,
    /// The container pool's `status.replicas` (idle pods) just before the request, and
    /// the idle pods seen by listing them.
    pub pool_status_idle: Option<u32>,
    pub pool_idle_pods: Option<usize>,
    /// How long the wait for the pool to have an idle pod again took before this one.
    pub refill_wait_ms: Option<f64>,
    pub create_ms: Option<f64>,
    pub first_run_ms: Option<f64>,
    pub create_to_first_run_ms: Option<f64>,
    pub delete_ms: Option<f64>,
    pub pod: Option<String>,
    /// Its pod carries a pool's label (claimed from the pool).
    pub from_pool: Option<bool>,
    /// Its pod was made before the container (by creation time, to the second).
    pub pod_existed_before: Option<bool>,
    pub error: Option<String>,
}

/// The containers REST calls, as any client makes them.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// `POST /v1/containers`: the container's id, or the status and body of a refusal.
    async fn create(&self, name: &str) -> anyhow::Result<Result<String, (u16, String)>> {
        let response = self
            .http
            .post(format!("{}/v1/containers", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&json!({"name": name}))?)
            .send()
            .await
            .context("POST /v1/containers")?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            return Ok(Err((
                status.as_u16(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )));
        }
        let body: Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
        let id = body["id"]
            .as_str()
            .context("the answer has no container id")?;
        Ok(Ok(id.to_string()))
    }

    /// `DELETE /v1/containers/{id}`.
    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/v1/containers/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("DELETE /v1/containers")?;
        let status = response.status();
        if !status.is_success() && status.as_u16() != 404 {
            let body = response.text().await.unwrap_or_default();
            bail!("DELETE /v1/containers/{id} answered {status}: {body}");
        }
        Ok(())
    }
}

/// What the suite made, so that all of it goes at the end.
#[derive(Default)]
struct Made {
    /// Container ids not deleted yet.
    live: BTreeSet<String>,
    deleted: usize,
}

/// The whole suite; whatever happens, every container it made is deleted before it ends.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<ContainersReport> {
    env.api.ready().await?;
    let client = Client::new(&args.api_url, &args.api_token)?;
    // Every container's name starts with this: what is left at the end is found by it.
    let prefix = format!("bench-containers-{}", std::process::id());
    let mut made = Made::default();
    let outcome = AssertUnwindSafe(measure(env, args, &client, &prefix, &mut made))
        .catch_unwind()
        .await;
    let left_behind = clean_up(env, &client, &prefix, &mut made).await;
    for left in &left_behind {
        progress(&format!("containers: left behind: {left}"));
    }
    let mut report = match outcome {
        Ok(result) => result.with_context(|| {
            format!(
                "containers deleted afterwards: {}, left behind: {:?}",
                made.deleted, left_behind
            )
        })?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    report.cleaned_up = made.deleted;
    report.left_behind = left_behind;
    Ok(report)
}

async fn measure(
    env: &Env,
    args: &Args,
    client: &Client,
    prefix: &str,
    made: &mut Made,
) -> anyhow::Result<ContainersReport> {
    let mut errors = Vec::new();
    let kubectl = kubectl_binary(args);
    let pools = Pools::read(env).await?;
    let mut settle = Settle::new(env, &pools).await;

    // The live container, its state set by a first run.
    progress("containers: the live container");
    settle.wait(env, &pools).await;
    let id = create(client, &format!("{prefix}-live"), made, &mut 0)
        .await?
        .map_err(|(status, body)| anyhow::anyhow!("creating a container: {status} {body}"))?;
    let first = run_in(env, &id, "x = 0\nprint(x)").await?;
    first
        .check("0\n")
        .context("the live container's first run")?;
    let pod = container_pod(env, &id).await;
    let (live_pod, live_pod_from_pool, exec_target) = match &pod {
        Ok(pod) => (
            Some(pod.name_any()),
            Some(from_pool(pod)),
            Some((pod.name_any(), runner_container(pod))),
        ),
        Err(e) => {
            errors.push(format!("the live container's pod: {e:#}"));
            (None, None, None)
        }
    };
    // One of each first, uncounted: the first exec pages in kubectl and python3.
    let _ = env.api.run_python(ONE_SHOT_CODE).await;
    if let Some((pod, container)) = &exec_target {
        let _ = exec(&kubectl, &env.sandbox_namespace, pod, container).await;
    }
    // The container pool refills behind the live container's claim.
    let _ = pools
        .wait_container_idle(env, Duration::from_secs(args.container_refill_seconds))
        .await;

    progress(&format!(
        "containers: {} rounds of a run in the container, a warm one-shot run and kubectl exec",
        args.container_runs
    ));
    let (mut in_container, mut one_shot, mut execs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mismatches, mut container_failures) = (0, 0);
    let (mut one_shot_misses, mut one_shot_failures, mut exec_failures) = (0, 0, 0);
    let mut x: i64 = 0;
    for i in 0..args.container_runs {
        if i > 0 && i % 10 == 0 {
            progress(&format!("containers: round {i} of {}", args.container_runs));
        }
        for k in 0..3 {
            settle.wait(env, &pools).await;
            match (i + k) % 3 {
                0 => {
                    let sent = Instant::now();
                    let result = run_in(env, &id, STATE_CODE).await;
                    let took = stats::ms(sent.elapsed());
                    match result {
                        Ok(run) if run.status == "completed" => {
                            let printed = run.stdout.as_deref().unwrap_or_default();
                            match printed.trim().parse::<i64>() {
                                Ok(v) if v == x + 1 && printed == format!("{v}\n") => {
                                    in_container.push(took);
                                    x = v;
                                }
                                parsed => {
                                    mismatches += 1;
                                    errors.push(format!(
                                        "round {i}: the container run printed {printed:?}, expected {:?}",
                                        format!("{}\n", x + 1)
                                    ));
                                    // Go on from what the container holds now.
                                    if let Ok(v) = parsed {
                                        x = v;
                                    }
                                }
                            }
                        }
                        Ok(run) => {
                            container_failures += 1;
                            errors.push(format!(
                                "round {i}: the container run {} ended {} ({:?})",
                                run.id, run.status, run.error
                            ));
                        }
                        Err(e) => {
                            container_failures += 1;
                            errors.push(format!("round {i}: the container run: {e:#}"));
                        }
                    }
                }
                1 => {
                    let sent = Instant::now();
                    let result = env.api.run_python(ONE_SHOT_CODE).await;
                    let took = stats::ms(sent.elapsed());
                    match result.and_then(|r| r.check("1\n").map(|()| r)) {
                        Ok(run) => match start_mode(env, &run.id).await {
                            Some(StartMode::Warm) => one_shot.push(took),
                            mode => {
                                one_shot_misses += 1;
                                errors.push(format!(
                                    "round {i}: the one-shot run {} started {mode:?}, not from the pool",
                                    run.id
                                ));
                            }
                        },
                        Err(e) => {
                            one_shot_failures += 1;
                            errors.push(format!("round {i}: the one-shot run: {e:#}"));
                        }
                    }
                }
                _ => {
                    let Some((pod, container)) = &exec_target else {
                        exec_failures += 1;
                        continue;
                    };
                    match exec(&kubectl, &env.sandbox_namespace, pod, container).await {
                        Ok(took) => execs.push(took),
                        Err(e) => {
                            exec_failures += 1;
                            errors.push(format!("round {i}: kubectl exec: {e:#}"));
                        }
                    }
                }
            }
        }
    }
    if let Err(e) = delete(client, &id, made).await {
        errors.push(format!("deleting the live container: {e:#}"));
    }

    let creations = creations(env, args, client, prefix, made, &pools, &mut settle).await;

    let (container_run, one_shot, kubectl_exec) = (
        Summary::of(&in_container),
        Summary::of(&one_shot),
        Summary::of(&execs),
    );
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    Ok(ContainersReport {
        runs: args.container_runs,
        p50_ratio_to_one_shot: ratio(container_run.p50_ms, one_shot.p50_ms),
        p99_ratio_to_one_shot: ratio(container_run.p99_ms, one_shot.p99_ms),
        p50_ratio_to_kubectl_exec: ratio(container_run.p50_ms, kubectl_exec.p50_ms),
        p99_ratio_to_kubectl_exec: ratio(container_run.p99_ms, kubectl_exec.p99_ms),
        container_run,
        container_mismatches: mismatches,
        container_failures,
        live_pod,
        live_pod_from_pool,
        one_shot,
        one_shot_misses,
        one_shot_failures,
        kubectl_exec,
        kubectl_exec_failures: exec_failures,
        kubectl: kubectl.display().to_string(),
        exec_target: exec_target.map(|(pod, c)| format!("{pod} -c {c}")),
        creations,
        cleaned_up: 0,
        left_behind: Vec::new(),
        errors,
    })
}

/// `count` containers made one at a time, each after the container pool has an idle pod
/// again: the request, its first run, then its deletion.
async fn creations(
    env: &Env,
    args: &Args,
    client: &Client,
    prefix: &str,
    made: &mut Made,
    pools: &Pools,
    settle: &mut Settle,
) -> Creations {
    progress(&format!(
        "containers: {} created one at a time, each with a first run",
        args.container_creations
    ));
    let mut out = Creations {
        pool: pools.container.clone(),
        attempted: args.container_creations,
        ..Creations::default()
    };
    let (mut create_ms, mut first_run, mut to_first, mut delete_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut to_first_pool, mut to_first_new) = (Vec::new(), Vec::new());
    for index in 0..args.container_creations {
        let mut item = Creation {
            index,
            ..Creation::default()
        };
        let refill = Instant::now();
        let refilled = pools
            .wait_container_idle(env, Duration::from_secs(args.container_refill_seconds))
            .await;
        settle.wait(env, pools).await;
        item.refill_wait_ms = Some(stats::ms(refill.elapsed()));
        if let Err(e) = refilled {
            progress(&format!("containers: {e:#}"));
        }
        item.pool_status_idle = pools.status_idle(env).await;
        item.pool_idle_pods = pools.container_idle_pods(env).await.ok();
        if item.pool_status_idle.is_some_and(|n| n > 0) {
            out.pool_ready_before += 1;
        }

        let sent = Instant::now();
        let id = match create(
            client,
            &format!("{prefix}-{index}"),
            made,
            &mut out.retried_429,
        )
        .await
        {
            Ok(Ok(id)) => id,
            Ok(Err((status, body))) => {
                item.error = Some(format!("POST /v1/containers answered {status}: {body}"));
                out.items.push(item);
                continue;
            }
            Err(e) => {
                item.error = Some(format!("{e:#}"));
                out.items.push(item);
                continue;
            }
        };
        let created = stats::ms(sent.elapsed());
        item.create_ms = Some(created);
        create_ms.push(created);
        item.id = Some(id.clone());

        let run_sent = Instant::now();
        let run = run_in(env, &id, ONE_SHOT_CODE).await;
        let (run_ms, total_ms) = (stats::ms(run_sent.elapsed()), stats::ms(sent.elapsed()));
        let pod = container_pod(env, &id).await;
        match &pod {
            Ok(pod) => {
                let pooled = from_pool(pod);
                item.pod = Some(pod.name_any());
                item.from_pool = Some(pooled);
                item.pod_existed_before = existed_before(env, &id, pod).await;
                if pooled {
                    out.from_pool += 1;
                } else {
                    out.new_pod += 1;
                }
            }
            Err(_) => out.pod_unknown += 1,
        }
        match run.and_then(|r| r.check("1\n")) {
            Ok(()) => {
                item.first_run_ms = Some(run_ms);
                item.create_to_first_run_ms = Some(total_ms);
                first_run.push(run_ms);
                to_first.push(total_ms);
                match item.from_pool {
                    Some(true) => to_first_pool.push(total_ms),
                    Some(false) => to_first_new.push(total_ms),
                    None => {}
                }
            }
            Err(e) => item.error = Some(format!("the first run: {e:#}")),
        }

        let deleting = Instant::now();
        match delete(client, &id, made).await {
            Ok(()) => {
                let took = stats::ms(deleting.elapsed());
                item.delete_ms = Some(took);
                delete_ms.push(took);
            }
            Err(e) => {
                let why = format!("deleting: {e:#}");
                item.error = Some(item.error.map_or(why.clone(), |e| format!("{e}; {why}")));
            }
        }
        out.items.push(item);
        // A moment for the node after the pod's deletion.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out.create = Summary::of(&create_ms);
    out.first_run = Summary::of(&first_run);
    out.create_to_first_run = Summary::of(&to_first);
    out.create_to_first_run_from_pool = Summary::of(&to_first_pool);
    out.create_to_first_run_new_pod = Summary::of(&to_first_new);
    out.delete = Summary::of(&delete_ms);
    out
}

/// `POST /v1/containers`, retried for up to a minute while the tenant has as many live
/// containers as it may (429); the id is remembered for the clean-up.
async fn create(
    client: &Client,
    name: &str,
    made: &mut Made,
    retried: &mut usize,
) -> anyhow::Result<Result<String, (u16, String)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.create(name).await? {
            Ok(id) => {
                made.live.insert(id.clone());
                return Ok(Ok(id));
            }
            Err((429, _)) if Instant::now() < deadline => {
                *retried += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(refused) => return Ok(Err(refused)),
        }
    }
}

async fn delete(client: &Client, id: &str, made: &mut Made) -> anyhow::Result<()> {
    client.delete(id).await?;
    made.live.remove(id);
    made.deleted += 1;
    Ok(())
}

/// Deletes what is left: through the API, then any CodeContainer of this suite's names
/// still there (one whose request timed out, say). Returns what could not be deleted.
async fn clean_up(env: &Env, client: &Client, prefix: &str, made: &mut Made) -> Vec<String> {
    let ids: Vec<String> = made.live.iter().cloned().collect();
    for id in ids {
        if let Err(e) = delete(client, &id, made).await {
            progress(&format!("containers: deleting {id}: {e:#}"));
        }
    }
    let api: Api<CodeContainer> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    let mut left = Vec::new();
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            for c in list.items.iter().filter(|c| {
                c.spec
                    .display_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
                    && c.metadata.deletion_timestamp.is_none()
            }) {
                let name = c.name_any();
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => made.deleted += 1,
                    Err(e) => left.push(format!("{name}: {e}")),
                }
            }
        }
        Err(e) => left.push(format!("listing CodeContainers: {e}")),
    }
    left.extend(made.live.iter().map(|id| format!("{id}: not deleted")));
    left
}

/// A Python run in the container, waited for.
async fn run_in(env: &Env, container: &str, code: &str) -> anyhow::Result<Run> {
    env.api
        .run(
            json!({"language": "python", "code": code, "container": container, "wait": true,
                    "limits": {"timeout_ms": 10_000}}),
        )
        .await
}

async fn start_mode(env: &Env, name: &str) -> Option<StartMode> {
    let runs: Api<CodeRun> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    runs.get(name).await.ok()?.status?.start_mode
}

/// The container's pod, as its CodeContainer names it (`cntr_<hex>` is `cntr-<hex>`).
async fn container_pod(env: &Env, id: &str) -> anyhow::Result<Pod> {
    let name = id.replacen("cntr_", "cntr-", 1);
    let containers: Api<CodeContainer> =
        Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pod = containers
            .get_opt(&name)
            .await?
            .and_then(|c| c.status?.pod_name);
        if let Some(pod) = pod {
            return Ok(sandbox_pods(env).get(&pod).await?);
        }
        if Instant::now() > deadline {
            bail!("the container {name} names no pod");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sandbox_pods(env: &Env) -> Api<Pod> {
    Api::namespaced(env.client.clone(), &env.sandbox_namespace)
}

fn from_pool(pod: &Pod) -> bool {
    pod.labels().contains_key(POOL_LABEL)
}

/// Whether the pod was made before the container (a second earlier at least).
async fn existed_before(env: &Env, id: &str, pod: &Pod) -> Option<bool> {
    let containers: Api<CodeContainer> =
        Api::namespaced(env.client.clone(), &env.sandbox_namespace);
    let c = containers
        .get_opt(&id.replacen("cntr_", "cntr-", 1))
        .await
        .ok()??;
    let made = c.creation_timestamp()?.0.as_second();
    Some(pod.creation_timestamp()?.0.as_second() < made)
}

/// The pod's runner container (the first, unless one is named as the operator names it).
fn runner_container(pod: &Pod) -> String {
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    names
        .iter()
        .find(|n| *n == RUNNER_CONTAINER)
        .or(names.first())
        .cloned()
        .unwrap_or_else(|| RUNNER_CONTAINER.into())
}

/// `kubectl exec -n ns pod -c container -- python3 -c 'print(1)'`: from starting kubectl
/// to its exit, checked to print `1`.
async fn exec(kubectl: &Path, ns: &str, pod: &str, container: &str) -> anyhow::Result<f64> {
    let mut command = tokio::process::Command::new(kubectl);
    command
        .args(["exec", "-n", ns, pod, "-c", container, "--"])
        .args(["python3", "-c", ONE_SHOT_CODE])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(EXEC_TIMEOUT, command.output())
        .await
        .context("kubectl exec timed out")?
        .with_context(|| format!("running {}", kubectl.display()))?;
    let took = stats::ms(started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout != "1\n" {
        bail!(
            "kubectl exec ended {} with stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// The flag's kubectl; else the cluster's version `make up` built (as `testkit::kubectl`
/// finds it), else the one on the PATH.
fn kubectl_binary(args: &Args) -> PathBuf {
    if let Some(k) = &args.kubectl {
        return k.clone();
    }
    let version =
        std::fs::read_to_string(testkit::rest::repo_root().join("hack/cluster/versions.env"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("KUBERNETES_VERSION=").map(str::to_string))
            });
    let cache =
        std::env::var("CODEINTERP_CACHE").unwrap_or_else(|_| "/var/cache/codeinterp".into());
    version
        .map(|v| PathBuf::from(cache).join(format!("bin/kubernetes-{v}/kubectl")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// The sandbox namespace's warm pools: the one new (1g) containers claim pods of, and the
/// others (runs').
struct Pools {
    container: Option<String>,
    container_pools: Vec<String>,
}

impl Pools {
    async fn read(env: &Env) -> anyhow::Result<Self> {
        let api: Api<RunnerPool> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
        let pools = api
            .list(&ListParams::default())
            .await
            .context("listing the RunnerPools")?;
        let container_pools: Vec<&RunnerPool> = pools
            .items
            .iter()
            .filter(|p| p.spec.container == Some(true))
            .collect();
        let one_gig = codeinterp_crds::MemoryLimit::OneGig.mb();
        let container = container_pools
            .iter()
            .find(|p| p.spec.memory_mb == Some(one_gig) && p.spec.max_replicas > 0)
            .map(|p| p.name_any());
        if container.is_none() {
            progress("containers: no container pool of 1g: every new container gets a new pod");
        }
        Ok(Pools {
            container,
            container_pools: container_pools.iter().map(|p| p.name_any()).collect(),
        })
    }

    /// Idle, ready pods of the pools: (runs' pools, the 1g container pool).
    async fn idle(&self, env: &Env) -> anyhow::Result<(usize, usize)> {
        let list = sandbox_pods(env)
            .list(&ListParams::default().labels(&format!("{POOL_LABEL},!{RUN_UID_LABEL}")))
            .await?;
        let (mut runs, mut containers) = (0, 0);
        for p in &list.items {
            let ready = p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready));
            if !ready || p.labels().contains_key(CONTAINER_LABEL) {
                continue;
            }
            let pool = p.labels().get(POOL_LABEL).cloned().unwrap_or_default();
            if self.container.as_ref() == Some(&pool) {
                containers += 1;
            } else if !self.container_pools.contains(&pool) && p.labels().contains_key(HELD_LABEL) {
                runs += 1;
            }
        }
        Ok((runs, containers))
    }

    async fn container_idle_pods(&self, env: &Env) -> anyhow::Result<usize> {
        Ok(self.idle(env).await?.1)
    }

    /// The container pool's `status.replicas`.
    async fn status_idle(&self, env: &Env) -> Option<u32> {
        let name = self.container.as_ref()?;
        let api: Api<RunnerPool> = Api::namespaced(env.client.clone(), &env.sandbox_namespace);
        Some(api.get(name).await.ok()?.status?.replicas)
    }

    /// Waits until the container pool has an idle pod (no wait without one).
    async fn wait_container_idle(&self, env: &Env, within: Duration) -> anyhow::Result<()> {
        let Some(name) = &self.container else {
            return Ok(());
        };
        let deadline = Instant::now() + within;
        loop {
            if self.container_idle_pods(env).await.unwrap_or(0) >= 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the container pool {name} had no idle pod within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits before each step until the runs' warm pools are back to their idle size (as seen
/// once they stopped growing at the start), so no step pays for another's refill. A size
/// not reached within a minute becomes the new size (the pools may shrink as demand falls).
struct Settle {
    runs_idle: usize,
}

impl Settle {
    async fn new(env: &Env, pools: &Pools) -> Self {
        let started = Instant::now();
        let mut last = usize::MAX;
        let runs_idle = loop {
            let n = pools.idle(env).await.map(|(r, _)| r).unwrap_or(0);
            if (n == last && n > 0) || started.elapsed() > SETTLE_WITHIN {
                break n;
            }
            last = n;
            tokio::time::sleep(Duration::from_secs(3)).await;
        };
        Settle { runs_idle }
    }

    async fn wait(&mut self, env: &Env, pools: &Pools) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let n = pools.idle(env).await.map(|(r, _)| r).unwrap_or(0);
            if n >= self.runs_idle {
                break;
            }
            if Instant::now() > deadline {
                progress(&format!(
                    "containers: the warm pools have {n} idle pods, not {}: going on",
                    self.runs_idle
                ));
                self.runs_idle = n;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
