//! A Kubernetes API for CodeContainers, in memory, enough for the API server's routes:
//! create, get, list, watch (streaming lists too), merge patch (refused with 409 when the patch names a
//! `resourceVersion` that is no longer current, as the real one does), and delete. Every
//! change is an event that watches get in order; [`FakeKube::operator`] plays the operator
//! for file operations. Served in-process as a tower service (an axum router), so a
//! `kube::Client` talks to it with no socket.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use codeinterp_crds::{CodeContainer, FileOpKind};
use codeinterp_store::{ContainerFile, FileSource, Store};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

const BASE: &str = "/apis/codeinterp.dev/v1alpha1/namespaces/{ns}/codecontainers";

#[derive(Default)]
struct Objects {
    by_name: BTreeMap<String, Value>,
    version: u64,
    /// Every event so far, `(resourceVersion, event)`: a watch starts from its version.
    history: Vec<(u64, Value)>,
}

#[derive(Clone)]
pub struct FakeKube {
    objects: Arc<Mutex<Objects>>,
    events: broadcast::Sender<(u64, Value)>,
    /// While true, watches deliver nothing new (a watch lagging behind the writes).
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

impl FakeKube {
    pub fn new() -> Self {
        FakeKube {
            objects: Arc::default(),
            events: broadcast::channel(4096).0,
            held: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Holds back (or lets through) what every watch would deliver next: the writes are
    /// made, a cache only learns of them once released.
    pub fn hold_watches(&self, hold: bool) {
        self.held.send_replace(hold);
    }

    /// A client of this API.
    pub fn client(&self) -> kube::Client {
        let router = Router::new()
            .route(BASE, get(list_or_watch).post(create))
            .route(
                &format!("{BASE}/{{name}}"),
                get(get_one).patch(patch).delete(delete),
            )
            .with_state(self.clone());
        kube::Client::new(router, "codeinterp-test")
    }

    /// Records a change of `object` (its new version set) and tells the watches.
    fn changed(&self, objects: &mut Objects, kind: &str, object: &mut Value) {
        objects.version += 1;
        let version = objects.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let event = json!({"type": kind, "object": object});
        objects.history.push((version, event.clone()));
        let _ = self.events.send((version, event));
    }

    /// The container as stored now.
    pub fn get(&self, name: &str) -> Option<CodeContainer> {
        let objects = self.objects.lock().unwrap();
        let value = objects.by_name.get(name)?.clone();
        Some(serde_json::from_value(value).unwrap())
    }

    pub fn names(&self) -> Vec<String> {
        self.objects
            .lock()
            .unwrap()
            .by_name
            .keys()
            .cloned()
            .collect()
    }

    /// Changes the container's status as the operator would.
    pub fn set_status(&self, name: &str, status: Value) {
        let mut objects = self.objects.lock().unwrap();
        let mut object = objects.by_name.get(name).cloned().unwrap();
        merge(&mut object, &json!({"status": status}));
        self.changed(&mut objects, "MODIFIED", &mut object);
        objects.by_name.insert(name.to_string(), object);
    }

    /// Plays the operator's part in file operations until dropped: each container's
    /// operations past `fileOpsDone` are carried out in order (the folder's index in the
    /// store follows them), one status write for all of them; a put of `refuse.txt` fails.
    pub fn operator(&self, store: Store) -> tokio::task::JoinHandle<()> {
        let fake = self.clone();
        let mut events = self.events.subscribe();
        tokio::spawn(async move {
            while let Ok((_, event)) = events.recv().await {
                let Ok(c) = serde_json::from_value::<CodeContainer>(event["object"].clone()) else {
                    continue;
                };
                if event["type"] != "DELETED" {
                    fake.carry_out(&store, &c).await;
                }
            }
        })
    }

    async fn carry_out(&self, store: &Store, c: &CodeContainer) {
        let status = c.status.clone().unwrap_or_default();
        let mut pending: Vec<_> = c
            .spec
            .file_ops
            .iter()
            .filter(|op| op.seq > status.file_ops_done)
            .collect();
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|op| op.seq);
        let name = c.metadata.name.clone().unwrap();
        let tenant = c.tenant_in("codeinterp-test");
        let mut errors = status.file_op_errors.clone();
        for op in &pending {
            match op.kind {
                FileOpKind::Put if op.path == "refuse.txt" => {
                    errors.push(codeinterp_crds::FileOpError {
                        seq: op.seq,
                        message: "no room for refuse.txt".into(),
                    });
                }
                FileOpKind::Put => {
                    let id = op.file_id.clone().unwrap();
                    let meta = store.get_file_meta(&tenant, &id).await.unwrap().unwrap();
                    let entry = ContainerFile {
                        id,
                        container: name.clone(),
                        tenant: tenant.clone(),
                        path: op.path.clone(),
                        bytes: meta.bytes,
                        created_at: 1000 + op.seq as i64,
                        source: FileSource::User,
                    };
                    store.put_container_file(&entry).await.unwrap();
                }
                FileOpKind::Delete => {
                    store
                        .remove_container_file(&tenant, &name, &op.path)
                        .await
                        .unwrap();
                }
            }
        }
        let done = pending.last().unwrap().seq;
        self.set_status(
            &name,
            json!({"phase": "Running", "fileOpsDone": done, "fileOpErrors": errors}),
        );
    }
}

fn list_body(objects: &Objects) -> Value {
    json!({
        "apiVersion": "codeinterp.dev/v1alpha1",
        "kind": "CodeContainerList",
        "metadata": {"resourceVersion": objects.version.to_string()},
        "items": objects.by_name.values().collect::<Vec<_>>(),
    })
}

async fn list_or_watch(
    State(fake): State<FakeKube>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if query.get("watch").map(String::as_str) != Some("true") {
        let objects = fake.objects.lock().unwrap();
        return axum::Json(list_body(&objects)).into_response();
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Subscribed before the history is read: nothing falls between the two.
    let live = fake.events.subscribe();
    let objects = fake.objects.lock().unwrap();
    let past: Vec<(u64, Value)> =
        if query.get("sendInitialEvents").map(String::as_str) == Some("true") {
            // A streaming list: what there is, as ADDED events, then the bookmark that ends them.
            let now = objects.version;
            let there = objects.by_name.values();
            let added = there.map(|o| (now, json!({"type": "ADDED", "object": o})));
            let end = json!({"type": "BOOKMARK", "object": {
            "apiVersion": "codeinterp.dev/v1alpha1", "kind": "CodeContainer",
            "metadata": {"resourceVersion": now.to_string(),
                         "annotations": {"k8s.io/initial-events-end": "true"}}}});
            added.chain([(now, end)]).collect()
        } else {
            let history = objects.history.iter();
            history.filter(|(v, _)| *v > from).cloned().collect()
        };
    drop(objects);
    let last = past.last().map_or(from, |(v, _)| *v);
    let held = fake.held.subscribe();
    let later = events_of(live)
        .filter(move |(v, _)| futures::future::ready(*v > last))
        .then(move |event| {
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|h| !*h).await;
                event
            }
        });
    let lines = futures::stream::iter(past).chain(later).map(|(_, event)| {
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    Body::from_stream(lines).into_response()
}

fn events_of(rx: broadcast::Receiver<(u64, Value)>) -> impl futures::Stream<Item = (u64, Value)> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.ok().map(|item| (item, rx))
    })
}

