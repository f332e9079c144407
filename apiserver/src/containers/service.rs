//! The container service behind `/v1/containers`: finding a tenant's container (from the
//! CodeContainer cache: a container is the tenant's when its tenant is, as the operator
//! reads it), creating one under the tenant's cap, listing and deleting them, and the
//! checks a run makes before it names one.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codeinterp_crds::{
    CodeContainer, CodeContainerSpec, FileOp, FileOpKind, SHARD_LABEL, TENANT_LABEL,
};
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use tokio::time::Instant;

use super::model::{Container, from_cr, id_of, name_of, new_container_name};
use super::request::ValidContainer;
use crate::error::ApiError;
use crate::runs::request::input_file_name;
use crate::runs::service::MANAGER;
use crate::state::AppState;

/// How long a new (or deleted) CodeContainer may take to reach (or leave) the cache.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);
/// What a client told it has as many containers as it may should wait before trying again.
const FULL_RETRY_SECS: u64 = 60;

/// The message OpenAI gives for a container that has ended.
pub const EXPIRED: &str = "Container is expired.";

/// A container id that names no container of the tenant (`param` names where it was
/// given).
pub fn not_found(id: &str, param: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("No such container: {id}"),
        param: Some(param.to_string()),
    }
}

/// The container has ended: it takes no more runs or files.
pub fn expired(param: &str) -> ApiError {
    ApiError::invalid_with_code(EXPIRED, param.to_string(), "container_expired")
}

/// Whether the container still takes runs and files.
pub fn is_live(c: &CodeContainer) -> bool {
    !c.is_ended() && c.spec.stop != Some(true)
}

/// The tenant's container of this id, unless it is being deleted.
pub fn find(
    state: &AppState,
    tenant: &str,
    id: &str,
    param: &str,
) -> Result<Arc<CodeContainer>, ApiError> {
    name_of(id)
        .and_then(|name| state.containers.get_for(tenant, &name))
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| not_found(id, param))
}

/// The CodeContainer a run of the tenant may name: the tenant's, and not ended.
pub fn for_run(state: &AppState, tenant: &str, name: &str) -> Result<(), ApiError> {
    let id = id_of(name).unwrap_or_else(|| name.to_string());
    let container = find(state, tenant, &id, "container")?;
    if !is_live(&container) {
        return Err(expired("container"));
    }
    Ok(())
}

/// One lock per tenant, held from counting its containers to its new one reaching the
/// cache, so two requests at once cannot both take the last place. Under it, the tenant's
/// containers created but not yet shown by the cache (its watch lagging past
/// [`CACHE_CATCH_UP`]): they count against the cap until the cache has them.
#[derive(Default)]
pub struct CreationLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<Unseen>>>>);

/// Containers created, by name, and when; each counts until the cache shows it, or at most
/// [`UNSEEN_FOR`] (then it is taken to have been deleted before the cache saw it).
type Unseen = Vec<(String, Instant)>;

/// How long a created container the cache has not shown counts against its tenant's cap.
const UNSEEN_FOR: Duration = Duration::from_secs(120);

impl CreationLocks {
    fn of(&self, tenant: &str) -> Arc<tokio::sync::Mutex<Unseen>> {
        // Keys are the configured tenants: the map stays as small as API_KEYS.
        self.0
            .lock()
            .expect("creation locks")
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }
}

/// Creates the tenant's container (with `file_ids` as its first file operations) and waits
/// (briefly) for the cache to know it.
pub async fn create(
    state: &AppState,
    tenant: &str,
    valid: &ValidContainer,
) -> Result<Arc<CodeContainer>, ApiError> {
    let ops = initial_ops(state, tenant, &valid.file_ids).await?;
    let lock = state.container_locks.of(tenant);
    let mut unseen = lock.lock().await;
    unseen.retain(|(name, at)| at.elapsed() < UNSEEN_FOR && state.containers.get(name).is_none());
    check_room(state, tenant, unseen.len())?;
    let created = create_cr(state, tenant, valid, ops).await?;
    let arrived = state
        .containers
        .wait_for_arrival(&created.name_any(), Instant::now() + CACHE_CATCH_UP)
        .await;
    if arrived.is_none() {
        unseen.push((created.name_any(), Instant::now()));
    }
    Ok(arrived.unwrap_or_else(|| Arc::new(created)))
}

