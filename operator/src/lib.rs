//! The CodeRun operator. A run waits in a fair queue until the cluster has room, gets a
//! locked-down pod (claimed from a warm pool, or created), receives its job over `attach`,
//! and its record is read back as the program writes it, validated, stored in object
//! storage and summed up in the CodeRun's status.
//!
//! The layout: pure decisions ([`decide`] chooses every step, [`reading`] how a record is
//! read and what it comes to, [`admission`], [`outcome`], [`status`], [`pod_spec`]); one
//! [`index`] of what this process knows, behind one lock; one module per step in
//! [`steps`]; the warm [`pool`]s; and the [`runtime`] that owns every task.
#![forbid(unsafe_code)]

pub mod admission;
pub mod artifacts;
pub mod churn;
pub mod config;
pub mod containers;
pub mod context;
pub mod decide;
pub mod events;
pub mod index;
pub mod inputs;
pub mod kube_io;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod outcome;
pub mod placement;
pub mod pod_spec;
pub mod pool;
pub mod projection;
pub mod quota;
pub mod reading;
pub mod results;
pub mod runtime;
pub mod status;
pub mod steps;
pub mod streams;
pub mod tasks;

/// What can go wrong in a reconcile. Each kind is a label of the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("the run changed while it was being updated")]
    Conflict,
    #[error("object storage: {0}")]
    Store(#[from] codeinterp_store::StoreError),
}

impl Error {
    /// Label for the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict => "conflict",
            Error::Store(_) => "store",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict,
            _ => Error::Kube(e),
        }
    }
}

/// Whether the API server refused a request for good (not a conflict, a rate limit or an
/// outage): retrying the same request cannot succeed.
pub fn refused_for_good(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429)
}

/// This process's identity as a label value (at most 63 characters of `[A-Za-z0-9._-]`):
/// what pool pods it holds sessions to are labelled with.
pub fn identity_label(identity: &str) -> String {
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
    let tail: String = clean
        .chars()
        .rev()
        .take(63)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    tail.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_becomes_a_valid_label_value() {
        assert_eq!(
            identity_label("codeinterp-operator-76748dbc4d-6r529"),
            "codeinterp-operator-76748dbc4d-6r529"
        );
        assert_eq!(identity_label("host:1234"), "host-1234");
        let long = format!("{}-tail", "x".repeat(80));
        let v = identity_label(&long);
        assert!(v.len() <= 63 && v.ends_with("-tail"), "{v}");
        assert_eq!(identity_label("-a-"), "a");
    }
}