async fn create(
    State(fake): State<FakeKube>,
    Path(_ns): Path<String>,
    axum::Json(mut object): axum::Json<Value>,
) -> Response {
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let mut objects = fake.objects.lock().unwrap();
    if objects.by_name.contains_key(&name) {
        return status(409, "AlreadyExists", "already exists");
    }
    object["metadata"]["uid"] = json!(format!("uid-{name}"));
    object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    fake.changed(&mut objects, "ADDED", &mut object);
    objects.by_name.insert(name, object.clone());
    axum::Json(object).into_response()
}

async fn get_one(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match fake.objects.lock().unwrap().by_name.get(&name) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => status(404, "NotFound", "not found"),
    }
}

async fn patch(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let patch: Value = serde_json::from_slice(&body).unwrap();
    let mut objects = fake.objects.lock().unwrap();
    let Some(mut object) = objects.by_name.get(&name).cloned() else {
        return status(404, "NotFound", "not found");
    };
    if let Some(asked) = patch["metadata"]["resourceVersion"].as_str()
        && Some(asked) != object["metadata"]["resourceVersion"].as_str()
    {
        return status(409, "Conflict", "the object has been modified");
    }
    merge(&mut object, &patch);
    fake.changed(&mut objects, "MODIFIED", &mut object);
    objects.by_name.insert(name, object.clone());
    axum::Json(object).into_response()
}

async fn delete(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    let mut objects = fake.objects.lock().unwrap();
    let Some(mut object) = objects.by_name.remove(&name) else {
        return status(404, "NotFound", "not found");
    };
    fake.changed(&mut objects, "DELETED", &mut object);
    axum::Json(object).into_response()
}