/// Refuses a new container while the tenant has as many live ones as it may: those the
/// cache shows and the `unseen` ones it does not show yet.
fn check_room(state: &AppState, tenant: &str, unseen: usize) -> Result<(), ApiError> {
    let live = state.containers.live_for(tenant) + unseen;
    let max = state.settings.max_containers_per_tenant;
    if live < max {
        return Ok(());
    }
    Err(ApiError::QuotaExceeded {
        message: format!(
            "You already have {live} live containers, the most allowed ({max}). Delete one \
             (DELETE /v1/containers/{{id}}) or retry when one has expired."
        ),
        code: "container_limit_reached",
        retry_after_secs: FULL_RETRY_SECS,
    })
}

/// The uploads a new container starts with, as its first file operations: each a file of
/// the tenant, under its name in the folder, all of them fitting the folder.
async fn initial_ops(
    state: &AppState,
    tenant: &str,
    file_ids: &[String],
) -> Result<Vec<FileOp>, ApiError> {
    let mut ops: Vec<FileOp> = Vec::with_capacity(file_ids.len());
    let mut total = 0u64;
    for (i, id) in file_ids.iter().enumerate() {
        let Some(meta) = state.store.get_file_meta(tenant, id).await? else {
            return Err(ApiError::invalid_with_code(
                format!("No such file: {id}"),
                format!("file_ids[{i}]"),
                "file_not_found",
            ));
        };
        let path = input_file_name(&meta.filename);
        if ops.iter().any(|op| op.path == path) {
            return Err(ApiError::invalid(
                format!("two files would both be named {path:?} in the container's folder"),
                format!("file_ids[{i}]"),
            ));
        }
        total += meta.bytes;
        ops.push(FileOp {
            seq: i as u64 + 1,
            kind: FileOpKind::Put,
            path,
            file_id: Some(id.clone()),
        });
    }
    let room = state.settings.container_disk_bytes;
    if total > room {
        return Err(ApiError::invalid_with_code(
            format!(
                "the files together are {total} bytes; a container's folder holds {room} bytes"
            ),
            "file_ids".to_string(),
            "inputs_too_large",
        ));
    }
    Ok(ops)
}

/// The CodeContainer of a new container: labelled with its tenant (and the shard) as the
/// REST API's CodeRuns are, in the same namespace.
pub fn codecontainer(
    name: &str,
    namespace: &str,
    shard: Option<&str>,
    tenant: &str,
    valid: &ValidContainer,
    file_ops: Vec<FileOp>,
) -> CodeContainer {
    let mut c = CodeContainer::new(
        name,
        CodeContainerSpec {
            display_name: Some(valid.name.clone()),
            memory_limit: valid.memory_limit,
            idle_minutes: valid.idle_minutes,
            file_ops,
            stop: None,
        },
    );
    c.metadata.namespace = Some(namespace.to_string());
    let mut labels: BTreeMap<String, String> =
        [(TENANT_LABEL.to_string(), tenant.to_string())].into();
    if let Some(shard) = shard {
        labels.insert(SHARD_LABEL.to_string(), shard.to_string());
    }
    c.metadata.labels = Some(labels);
    c
}

