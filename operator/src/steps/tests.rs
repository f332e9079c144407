//! The effectful middle without a cluster: each step against a mock Kubernetes API
//! (`tower_test`, as kube-rs's controller-rs does) and scripted pod streams, under paused
//! time, so timeouts and retries take microseconds. Each test is one behaviour a user would
//! notice; the mock answers exactly the requests the step must make, in order.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use codeinterp_crds::{CodeRun, CodeRunSpec, Language, Phase, StartMode, TENANT_LABEL};
use codeinterp_store::Store;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use runner_protocol::{ExitReport, Frame, Job, PROTOCOL_VERSION, encode_frame};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::Duration;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tower_test::mock::Handle;

use crate::admission::{Caps, Queue};
use crate::config::Config;
use crate::context::{Cluster, Context, Settings};
use crate::decide::Step;
use crate::events::{self, EventQueue};
use crate::index::{Index, Known};
use crate::kube_io::Clients;
use crate::metrics::Metrics;
use crate::pod_spec;
use crate::steps::collect::{self, TidyQueue};
use crate::streams::{Attached, PodStreams, Reader};
use crate::tasks::{self, Tasks};

const NS: &str = "codeinterp";

// --- scripted pod streams -------------------------------------------------------------

/// What a pod does when attached to: read its job, then write `record`.
#[derive(Clone, Default)]
struct Script {
    record: Vec<u8>,
    log: Vec<u8>,
    attach_fails: bool,
    /// The program keeps running: the stream stays open after `record`.
    keeps_running: bool,
    /// The pod's stdin is gone (an earlier session took a job): nothing reads it, and
    /// `record` (that job's) comes out all the same.
    stdin_gone: bool,
}

#[derive(Default)]
struct FakeStreams {
    scripts: Mutex<HashMap<String, Script>>,
    /// The jobs pods received, by pod name.
    jobs: Mutex<HashMap<String, Job>>,
}

impl FakeStreams {
    fn script(&self, pod: &str, script: Script) {
        self.scripts.lock().unwrap().insert(pod.to_string(), script);
    }

    fn job_of(&self, pod: &str) -> Option<Job> {
        self.jobs.lock().unwrap().get(pod).cloned()
    }
}

/// A wrapper: reads the whole job from `stdin`, then writes `record` and ends.
async fn fake_wrapper(
    stdin: tokio::io::DuplexStream,
    mut stdout: tokio::io::DuplexStream,
    script: Script,
    jobs: Arc<FakeStreams>,
    pod: String,
) -> Option<()> {
    let mut stdin = BufReader::new(stdin);
    let mut line = Vec::new();
    stdin.read_until(b'\n', &mut line).await.ok()?;
    let job = Job::parse_header(line.strip_suffix(b"\n")?).ok()?;
    let mut payload = vec![0; job.payload_bytes() as usize];
    stdin.read_exact(&mut payload).await.ok()?;
    jobs.jobs.lock().unwrap().insert(pod, job);
    stdout.write_all(&script.record).await.ok()?;
    if script.keeps_running {
        std::future::pending::<()>().await;
    }
    Some(())
}

impl PodStreams for Arc<FakeStreams> {
    fn attach(&self, _ns: &str, pod: &str) -> BoxFuture<'static, Result<Attached, kube::Error>> {
        let script = self.scripts.lock().unwrap().get(pod).cloned();
        let (me, pod) = (self.clone(), pod.to_string());
        Box::pin(async move {
            let script = script.unwrap_or_default();
            if script.attach_fails {
                return Err(kube::Error::Service("no such pod".into()));
            }
            let (op_in, pod_in) = tokio::io::duplex(if script.stdin_gone { 64 } else { 1 << 20 });
            let (mut pod_out, op_out) = tokio::io::duplex(1 << 20);
            if script.stdin_gone {
                tokio::spawn(async move {
                    let _unread = pod_in;
                    let _ = pod_out.write_all(&script.record).await;
                });
            } else {
                tokio::spawn(fake_wrapper(pod_in, pod_out, script, me, pod));
            }
            Ok(Attached::new(
                Box::pin(op_in),
                Box::pin(op_out.compat()),
                Box::new(()),
            ))
        })
    }

    fn log(
        &self,
        _ns: &str,
        pod: &str,
        _follow: bool,
    ) -> BoxFuture<'static, Result<Reader, kube::Error>> {
        let log = self
            .scripts
            .lock()
            .unwrap()
            .get(pod)
            .map(|s| s.log.clone())
            .unwrap_or_default();
        Box::pin(async move {
            let reader: Reader = Box::pin(futures::io::Cursor::new(log));
            Ok(reader)
        })
    }
}

fn frames(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(encode_frame).collect()
}

fn stdout_frame(text: &str) -> Frame {
    Frame::Stdout {
        d: base64::engine::general_purpose::STANDARD.encode(text),
    }
}

