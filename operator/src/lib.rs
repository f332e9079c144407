//! The CodeRun operator. A run waits in a fair queue until the cluster has room, gets a
//! locked-down pod (claimed from a warm pool, or created), receives its job over `attach`,
//! and its record is read back as the program writes it, validated, stored in object
//! storage and summed up in the CodeRun's status.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod context;
pub mod decide;
pub mod held;
pub mod inputs;
pub mod leader;
pub mod metrics;
pub mod outcome;
pub mod pod_spec;
pub mod pool;
pub mod reconcile;
pub mod results;
pub mod run;
pub mod session;
pub mod status;

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
