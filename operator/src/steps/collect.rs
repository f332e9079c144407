//! What finished runs leave: their pods go (after a pause in starts, so a burst does not
//! share the node with pod churn), and after its TTL the run itself (its record stays in
//! object storage).
use std::sync::Arc;

use codeinterp_crds::CodeRun;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;
use tokio::time::Duration;

use crate::Error;
use crate::churn::Churn;
use crate::context::Context;
use crate::index::Index;
use crate::kube_io::delete_by_uid;

/// Pods removed at once when the pause comes.
const REMOVALS_AT_ONCE: usize = 8;

pub async fn collect(
    ctx: &Arc<Context>,
    run: &CodeRun,
    pod: Option<&Pod>,
    delete_run: bool,
    recheck_in: Duration,
) -> Result<Action, Error> {
    if let Some(pod) = pod {
        ctx.tidy.remove(&ctx.index, pod);
    }
    ctx.forget(&run.uid().unwrap_or_default());
    if !delete_run {
        return Ok(Action::requeue(recheck_in));
    }
    tracing::info!("deleting finished run after its TTL; its record stays in object storage");
    let api: Api<CodeRun> =
        Api::namespaced(ctx.api.tidy.clone(), &run.namespace().unwrap_or_default());
    delete_by_uid(&api, &run.name_any(), run.uid(), None).await?;
    Ok(Action::await_change())
}

/// The pods to remove, in the order they were given.
#[derive(Clone)]
pub struct Tidy(mpsc::UnboundedSender<Pod>);

pub struct TidyQueue(mpsc::UnboundedReceiver<Pod>);

pub fn tidy() -> (Tidy, TidyQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Tidy(tx), TidyQueue(rx))
}

impl Tidy {
    /// Removes the pod soon: only the pod that was checked to be the run's (by its UID, so a
    /// pod of the same name made since is never touched), and only once.
    pub fn remove(&self, index: &Index, pod: &Pod) {
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        if pod.uid().is_some_and(|uid| !index.removing(&uid)) {
            return;
        }
        let _ = self.0.send(pod.clone());
    }
}

impl TidyQueue {
    /// Removes pods as they come, each batch after a pause in starts.
    pub async fn run(mut self, client: kube::Client, churn: Churn) {
        let mut batch = Vec::new();
        while self.0.recv_many(&mut batch, 256).await > 0 {
            churn.quiet().await;
            while let Ok(pod) = self.0.try_recv() {
                batch.push(pod);
            }
            let removals = batch.drain(..).map(|pod| {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                async move {
                    if let Err(e) = delete_by_uid(&api, &pod.name_any(), pod.uid(), Some(0)).await {
                        tracing::warn!(pod = %pod.name_any(), error = %e, "removing a runner pod");
                    }
                }
            });
            futures::stream::iter(removals)
                .buffer_unordered(REMOVALS_AT_ONCE)
                .collect::<()>()
                .await;
        }
    }
}