/// The record of a program that printed `text` and exited 0.
fn printed(text: &str) -> Vec<u8> {
    frames(&[
        Frame::Start {
            v: PROTOCOL_VERSION,
        },
        stdout_frame(text),
        Frame::Exit(ExitReport {
            exit_code: Some(0),
            wall_ms: 5,
            ..Default::default()
        }),
        Frame::End,
    ])
}

/// The record of a wrapper whose stdin ended before the whole job came.
fn no_job() -> Vec<u8> {
    frames(&[
        Frame::Start {
            v: PROTOCOL_VERSION,
        },
        Frame::Exit(ExitReport {
            no_job: true,
            error: Some("no job arrived on stdin".into()),
            ..Default::default()
        }),
        Frame::End,
    ])
}

// --- the mock API server ---------------------------------------------------------------

struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the API server received.
struct Received {
    method: String,
    path: String,
    body: Value,
}

impl ApiServer {
    /// Answers the next request with `status` and `body`; returns the request.
    async fn answer(&mut self, status: u16, body: Value) -> Received {
        let (request, send) = tokio::time::timeout(Duration::from_secs(30), self.0.next_request())
            .await
            .expect("the step made no further request")
            .expect("the client is gone");
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body_in = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        Received {
            method,
            path,
            body: body_in,
        }
    }

    /// Answers a write of the run's status with the run as it would then be.
    async fn status_write(&mut self, run: &CodeRun) -> Received {
        let (request, send) = self.0.next_request().await.expect("a status write");
        assert!(
            request.uri().path().ends_with("/status"),
            "{}",
            request.uri()
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let mut updated = serde_json::to_value(run).unwrap();
        updated["status"] = body["status"].clone();
        updated["metadata"]["resourceVersion"] = json!("2");
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&updated).unwrap()))
                .unwrap(),
        );
        Received {
            method: "PATCH".into(),
            path: String::new(),
            body,
        }
    }

    /// The deny-all policy check a namespace's first pod costs: found in place.
    async fn policy_in_place(&mut self) {
        let policy = pod_spec::deny_all_policy(NS);
        let got = self
            .answer(200, serde_json::to_value(&policy).unwrap())
            .await;
        assert!(
            got.path.ends_with(pod_spec::DENY_ALL_POLICY),
            "{}",
            got.path
        );
    }

    /// Nothing more is asked of the API.
    async fn silent(&mut self) {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

// --- the harness -------------------------------------------------------------------------

struct Harness {
    ctx: Arc<Context>,
    api: ApiServer,
    streams: Arc<FakeStreams>,
    pods: reflector::store::Writer<Pod>,
    runs: reflector::store::Writer<CodeRun>,
    nodes: reflector::store::Writer<Node>,
    pools: reflector::store::Writer<codeinterp_crds::RunnerPool>,
    containers: reflector::store::Writer<codeinterp_crds::CodeContainer>,
    pod_changes: watch::Sender<u64>,
    events: EventQueue,
    tidy: TidyQueue,
    woken: futures::channel::mpsc::UnboundedReceiver<ObjectRef<CodeRun>>,
    _store: tempfile::TempDir,
}

fn harness(args: &[&str]) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut all = vec!["operator"];
    all.extend_from_slice(args);
    let cfg = <Config as clap::Parser>::parse_from(all);
    let store_dir = tempfile::tempdir().unwrap();
    let streams = Arc::new(FakeStreams::default());
    let (pods, pods_writer) = reflector::store();
    let (runs, runs_writer) = reflector::store();
    let (nodes, nodes_writer) = reflector::store();
    let (pools, pools_writer) = reflector::store();
    let (containers, containers_writer) = reflector::store();
    let pod_changes = watch::Sender::new(0);
    let (events, event_queue) = events::channel();
    let (tidy, tidy_queue) = collect::tidy();
    let (tasks, supervisor): (Tasks, _) = tasks::supervisor();
    tokio::spawn(supervisor.run());
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let (wake_container, _) = futures::channel::mpsc::unbounded();
    let queue = Queue::new(Caps {
        running_per_tenant: cfg.max_running_per_tenant,
        concurrent: cfg.max_concurrent_runs,
    });
    let ctx = Arc::new(Context {
        settings: Settings::new(cfg.clone(), "operator-test".into()),
        api: Clients::single(client),
        streams: Arc::new(streams.clone()),
        store: Store::open(store_dir.path().to_str().unwrap()).unwrap(),
        events,
        metrics: Metrics::default(),
        cluster: Cluster {
            pods,
            nodes,
            runs,
            pools,
            containers,
            pod_changes: pod_changes.subscribe(),
            ledger: Default::default(),
        },
        index: Index::new(queue),
        churn: Default::default(),
        tasks,
        tidy,
        wake,
        wake_container,
        quota: codeinterp_store::Quota::new(cfg.shared.storage_quota_bytes()),
    });
    let mut h = Harness {
        ctx,
        api: ApiServer(handle),
        streams,
        pods: pods_writer,
        runs: runs_writer,
        nodes: nodes_writer,
        pools: pools_writer,
        containers: containers_writer,
        pod_changes,
        events: event_queue,
        tidy: tidy_queue,
        woken,
        _store: store_dir,
    };
    h.node("16", "64Gi");
    h
}

