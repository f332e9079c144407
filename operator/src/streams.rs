//! The two streams the operator has to a runner pod, both through the API server: `attach`
//! (the job in on stdin, the record out on stdout) and the container log (the record again,
//! after a restart). Behind a trait so the steps that use them are tested with scripted
//! streams, without a cluster.
use std::any::Any;
use std::pin::Pin;

use futures::future::BoxFuture;
use futures::io::AsyncRead;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{AttachParams, LogParams};
use runner_protocol::{MAX_RECORD_BYTES, RUNNER_CONTAINER};
use tokio::io::AsyncWrite;
use tokio_util::compat::TokioAsyncReadCompatExt;

/// Buffer of the attach stream, each way.
pub const STREAM_BUFFER: usize = 64 * 1024;

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// An open attach session: the pod's stdin and stdout. The session lasts as long as this
/// value (a runner container's stdin closes for good with its first session).
pub struct Attached {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    _session: Option<Box<dyn Any + Send>>,
}

impl Attached {
    pub fn new(stdin: Writer, stdout: Reader, session: Box<dyn Any + Send>) -> Self {
        Attached {
            stdin: Some(stdin),
            stdout: Some(stdout),
            _session: Some(session),
        }
    }

    /// A session with nothing behind it (tests of what holds sessions).
    pub fn closed() -> Self {
        Attached {
            stdin: None,
            stdout: None,
            _session: None,
        }
    }
}

pub trait PodStreams: Send + Sync {
    /// Attaches to the runner container of `pod`.
    fn attach(&self, ns: &str, pod: &str) -> BoxFuture<'static, Result<Attached, kube::Error>>;
    /// The runner container's log from its start (at most [`MAX_RECORD_BYTES`]), followed
    /// while the container runs when `follow`.
    fn log(
        &self,
        ns: &str,
        pod: &str,
        follow: bool,
    ) -> BoxFuture<'static, Result<Reader, kube::Error>>;
}

/// The real streams, through the Kubernetes API.
pub struct KubeStreams(pub kube::Client);

impl PodStreams for KubeStreams {
    fn attach(&self, ns: &str, pod: &str) -> BoxFuture<'static, Result<Attached, kube::Error>> {
        let api: Api<Pod> = Api::namespaced(self.0.clone(), ns);
        let pod = pod.to_string();
        Box::pin(async move {
            let mut session = api.attach(&pod, &attach_params()).await?;
            let (Some(stdin), Some(stdout)) = (session.stdin(), session.stdout()) else {
                return Err(kube::Error::Service(
                    "the attach session has no stdin or stdout".into(),
                ));
            };
            Ok(Attached::new(
                Box::pin(stdin),
                Box::pin(stdout.compat()),
                Box::new(session),
            ))
        })
    }

    fn log(
        &self,
        ns: &str,
        pod: &str,
        follow: bool,
    ) -> BoxFuture<'static, Result<Reader, kube::Error>> {
        let api: Api<Pod> = Api::namespaced(self.0.clone(), ns);
        let pod = pod.to_string();
        Box::pin(async move {
            let params = LogParams {
                container: Some(RUNNER_CONTAINER.to_string()),
                follow,
                limit_bytes: Some(MAX_RECORD_BYTES as i64),
                ..Default::default()
            };
            let stream = api.log_stream(&pod, &params).await?;
            let reader: Reader = Box::pin(stream);
            Ok(reader)
        })
    }
}

/// The attach a session is opened with: the job goes in on stdin, the record comes back on
/// stdout.
pub fn attach_params() -> AttachParams {
    AttachParams::default()
        .container(RUNNER_CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(false)
        .max_stdin_buf_size(STREAM_BUFFER)
        .max_stdout_buf_size(STREAM_BUFFER)
}
