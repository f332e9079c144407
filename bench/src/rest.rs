//! The few REST calls the benchmarks make, as any client would.
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::json;

/// The fields of a run object the benchmarks look at.
#[derive(Debug, Deserialize)]
pub struct Run {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub stdout: Option<String>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub struct Usage {
    pub wall_ms: u64,
}

/// A memory limit that no warm pool of the local stack is made of.
pub const COLD_MEMORY_MB: u64 = 384;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// `POST /v1/runs` of a Python program, waiting for it to finish (the API's default),
    /// with the default shape (the one the warm pool is made of, when it has pods free).
    pub async fn run_python(&self, code: &str) -> anyhow::Result<Run> {
        self.run(json!({"language": "python", "code": code, "limits": {"timeout_ms": 10_000}}))
            .await
    }

    /// The same in a shape no pool has (a different memory limit): always the cold path.
    pub async fn run_python_cold(&self, code: &str) -> anyhow::Result<Run> {
        self.run(json!({"language": "python", "code": code,
                        "limits": {"timeout_ms": 10_000, "memory_mb": COLD_MEMORY_MB}}))
            .await
    }

    /// `POST /v1/runs`, the whole run object as answered.
    pub async fn run_full(&self, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}/v1/runs", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .context("POST /v1/runs")?;
        let status = response.status();
        let run: serde_json::Value = response.json().await.context("reading the answer")?;
        if !status.is_success() {
            bail!("POST /v1/runs answered {status}: {run}");
        }
        Ok(run)
    }

    /// Downloads a file's content as it streams; returns its size.
    pub async fn download(&self, file_id: &str) -> anyhow::Result<u64> {
        let mut response = self
            .http
            .get(format!("{}/v1/files/{file_id}/content", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("GET the file's content")?
            .error_for_status()?;
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await? {
            bytes += chunk.len() as u64;
        }
        Ok(bytes)
    }

    pub async fn run(&self, body: serde_json::Value) -> anyhow::Result<Run> {
        let response = self
            .http
            .post(format!("{}/v1/runs", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await
            .context("POST /v1/runs")?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            bail!(
                "POST /v1/runs answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).context("the answer is not a run")
    }

    /// Fails unless the API answers `/readyz` within a few seconds.
    pub async fn ready(&self) -> anyhow::Result<()> {
        if !self.wait_ok("/readyz", Duration::from_secs(10)).await {
            bail!("the API at {} is not ready (run `make up`)", self.base);
        }
        Ok(())
    }

    /// Waits until `path` answers 200, for at most `within`.
    pub async fn wait_ok(&self, path: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let answer = self.http.get(format!("{}{path}", self.base)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

impl Run {
    /// Completed, with exactly this on stdout.
    pub fn check(&self, stdout: &str) -> anyhow::Result<()> {
        if self.status != "completed" || self.stdout.as_deref() != Some(stdout) {
            bail!(
                "run {} ended {} with stdout {:?} (error {:?})",
                self.id,
                self.status,
                self.stdout,
                self.error
            );
        }
        Ok(())
    }
}