fn run(name: &str) -> CodeRun {
    let mut run = CodeRun::new(
        name,
        CodeRunSpec {
            language: Language::Python,
            code: "print(1+1)".into(),
            stdin: None,
            args: vec![],
            files: vec![],
            limits: Default::default(),
            ttl_seconds_after_finished: None,
            cancel: None,
            container: None,
        },
    );
    run.metadata.namespace = Some(NS.into());
    run.metadata.uid = Some(format!("uid-{name}"));
    run.metadata.resource_version = Some("1".into());
    run.metadata.creation_timestamp = Some(crate::status::now());
    run.metadata.labels = Some([(TENANT_LABEL.to_string(), "acme".to_string())].into());
    run
}

/// The pod as the API server stores it (its defaults filled in), running.
fn running(pod: Pod) -> Pod {
    let mut pod = pod_spec::stored(&pod);
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "runner", "image": "i", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }))
        .unwrap(),
    );
    pod.spec.as_mut().unwrap().node_name = Some("node".into());
    pod
}

impl Harness {
    fn node(&mut self, cpu: &str, memory: &str) {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "node"},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        self.nodes.apply_watcher_event(&watcher::Event::Apply(node));
    }

    /// A RunnerPool of Python in the run defaults' shape, as the chart makes it.
    fn python_pool(&mut self) -> crate::config::PoolSpec {
        let pool: codeinterp_crds::RunnerPool = serde_json::from_value(json!({
            "apiVersion": "codeinterp.dev/v1alpha1", "kind": "RunnerPool",
            "metadata": {"name": "python", "namespace": NS, "uid": "pool-uid"},
            "spec": {"language": "python", "minReplicas": 1, "maxReplicas": 1},
        }))
        .unwrap();
        self.pools.apply_watcher_event(&watcher::Event::Apply(pool));
        self.ctx.pools().remove(0)
    }

    fn show_run(&mut self, run: &CodeRun) {
        self.runs
            .apply_watcher_event(&watcher::Event::Apply(run.clone()));
    }

    /// The watch shows `pod` (as the runtime's pod watch does).
    fn show_pod(&mut self, pod: &Pod) {
        self.pods
            .apply_watcher_event(&watcher::Event::Apply(pod.clone()));
        self.ctx.note_pod(pod, false);
        self.pod_changes.send_modify(|n| *n += 1);
    }

    /// The run's cold pod, as the API would have made it.
    fn cold_pod(&self, run: &CodeRun) -> Pod {
        let applied = self.ctx.isolation().unwrap();
        let mut pod = pod_spec::cold_pod(run, &self.ctx.limits(run), self.ctx.cfg(), &applied);
        pod.metadata.uid = Some(format!("pod-{}", run.name_any()));
        pod.metadata.resource_version = Some("1".into());
        pod
    }

    fn step(&self, run: &CodeRun) -> Step {
        self.ctx.next_step(run)
    }

    /// The run's reconcile, to be awaited beside the API server's answers.
    fn reconcile(
        &self,
        run: &CodeRun,
    ) -> impl Future<Output = kube::runtime::controller::Action> + use<> {
        let (ctx, run) = (self.ctx.clone(), Arc::new(run.clone()));
        async move {
            super::reconcile(run, ctx)
                .await
                .expect("the reconcile succeeds")
        }
    }

    /// Waits until the run's reading task is over.
    async fn read_done(&self, run: &CodeRun) {
        let uid = run.uid().unwrap();
        for _ in 0..1000 {
            if self.ctx.index.known(&uid) != Known::Reading {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the run is still being read");
    }

    async fn next_event(&mut self) -> String {
        self.events.next_due().await.unwrap().0
    }

    async fn woken(&mut self) -> ObjectRef<CodeRun> {
        tokio::time::timeout(Duration::from_secs(10), self.woken.next())
            .await
            .expect("a run is woken")
            .unwrap()
    }
}

fn phase_of(write: &Received) -> String {
    write.body["status"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

// --- the behaviours ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_admitted_run_gets_a_pod_owned_by_it_and_waits_for_it_to_run() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    assert_eq!(h.step(&r), Step::Admit);
    let reconcile = h.reconcile(&r);
    let cold = serde_json::to_value(h.cold_pod(&r)).unwrap();
    let server = async {
        h.api.policy_in_place().await;
        let create = h.api.answer(201, cold).await;
        assert_eq!(
            (create.method.as_str(), create.path.as_str()),
            ("POST", "/api/v1/namespaces/codeinterp/pods")
        );
        assert_eq!(
            create.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-r1"
        );
        assert_eq!(create.body["spec"]["containers"][0]["stdinOnce"], true);
    };
    let (action, ()) = tokio::join!(reconcile, server);
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(120))
    );
    assert_eq!(h.next_event().await, "PodCreated");
    // Until the pod shows in the cache, the run is not taken for podless.
    assert_eq!(h.step(&r), Step::Wait(Duration::from_secs(1)));
    h.api.silent().await;
}

