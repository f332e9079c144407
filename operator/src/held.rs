//! Attach sessions opened ahead of time to idle pool pods, so a claimed pod gets its job the
//! moment it is claimed: the attach handshake (API server, kubelet, runtime) leaves the run's
//! critical path. A session is used at most once, by the run that claims its pod.
//!
//! Runner containers have `stdinOnce`: when a session closes, the pod's stdin closes for
//! good, its wrapper sees no job and exits, and the pool replaces the pod. So a session is
//! never dropped while its pod could still be claimed, except when the pod leaves the pool;
//! and pods another process (an earlier leader) may have held are not trusted to be claimed.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{AttachParams, AttachedProcess, Patch, PatchParams};

use crate::pod_spec::RUNNER_CONTAINER;

enum Slot {
    Opening,
    Open(AttachedProcess),
    /// Taken by a claim in flight: not offered to another run, and no second session is
    /// opened to the pod (it would race the first for its stdin). Dropped once the pod is no
    /// longer idle; a failed claim puts the session back.
    Claiming,
}

/// The sessions held, by pod UID.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashMap<String, Slot>>>);

impl Held {
    /// Opens a session to each of these pods (UID, name) that has none, in the background,
    /// then labels the pod as held by `identity` (through `mark`).
    pub fn open(
        &self,
        api: &Api<Pod>,
        mark: &Api<Pod>,
        identity: &str,
        buffer: usize,
        pods: Vec<(String, String)>,
    ) {
        for (uid, name) in pods {
            {
                let mut slots = self.0.lock().expect("lock");
                if slots.contains_key(&uid) {
                    continue;
                }
                slots.insert(uid.clone(), Slot::Opening);
            }
            let (held, api) = (self.clone(), api.clone());
            let (mark, identity) = (mark.clone(), label_value(identity));
            tokio::spawn(async move {
                let mut opened = api.attach(&name, &params(buffer)).await;
                if opened.is_ok() {
                    // Guarded by the UID: never a pod of the same name made since.
                    let patch = serde_json::json!({
                        "metadata": {"uid": uid, "labels": {codeinterp_crds::HELD_LABEL: identity}}
                    });
                    if let Err(e) = mark
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        opened = Err(e);
                    }
                }
                let mut slots = held.0.lock().expect("lock");
                match opened {
                    // Still wanted (the pod did not leave the pool meanwhile): keep it.
                    Ok(session) if slots.contains_key(&uid) => {
                        slots.insert(uid, Slot::Open(session));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "holding an attach session");
                        slots.remove(&uid);
                    }
                }
            });
        }
    }

    /// Whether a session to the pod is open.
    pub fn is_open(&self, uid: &str) -> bool {
        matches!(self.0.lock().expect("lock").get(uid), Some(Slot::Open(_)))
    }

    /// Takes the pod's open session for a claim (no one else will).
    pub fn take(&self, uid: &str) -> Option<AttachedProcess> {
        let mut slots = self.0.lock().expect("lock");
        let slot = slots.get_mut(uid)?;
        match std::mem::replace(slot, Slot::Claiming) {
            Slot::Open(session) => Some(session),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Gives back a session taken for a claim that failed.
    pub fn put_back(&self, uid: &str, session: AttachedProcess) {
        self.0
            .lock()
            .expect("lock")
            .insert(uid.to_string(), Slot::Open(session));
    }

    /// Closes the sessions of pods no longer idle in a pool (their pods end with them).
    pub fn retain(&self, idle: &HashSet<String>) {
        self.0
            .lock()
            .expect("lock")
            .retain(|uid, _| idle.contains(uid));
    }
}

/// The identity as a label value (at most 63 characters of `[A-Za-z0-9._-]`).
pub fn label_value(identity: &str) -> String {
    let clean: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    clean
        .chars()
        .rev()
        .take(63)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The attach a session is opened with: the job goes in on stdin, the record comes back on
/// stdout.
pub fn params(buffer: usize) -> AttachParams {
    AttachParams::default()
        .container(RUNNER_CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(false)
        .max_stdin_buf_size(buffer)
        .max_stdout_buf_size(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_becomes_a_valid_label_value() {
        assert_eq!(
            label_value("codeinterp-operator-76748dbc4d-6r529"),
            "codeinterp-operator-76748dbc4d-6r529"
        );
        assert_eq!(label_value("host:1234"), "host-1234");
        let long = format!("{}-tail", "x".repeat(80));
        let v = label_value(&long);
        assert!(v.len() <= 63 && v.ends_with("-tail"), "{v}");
        assert_eq!(label_value("-a-"), "a");
    }
}
