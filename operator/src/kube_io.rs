//! The operator's writes to the Kubernetes API that more than one step makes: the clients
//! (each counting its writes under a purpose), deleting an object by UID, writing a run's
//! status, and the namespace's deny-all policy.
use anyhow::Context as _;
use codeinterp_crds::{CodeRun, CodeRunStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::metrics::Metrics;
use crate::pod_spec;
use crate::status::{self, MANAGER};

/// One client per purpose, so the API cost of a run can be told apart from clean-up, pool
/// and event writes (`codeinterp_operator_kube_writes_total{purpose}`).
#[derive(Clone)]
pub struct Clients {
    /// What a run needs on its way to its answer.
    pub run: Client,
    /// Removing what finished runs leave (their pods, expired runs).
    pub tidy: Client,
    /// Creating and removing warm pool pods (claims go through `run`).
    pub pool: Client,
}

impl Clients {
    /// The same client for every purpose (tests).
    pub fn single(client: Client) -> Self {
        Clients {
            run: client.clone(),
            tidy: client.clone(),
            pool: client,
        }
    }
}

/// A client whose every write is counted under `purpose` (and its verb and resource).
pub fn counted_client(
    config: &kube::Config,
    metrics: &Metrics,
    purpose: &'static str,
) -> anyhow::Result<Client> {
    let counted = metrics.clone();
    let counting =
        tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            counted.count_request(purpose, req.method(), req.uri().path());
            req
        });
    Ok(kube::client::ClientBuilder::try_from(config.clone())
        .context("connecting to the Kubernetes API")?
        .with_layer(&counting)
        .build())
}

/// Deletes the object `name` only if it is still the one with `uid` (an object of the same
/// name made since is never touched). Gone already, or replaced: nothing to do.
pub async fn delete_by_uid<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
    grace_seconds: Option<u32>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        grace_period_seconds: grace_seconds,
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a status built from the run's current one, reading the run again when it changed
/// in between (a conflict). A run that reached a final phase meanwhile is left as it is, and
/// phases only move forward. Returns the run as it is after, and whether this call wrote.
pub async fn update_status(
    api: &Api<CodeRun>,
    run: &CodeRun,
    build: impl Fn(CodeRunStatus) -> CodeRunStatus,
) -> Result<(CodeRun, bool), Error> {
    let mut current = run.clone();
    for _ in 0..5 {
        if current.is_finished() {
            return Ok((current, false));
        }
        let status = build(current.status.clone().unwrap_or_default());
        if let (Some(from), Some(to)) = (current.phase(), status.phase)
            && !from.may_become(to)
        {
            return Ok((current, false));
        }
        match status::write(api, &current, &status).await {
            Ok(updated) => return Ok((updated, true)),
            Err(Error::Conflict) => match api.get_opt(&current.name_any()).await? {
                Some(latest) if latest.uid() == run.uid() => current = latest,
                _ => return Ok((current, false)),
            },
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict)
}

/// Applies the namespace's deny-all policy if it is missing or differs.
pub async fn apply_deny_all(client: &Client, ns: &str) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let want = pod_spec::deny_all_policy(ns);
    let have = api.get_opt(pod_spec::DENY_ALL_POLICY).await?;
    if !have.is_some_and(|p| p.spec == want.spec) {
        api.patch(
            pod_spec::DENY_ALL_POLICY,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&want),
        )
        .await?;
    }
    Ok(())
}