#[tokio::test(start_paused = true)]
async fn a_running_pod_placed_here_gets_its_job_and_the_record_finishes_the_run_in_one_status_write()
 {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.ctx.index.placed("uid-r1", "r1");
    h.streams.script(
        "r1",
        Script {
            record: printed("2\n"),
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    assert!(matches!(h.step(&r), Step::Read { fresh: true, .. }));
    h.reconcile(&r).await;
    let write = h.api.status_write(&r).await;
    h.read_done(&r).await;
    assert_eq!(phase_of(&write), "Completed");
    let status = &write.body["status"];
    assert_eq!(status["stdoutPreview"], "2\n");
    assert_eq!(status["podName"], "r1");
    assert_eq!(status["startMode"], "Cold");
    assert!(status["startedAt"].is_string(), "{status}");
    let job = h.streams.job_of("r1").expect("the pod got its job");
    assert_eq!((job.language, job.code_bytes), (Language::Python, 10));
    let record = h
        .ctx
        .store
        .get_run("acme", NS, "uid-r1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.phase, Phase::Completed);
    assert_eq!(h.ctx.index.known("uid-r1"), Known::Ended);
    assert_eq!(h.next_event().await, "Started");
    assert_eq!(h.next_event().await, "Completed");
    h.api.silent().await;
}

#[tokio::test(start_paused = true)]
async fn a_program_that_runs_a_while_is_shown_running_before_it_ends() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.ctx.index.placed("uid-r1", "r1");
    // The end of the record never comes: the program keeps running.
    let started = frames(&[
        Frame::Start {
            v: PROTOCOL_VERSION,
        },
        stdout_frame("tick\n"),
    ]);
    h.streams.script(
        "r1",
        Script {
            record: started,
            keeps_running: true,
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let write = h.api.status_write(&r).await;
    assert_eq!(phase_of(&write), "Running");
    assert_eq!(write.body["status"]["podName"], "r1");
    assert_eq!(h.ctx.index.known("uid-r1"), Known::Reading);
}

#[tokio::test(start_paused = true)]
async fn a_final_status_that_meets_a_conflict_is_written_again_on_the_latest_run() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.ctx.index.placed("uid-r1", "r1");
    h.streams.script(
        "r1",
        Script {
            record: printed("ok\n"),
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let first = h.api.answer(409, conflict()).await;
    assert!(first.path.ends_with("/status"));
    let mut latest = r.clone();
    latest.metadata.resource_version = Some("7".into());
    latest
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "y".into());
    let get = h
        .api
        .answer(200, serde_json::to_value(&latest).unwrap())
        .await;
    assert_eq!(
        (get.method.as_str(), get.path.as_str()),
        (
            "GET",
            "/apis/codeinterp.dev/v1alpha1/namespaces/codeinterp/coderuns/r1"
        )
    );
    let second = h.api.status_write(&latest).await;
    assert_eq!(phase_of(&second), "Completed");
    assert_eq!(second.body["metadata"]["resourceVersion"], "7");
    h.read_done(&r).await;
    assert_eq!(h.ctx.index.known("uid-r1"), Known::Ended);
}

#[tokio::test(start_paused = true)]
async fn a_pod_found_after_a_restart_whose_program_ran_is_finished_from_its_log() {
    let mut h = harness(&[]);
    let mut r = run("r1");
    r.status = Some(crate::status::running(
        Default::default(),
        "r1",
        StartMode::Cold,
        &Default::default(),
        None,
    ));
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.streams.script(
        "r1",
        Script {
            log: printed("from the log\n"),
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    assert!(matches!(h.step(&r), Step::Read { fresh: false, .. }));
    h.reconcile(&r).await;
    let write = h.api.status_write(&r).await;
    assert_eq!(phase_of(&write), "Completed");
    assert_eq!(write.body["status"]["stdoutPreview"], "from the log\n");
    assert!(h.streams.job_of("r1").is_none(), "no second job");
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_job_was_cut_short_by_a_dying_leader_is_replaced_and_the_run_goes_on() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.streams.script(
        "r1",
        Script {
            log: no_job(),
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let restart = h.api.status_write(&r).await;
    assert_eq!(phase_of(&restart), "Queued");
    assert_eq!(restart.body["status"]["restarts"], 1);
    let delete = h.api.answer(200, serde_json::to_value(&pod).unwrap()).await;
    assert_eq!(
        (delete.method.as_str(), delete.path.as_str()),
        ("DELETE", "/api/v1/namespaces/codeinterp/pods/r1")
    );
    assert_eq!(delete.body["preconditions"]["uid"], "pod-r1");
    h.read_done(&r).await;
    // The old pod, on its way out, is not read again; once gone the run asks for room.
    assert!(matches!(h.step(&r), Step::Wait(_)));
    assert_eq!(h.next_event().await, "PodReplaced");
}

#[tokio::test(start_paused = true)]
async fn a_run_restarted_too_often_fails_instead_of_looping() {
    let mut h = harness(&[]);
    let mut r = run("r1");
    r.status = Some(codeinterp_crds::CodeRunStatus {
        restarts: 3,
        ..Default::default()
    });
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.streams.script(
        "r1",
        Script {
            log: no_job(),
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let write = h.api.status_write(&r).await;
    assert_eq!(phase_of(&write), "Failed");
    assert_eq!(write.body["status"]["reason"], "job_delivery_failed");
}

#[tokio::test(start_paused = true)]
async fn a_pool_pod_lost_in_a_claim_race_goes_back_to_the_pool_and_the_run_goes_cold() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pool = h.python_pool();
    let applied = h.ctx.isolation().unwrap();
    let mut idle = running(pod_spec::pool_pod(&pool, NS, h.ctx.cfg(), &applied));
    idle.metadata.name = Some("pool-pod".into());
    idle.metadata.uid = Some("pool-uid".into());
    h.show_pod(&idle);
    assert_eq!(
        h.ctx
            .index
            .slots_to_open(&[("pool-uid".into(), "pool-pod".into())])
            .len(),
        1
    );
    h.ctx
        .index
        .slot_opened("pool-uid", Some(Attached::closed()));
    let reconcile = h.reconcile(&r);
    let cold = serde_json::to_value(h.cold_pod(&r)).unwrap();
    let server = async {
        h.api.policy_in_place().await;
        let claim = h.api.answer(409, conflict()).await;
        assert_eq!(
            (claim.method.as_str(), claim.path.as_str()),
            ("PATCH", "/api/v1/namespaces/codeinterp/pods/pool-pod")
        );
        assert_eq!(
            claim.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-r1"
        );
        let create = h.api.answer(201, cold).await;
        assert_eq!(create.method, "POST");
    };
    tokio::join!(reconcile, server);
    assert!(
        h.ctx.index.slot_is_open("pool-uid"),
        "the session went back to the pool"
    );
    let misses = h
        .ctx
        .metrics
        .pool
        .misses
        .get_or_create(&crate::metrics::LanguageLabels {
            language: "python".into(),
        })
        .get();
    assert_eq!(misses, 1);
}

#[tokio::test(start_paused = true)]
async fn a_claimed_pool_pod_gets_its_job_over_the_session_held_open_to_it() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pool = h.python_pool();
    let applied = h.ctx.isolation().unwrap();
    let mut idle = running(pod_spec::pool_pod(&pool, NS, h.ctx.cfg(), &applied));
    idle.metadata.name = Some("pool-pod".into());
    idle.metadata.uid = Some("pool-uid".into());
    h.show_pod(&idle);
    h.streams.script(
        "pool-pod",
        Script {
            record: printed("warm\n"),
            ..Default::default()
        },
    );
    h.ctx
        .index
        .slots_to_open(&[("pool-uid".into(), "pool-pod".into())]);
    let session = h.ctx.streams.attach(NS, "pool-pod").await.unwrap();
    h.ctx.index.slot_opened("pool-uid", Some(session));
    let reconcile = h.reconcile(&r);
    // The pod as the claim leaves it: the run its controller, labelled with its UID, with a
    // deadline (the job goes only to a pod that is exactly that).
    let mut claimed = idle.clone();
    claimed.metadata.owner_references = r.controller_owner_ref(&()).map(|o| vec![o]);
    claimed
        .labels_mut()
        .insert(codeinterp_crds::RUN_UID_LABEL.into(), "uid-r1".into());
    claimed.spec.as_mut().unwrap().active_deadline_seconds = Some(633);
    let server = async {
        h.api.policy_in_place().await;
        h.api
            .answer(200, serde_json::to_value(&claimed).unwrap())
            .await;
        h.api.status_write(&r).await
    };
    let (_, write) = tokio::join!(reconcile, server);
    assert_eq!(write.body["status"]["startMode"], "Warm");
    assert_eq!(write.body["status"]["stdoutPreview"], "warm\n");
    assert!(
        !h.ctx.index.slot_is_open("pool-uid"),
        "a session is used once"
    );
    assert!(h.streams.job_of("pool-pod").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_run_cancelled_before_its_job_was_handed_over_ends_and_leaves_nothing_behind() {
    let mut h = harness(&[]);
    let mut r = run("r1");
    h.show_run(&r);
    let pod = h.cold_pod(&r);
    h.ctx.index.placed("uid-r1", "r1");
    h.show_pod(&pod); // pending: never ran
    r.spec.cancel = Some(true);
    h.show_run(&r);
    assert!(matches!(h.step(&r), Step::Cancel { pod: Some(_) }));
    let reconcile = h.reconcile(&r);
    let server = h.api.status_write(&r);
    let (_, write) = tokio::join!(reconcile, server);
    assert_eq!(phase_of(&write), "Cancelled");
    assert_eq!(h.ctx.index.known("uid-r1"), Known::Ended);
    // The pod goes (by its UID), and once the cache shows the run finished nothing is kept.
    let mut finished = r.clone();
    finished.status = serde_json::from_value(write.body["status"].clone()).unwrap();
    h.show_run(&finished);
    let tidy = tokio::spawn(
        std::mem::replace(&mut h.tidy, collect::tidy().1)
            .run(h.ctx.api.tidy.clone(), h.ctx.churn.clone()),
    );
    h.reconcile(&finished).await;
    let delete = h.api.answer(200, serde_json::to_value(&pod).unwrap()).await;
    assert_eq!(delete.method, "DELETE");
    assert_eq!(delete.body["preconditions"]["uid"], "pod-r1");
    assert_eq!(h.ctx.index.runs_tracked(), 0);
    assert_eq!(h.ctx.index.pod_of("uid-r1"), None);
    tidy.abort();
}

/// Reconciles `run`, which finds room: the API answers the network policy check and the
/// creation of its cold pod.
async fn admit_cold(h: &mut Harness, run: &CodeRun) {
    let admit = h.reconcile(run);
    let cold = serde_json::to_value(h.cold_pod(run)).unwrap();
    let server = async {
        h.api.policy_in_place().await;
        h.api.answer(201, cold).await;
    };
    tokio::join!(admit, server);
}

#[tokio::test(start_paused = true)]
async fn a_finished_run_gives_its_room_to_the_next_in_line_at_once() {
    let mut h = harness(&[]);
    // Room for exactly one pod of the default shape (512 MiB + 2 x 64 MiB + 4 MiB).
    h.node("16", "644Mi");
    let (a, b) = (run("a"), run("b"));
    h.show_run(&a);
    h.show_run(&b);
    admit_cold(&mut h, &a).await;
    let pod_a = h.cold_pod(&a);
    h.show_pod(&pod_a);
    assert_eq!(h.woken().await, ObjectRef::from_obj(&a), "a was admitted");
    // b waits: its place in line goes in its status.
    let admit_b = h.reconcile(&b);
    let queued = h.api.status_write(&b);
    let (_, queued) = tokio::join!(admit_b, queued);
    assert_eq!(phase_of(&queued), "Queued");
    assert_eq!(queued.body["status"]["queuePosition"], 1);
    // a ends (here: it fails to start); its pod leaves the cluster's room.
    let end = super::finish::end(
        &h.ctx,
        &a,
        Some(&pod_a),
        crate::outcome::Outcome::ended(codeinterp_crds::Reason::PodFailed, "x"),
    );
    let write = h.api.status_write(&a);
    let (ended, _) = tokio::join!(end, write);
    ended.unwrap();
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(pod_a.clone()));
    h.ctx.note_pod(&pod_a, true);
    h.ctx.pump();
    // The pod's changes concern a (its reconcile collects); its room goes to b.
    let mut next = h.woken().await;
    while next.name == "a" {
        next = h.woken().await;
    }
    assert_eq!(next, ObjectRef::from_obj(&b));
    assert!(h.woken.try_recv().is_err(), "nothing else was woken");
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_cannot_be_attached_to_is_replaced_not_failed() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.ctx.index.placed("uid-r1", "r1");
    h.streams.script(
        "r1",
        Script {
            attach_fails: true,
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let restart = h.api.status_write(&r).await;
    assert_eq!(restart.body["status"]["restarts"], 1);
    let delete = h.api.answer(200, serde_json::to_value(&pod).unwrap()).await;
    assert_eq!(delete.method, "DELETE");
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_names_the_run_but_is_not_what_the_operator_makes_never_gets_the_job() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    // Planted under another name with the run as its controller and one probe more.
    let mut planted = h.cold_pod(&r);
    planted.metadata.name = Some("planted".into());
    planted.metadata.uid = Some("pod-planted".into());
    planted.spec.as_mut().unwrap().containers[0].readiness_probe =
        serde_json::from_value(json!({"exec": {"command": ["cat", "/work/secret.txt"]}})).unwrap();
    let planted = running(planted);
    h.streams.script("planted", Script::default());
    h.show_pod(&planted);
    h.reconcile(&r).await;
    let restart = h.api.status_write(&r).await;
    assert_eq!(restart.body["status"]["restarts"], 1);
    let delete = h
        .api
        .answer(200, serde_json::to_value(&planted).unwrap())
        .await;
    assert_eq!(delete.method, "DELETE");
    assert_eq!(delete.body["preconditions"]["uid"], "pod-planted");
    assert!(
        h.streams.job_of("planted").is_none(),
        "the job was handed over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_namespace_without_its_deny_all_policy_gets_it_before_any_pod() {
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let reconcile = h.reconcile(&r);
    let cold = serde_json::to_value(h.cold_pod(&r)).unwrap();
    let server = async {
        let get = h.api.answer(404, not_found()).await;
        assert_eq!(get.method, "GET");
        let apply = h
            .api
            .answer(
                200,
                serde_json::to_value(pod_spec::deny_all_policy(NS)).unwrap(),
            )
            .await;
        assert_eq!(apply.method, "PATCH");
        assert_eq!(
            apply.body["spec"]["policyTypes"],
            json!(["Ingress", "Egress"])
        );
        let create = h.api.answer(201, cold).await;
        assert_eq!(create.method, "POST");
    };
    tokio::join!(reconcile, server);
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_stdin_is_gone_is_read_from_its_stream_without_waiting_on_the_write() {
    let mut h = harness(&[]);
    let mut r = run("r1");
    // A job that does not fit the pipe: its write blocks while nothing reads it.
    r.spec.files = vec![codeinterp_crds::InputFile {
        name: "data.bin".into(),
        file_id: None,
        content_base64: Some(base64::engine::general_purpose::STANDARD.encode(vec![7u8; 100_000])),
    }];
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    let script = Script {
        record: printed("from the earlier session\n"),
        stdin_gone: true,
        ..Default::default()
    };
    h.streams.script("r1", script);
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let write = h.api.status_write(&r).await;
    assert_eq!(phase_of(&write), "Completed");
    assert_eq!(
        write.body["status"]["stdoutPreview"],
        "from the earlier session\n"
    );
    h.read_done(&r).await;
}

#[tokio::test(start_paused = true)]
async fn a_records_output_files_are_stored_as_they_arrive_and_listed_with_the_run() {
    use sha2::Digest;
    let mut h = harness(&[]);
    let r = run("r1");
    h.show_run(&r);
    let pod = running(h.cold_pod(&r));
    h.ctx.index.placed("uid-r1", "r1");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut frames = vec![
        Frame::Start {
            v: PROTOCOL_VERSION,
        },
        Frame::Exit(ExitReport {
            exit_code: Some(0),
            ..Default::default()
        }),
        Frame::File {
            name: "data.bin".into(),
            size: content.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&content)),
        },
    ];
    frames.extend(
        content
            .chunks(runner_protocol::CHUNK_BYTES)
            .map(|c| Frame::Data {
                d: base64::engine::general_purpose::STANDARD.encode(c),
            }),
    );
    frames.push(Frame::End);
    h.streams.script(
        "r1",
        Script {
            record: self::frames(&frames),
            ..Default::default()
        },
    );
    h.show_pod(&pod);
    h.reconcile(&r).await;
    let write = h.api.status_write(&r).await;
    h.read_done(&r).await;
    assert_eq!(phase_of(&write), "Completed", "{}", write.body);
    let listed = &write.body["status"]["artifacts"][0];
    assert_eq!(listed["name"], "data.bin");
    let id = listed["id"].as_str().unwrap();
    let stored = h.ctx.store.get_file_bytes("acme", id).await.unwrap();
    assert!(stored == content, "the stored bytes are the file's");
    let meta = h
        .ctx
        .store
        .get_file_meta("acme", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.bytes, 200_000);
}

// --- runs in containers ------------------------------------------------------------------

/// A container of `tenant` in the sandbox namespace, in `phase`.
fn container_of(name: &str, tenant: &str, phase: &str) -> codeinterp_crds::CodeContainer {
    serde_json::from_value(json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {TENANT_LABEL: tenant},
            "creationTimestamp": crate::status::now()},
        "spec": {"memoryLimit": "1g"},
        "status": {"phase": phase},
    }))
    .unwrap()
}

impl Harness {
    /// The containers' watch has listed them all (none: before any is shown).
    fn containers_listed(&mut self) {
        self.containers.apply_watcher_event(&watcher::Event::Init);
        self.containers
            .apply_watcher_event(&watcher::Event::InitDone);
    }

    /// The containers' watch shows a container of `tenant`, in `phase`.
    fn container(&mut self, name: &str, tenant: &str, phase: &str) {
        let container = container_of(name, tenant, phase);
        self.containers
            .apply_watcher_event(&watcher::Event::Apply(container));
    }
}

/// A run of tenant acme, made a minute ago, that names container `name`.
fn run_in(name: &str) -> CodeRun {
    let mut r = run("r1");
    r.spec.container = Some(name.into());
    r.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        crate::status::now().0 - k8s_openapi::jiff::SignedDuration::from_secs(60),
    ));
    r
}

#[tokio::test(start_paused = true)]
async fn a_run_naming_another_tenants_container_fails_as_if_there_were_none() {
    let mut h = harness(&[]);
    h.containers_listed();
    h.container("box", "other", "Running");
    let r = run_in("box");
    h.show_run(&r);
    assert_eq!(h.step(&r), Step::InContainer);
    let reconciling = h.reconcile(&r);
    let api = &mut h.api;
    let (_, (read, write)) = tokio::join!(reconciling, async {
        // The API server, asked before the run fails, has it too: of the other tenant.
        let other = container_of("box", "other", "Running");
        let read = api.answer(200, serde_json::to_value(other).unwrap()).await;
        (read, api.status_write(&r).await)
    });
    assert_eq!(read.method, "GET");
    assert!(read.path.ends_with("/codecontainers/box"), "{}", read.path);
    assert_eq!(phase_of(&write), "Failed");
    assert_eq!(write.body["status"]["reason"], "container_not_found");
    // Nothing of the other tenant's container was touched.
    h.api.silent().await;
    assert!(!h.ctx.index.is_serving("uid-box"));
}

#[tokio::test(start_paused = true)]
async fn a_container_the_cache_does_not_show_yet_keeps_its_run_waiting() {
    let mut h = harness(&[]);
    let r = run_in("box");
    h.show_run(&r);
    // A new leader whose containers are not listed yet: the run waits, nothing is asked.
    let action = h.reconcile(&r).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    h.api.silent().await;
    // Listed, but the watch lags behind the API server, which has the tenant's container:
    // the run still waits, and nothing is written to it.
    h.containers_listed();
    let reconciling = h.reconcile(&r);
    let api = &mut h.api;
    let (action, read) = tokio::join!(reconciling, async {
        let lagging = container_of("box", "acme", "Running");
        api.answer(200, serde_json::to_value(lagging).unwrap())
            .await
    });
    assert!(read.path.ends_with("/codecontainers/box"), "{}", read.path);
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    h.api.silent().await;
    // Gone from the API server too: now the run fails.
    let reconciling = h.reconcile(&r);
    let api = &mut h.api;
    let (_, write) = tokio::join!(reconciling, async {
        api.answer(404, not_found()).await;
        api.status_write(&r).await
    });
    assert_eq!(write.body["status"]["reason"], "container_not_found");
}

#[tokio::test(start_paused = true)]
async fn a_run_naming_an_ended_container_fails_with_the_containers_message() {
    let mut h = harness(&[]);
    h.container("box", "acme", "Expired");
    let r = run_in("box");
    h.show_run(&r);
    let (_, write) = tokio::join!(h.reconcile(&r), h.api.status_write(&r));
    assert_eq!(write.body["status"]["reason"], "container_expired");
    assert_eq!(write.body["status"]["message"], "Container is expired.");
    h.api.silent().await;
}

#[tokio::test(start_paused = true)]
async fn a_status_refused_because_the_run_was_deleted_is_not_written_again() {
    let mut h = harness(&[]);
    let r = run("r1");
    let api = h.ctx.runs_api("codeinterp");
    let status = crate::status::queued(Default::default(), 3, "waiting");
    let write = crate::status::write(&api, &r, &status);
    let server = async {
        let refused = h.api.answer(404, not_found()).await;
        let again = tokio::time::timeout(Duration::from_secs(5), h.api.0.next_request()).await;
        (refused, again.is_ok())
    };
    let (written, (refused, again)) = tokio::join!(write, server);
    assert!(refused.path.ends_with("/r1/status"));
    assert!(!again, "no second write");
    assert!(written.is_err(), "a deleted run's status is not written");

    // Control: a status refused as invalid is replaced by a minimal failed one.
    let write = crate::status::write(&api, &r, &status);
    let server = async {
        let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Invalid", "code": 422, "message": "invalid"});
        h.api.answer(422, invalid).await;
        h.api.status_write(&r).await
    };
    let (written, minimal) = tokio::join!(write, server);
    assert!(written.is_ok());
    assert_eq!(phase_of(&minimal), "Failed");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_run_looked_at_again_before_the_cache_shows_its_place_is_not_written_twice() {
    let mut h = harness(&[]);
    // Room for exactly one pod of the default shape, taken by a: r1 waits.
    h.node("16", "644Mi");
    let (a, r) = (run("a"), run("r1"));
    h.show_run(&a);
    h.show_run(&r);
    admit_cold(&mut h, &a).await;
    let first = h.reconcile(&r);
    let (_, queued) = tokio::join!(first, h.api.status_write(&r));
    assert_eq!(queued.body["status"]["queuePosition"], 1);
    // The cache still shows the run without a status: looked at again, it writes nothing.
    let again = tokio::time::timeout(Duration::from_secs(10), h.reconcile(&r));
    let server = tokio::time::timeout(Duration::from_secs(5), h.api.0.next_request());
    let (done, request) = tokio::join!(again, server);
    assert!(request.is_err(), "no second Queued write");
    assert!(done.is_ok(), "answered without the API");
    assert_eq!(h.ctx.index.place_in_line("uid-r1"), Some(1));
}
