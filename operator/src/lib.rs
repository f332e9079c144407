//! The CodeRun operator: CodeRun -> NetworkPolicy, inputs Secret and a locked-down Pod;
//! the pod's record -> object storage and the CodeRun's status.
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod outcome;
pub mod pod_spec;
pub mod reconcile;
pub mod results;
pub mod run;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("object storage: {0}")]
    Store(#[from] codeinterp_store::StoreError),
    #[error("reading the runner log: {0}")]
    Log(String),
}

impl Error {
    /// Label for the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Store(_) => "store",
            Error::Log(_) => "log",
        }
    }
}