async fn create_cr(
    state: &AppState,
    tenant: &str,
    valid: &ValidContainer,
    ops: Vec<FileOp>,
) -> Result<CodeContainer, ApiError> {
    let api = state.codecontainers();
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let (namespace, shard) = (state.containers.namespace(), state.containers.shard());
    for _ in 0..3 {
        let name = new_container_name();
        let object = codecontainer(&name, namespace, shard, tenant, valid, ops.clone());
        match api.create(&params, &object).await {
            Ok(created) => return Ok(created),
            // 128 random bits taken: draw again.
            Err(kube::Error::Api(s)) if s.is_already_exists() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal(
        "no free container name after 3 tries".into(),
    ))
}

/// The tenant's containers, newest first (or oldest first).
pub fn list(state: &AppState, tenant: &str, newest_first: bool) -> Vec<Container> {
    let mut all: Vec<Container> = state
        .containers
        .of_tenant(tenant)
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| from_cr(c))
        .collect();
    all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    if !newest_first {
        all.reverse();
    }
    all
}

/// Deletes the tenant's container (its pod goes with it) and forgets its folder; answers
/// once the cache no longer shows it, so reading it right after is a 404.
pub async fn delete(state: &AppState, tenant: &str, id: &str) -> Result<(), ApiError> {
    let container = find(state, tenant, id, "container_id")?;
    let name = container.name_any();
    match state
        .codecontainers()
        .delete(&name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => return Err(not_found(id, "container_id")),
        Err(e) => return Err(e.into()),
    }
    state
        .containers
        .wait_until(&name, Instant::now() + CACHE_CATCH_UP, |_| false)
        .await;
    forget_folder(state, tenant, &name).await;
    Ok(())
}

/// The folder's index and the index of its runs go with the container (the files' bytes
/// stay: they are the tenant's files, uploads and runs' outputs; so do the runs). Nothing
/// depends on them: a failure is logged.
async fn forget_folder(state: &AppState, tenant: &str, name: &str) {
    if let Err(e) = state.store.forget_container_runs(tenant, name).await {
        tracing::warn!(container = %name, error = %e, "forgetting a deleted container's runs");
    }
    let files = match state.store.list_container_files(tenant, name).await {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "listing a deleted container's files");
            return;
        }
    };
    for file in files {
        if let Err(e) = state
            .store
            .remove_container_file(tenant, name, &file.path)
            .await
        {
            tracing::warn!(container = %name, error = %e, "forgetting a deleted container's file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::MemoryLimit;

    fn valid() -> ValidContainer {
        ValidContainer {
            name: "sess".into(),
            file_ids: vec![],
            idle_minutes: 5,
            memory_limit: MemoryLimit::FourGig,
        }
    }

    #[test]
    fn a_container_is_labelled_with_its_tenant_and_shard_like_a_run() {
        let c = codecontainer("cntr-ab", "ns", Some("s3-x"), "acme", &valid(), vec![]);
        let labels = c.metadata.labels.clone().unwrap();
        assert_eq!(labels.get(TENANT_LABEL).map(String::as_str), Some("acme"));
        assert_eq!(labels.get(SHARD_LABEL).map(String::as_str), Some("s3-x"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(c.tenant_in("ns"), "acme");
        assert_eq!(
            (c.spec.idle_minutes, c.spec.memory_limit),
            (5, MemoryLimit::FourGig)
        );
        assert_eq!(c.spec.display_name.as_deref(), Some("sess"));
        let unsharded = codecontainer("cntr-ab", "ns", None, "acme", &valid(), vec![]);
        assert!(!unsharded.metadata.labels.unwrap().contains_key(SHARD_LABEL));
    }

    #[test]
    fn a_stopped_or_ended_container_is_not_live() {
        let mut c = codecontainer("cntr-ab", "ns", None, "acme", &valid(), vec![]);
        assert!(is_live(&c));
        c.spec.stop = Some(true);
        assert!(!is_live(&c));
        c.spec.stop = None;
        c.status = Some(codeinterp_crds::CodeContainerStatus {
            phase: Some(codeinterp_crds::ContainerPhase::Expired),
            ..Default::default()
        });
        assert!(!is_live(&c));
        let e = expired("container");
        assert_eq!(e.body().error.message, "Container is expired.");
        assert_eq!(e.body().error.code.as_deref(), Some("container_expired"));
    }
}
