//! MCP against REST: the same warm `print(1+1)`, through the MCP endpoint's `run_code` (a
//! `tools/call` over Streamable HTTP, call to result) and through `POST /v1/runs` (request to
//! answer), interleaved so both see the same node, pool and load; which goes first
//! alternates. The MCP client speaks the protocol as any client does over plain HTTP: an
//! `initialize` once, then one POST per call, its answer one JSON-RPC response.
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cluster;
use crate::stats::{self, Summary};
use crate::suite::Env;

const PROGRAM: &str = "print(1+1)";
const PROTOCOL: &str = "2025-06-18";

#[derive(Debug, Serialize)]
pub struct McpReport {
    /// Pairs of runs (one each way).
    pub pairs: usize,
    /// `tools/call` of `run_code` to its result.
    pub mcp: Summary,
    /// `POST /v1/runs` to its answer.
    pub rest: Summary,
    /// MCP's p50 minus REST's.
    pub p50_overhead_ms: Option<f64>,
    pub errors: Vec<String>,
}

/// A client of the MCP endpoint, as thin as the REST benchmark's.
struct McpClient {
    http: reqwest::Client,
    url: String,
    token: String,
    next_id: u64,
}

impl McpClient {
    async fn connect(api_url: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        let url = format!("{}/mcp", api_url.trim_end_matches('/'));
        let mut client = McpClient {
            http,
            url,
            token: token.to_string(),
            next_id: 0,
        };
        let init = json!({
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "codeinterp-bench", "version": "1"}
        });
        client.request("initialize", init).await?;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        client.post(&initialized).await?;
        Ok(client)
    }

    async fn post(&self, body: &Value) -> anyhow::Result<reqwest::Response> {
        self.http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", PROTOCOL)
            .body(serde_json::to_vec(body)?)
            .send()
            .await
            .context("POST /mcp")
    }

    /// One JSON-RPC request and its result.
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let body =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        let response = self.post(&body).await?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            bail!(
                "{method} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let answer: Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
        match answer.get("result") {
            Some(result) => Ok(result.clone()),
            None => bail!("{method} failed: {answer}"),
        }
    }

    /// `run_code` of a Python program; fails unless it printed `2`.
    async fn run_code(&mut self) -> anyhow::Result<()> {
        let arguments = json!({"language": "python", "code": PROGRAM, "timeout_ms": 10_000});
        let result = self
            .request(
                "tools/call",
                json!({"name": "run_code", "arguments": arguments}),
            )
            .await?;
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        if result["isError"] != false || !text.contains("--- stdout ---\n2\n") {
            bail!("run_code did not print 2: {text}");
        }
        Ok(())
    }
}

/// `pairs` runs each way, interleaved, each from a warm pool pod when one is free.
pub async fn run(env: &Env, api_url: &str, token: &str, pairs: usize) -> anyhow::Result<McpReport> {
    env.api.ready().await?;
    let mut client = McpClient::connect(api_url, token).await?;
    let (mut mcp, mut rest, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        for mcp_turn in [i % 2 == 0, i % 2 == 1] {
            let _ = cluster::wait_idle(
                &env.client,
                &env.sandbox_namespace,
                1,
                Duration::from_secs(60),
            )
            .await;
            let started = Instant::now();
            let outcome = if mcp_turn {
                client.run_code().await
            } else {
                env.api
                    .run_python(PROGRAM)
                    .await
                    .and_then(|r| r.check("2\n"))
            };
            let took = stats::ms(started.elapsed());
            match (outcome, mcp_turn) {
                (Ok(()), true) => mcp.push(took),
                (Ok(()), false) => rest.push(took),
                (Err(e), way) => {
                    let way = if way { "mcp" } else { "rest" };
                    errors.push(format!("pair {i} ({way}): {e:#}"));
                }
            }
        }
    }
    let (mcp, rest) = (Summary::of(&mcp), Summary::of(&rest));
    let p50_overhead_ms = mcp.p50_ms.zip(rest.p50_ms).map(|(m, r)| m - r);
    Ok(McpReport {
        pairs,
        mcp,
        rest,
        p50_overhead_ms,
        errors,
    })
}
