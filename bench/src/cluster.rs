//! What the benchmarks read from the cluster itself: the operator replica that leads, its
//! metrics (through the API server's pod proxy, as an operator of the cluster would) and its
//! memory, and the size of the warm pools (changed through Helm, as a user would).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use crate::suite::progress;

pub const OPERATOR_NAMESPACE: &str = testkit::OPERATOR_NAMESPACE;
const LEASE: &str = "codeinterp-operator";
const OPERATOR_METRICS_PORT: u16 = 9090;
const RELEASE: &str = "codeinterp";

/// The operator replica holding the lease.
pub async fn leader(client: &Client) -> anyhow::Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    leases
        .get(LEASE)
        .await
        .context("reading the operator's lease")?
        .spec
        .and_then(|s| s.holder_identity)
        .context("no operator holds the lease")
}

/// The leader's `/metrics` text.
pub async fn operator_metrics(client: &Client) -> anyhow::Result<String> {
    let pod = leader(client).await?;
    let path = format!(
        "/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod}:{OPERATOR_METRICS_PORT}/proxy/metrics"
    );
    let request = http::Request::get(path).body(Vec::new())?;
    client
        .request_text(request)
        .await
        .context("scraping the operator's metrics")
}

/// The operator's writes to the Kubernetes API so far, by `purpose verb resource`. The
/// purpose is `run` (on a run's way to its answer: all done by the time its final status is
/// written), `tidy` (removing what finished runs leave), `event`, `pool` (keeping the warm
/// pools full) or `lease` (the leader's heartbeat).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Writes(pub BTreeMap<String, f64>);

impl Writes {
    pub async fn scrape(client: &Client) -> anyhow::Result<Self> {
        Ok(Self::parse(&operator_metrics(client).await?))
    }

    /// From the metrics text:
    /// `codeinterp_operator_kube_writes_total{purpose="..",verb="..",resource=".."} n`.
    pub fn parse(text: &str) -> Self {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("codeinterp_operator_kube_writes_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            if let Ok(v) = value.trim().parse::<f64>() {
                let key = format!(
                    "{} {} {}",
                    label("purpose"),
                    label("verb"),
                    label("resource")
                );
                out.insert(key, v);
            }
        }
        Writes(out)
    }

    /// What was written between `before` and this, leaving out the lease's renewals (the
    /// leader's heartbeat, not the runs' cost).
    pub fn since(&self, before: &Writes) -> Writes {
        Writes(
            self.0
                .iter()
                .filter(|(k, _)| !k.starts_with("lease "))
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    /// The writes of these purposes.
    pub fn of(&self, purposes: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| purposes.iter().any(|p| k.starts_with(&format!("{p} "))))
            .map(|(_, v)| v)
            .sum()
    }

    /// On the way to the answer.
    pub fn before_answer(&self) -> f64 {
        self.of(&["run"])
    }

    /// The run's own, before and after its answer (the pools' refills are not).
    pub fn in_all(&self) -> f64 {
        self.of(&["run", "tidy", "event"])
    }

    /// Each count divided by `n` (per run).
    pub fn per(&self, n: usize) -> Writes {
        let n = n.max(1) as f64;
        Writes(self.0.iter().map(|(k, v)| (k.clone(), v / n)).collect())
    }

    pub fn add(&mut self, other: &Writes) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_insert(0.0) += v;
        }
    }

    /// `2.00 run patch coderuns/status, 1.00 tidy delete pods`, largest first.
    pub fn describe(&self) -> String {
        let mut items: Vec<(&String, &f64)> = self.0.iter().collect();
        items.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        items
            .iter()
            .map(|(k, v)| format!("{v:.2} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The host process of the operator's leader (single-node cluster).
pub async fn leader_pid(client: &Client) -> Option<u32> {
    let pod = leader(client).await.ok()?;
    testkit::pod_process(client, OPERATOR_NAMESPACE, &pod, "operator").await
}

/// Samples the leader's VmRSS every 200 ms and keeps the highest, following the lease if
/// the leader changes.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(client: Client) -> Self {
        let (peak, samples) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (p, s) = (peak.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut pid = None;
            let mut rounds = 0u64;
            loop {
                tick.tick().await;
                if pid.is_none() || rounds.is_multiple_of(25) {
                    pid = leader_pid(&client).await.or(pid);
                }
                rounds += 1;
                if let Some(kib) = pid.and_then(|pid| testkit::proc_status_kib(pid, "VmRSS:")) {
                    p.fetch_max(kib, Ordering::Relaxed);
                    s.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        RssSampler {
            peak,
            samples,
            task,
        }
    }

    /// The peak in MiB (if any sample was taken) and the number of samples.
    pub fn stop(self) -> (Option<f64>, u64) {
        self.task.abort();
        let samples = self.samples.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        ((samples > 0).then_some(peak as f64 / 1024.0), samples)
    }
}

/// Pods of the sandbox namespace's warm pools that are idle, ready and held (claimable).
pub async fn idle_pool_pods(client: &Client, namespace: &str) -> anyhow::Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // Held: the operator has a session open to it, so a run can claim it.
    let selector = format!(
        "{},!{},{}",
        codeinterp_crds::POOL_LABEL,
        codeinterp_crds::RUN_UID_LABEL,
        codeinterp_crds::HELD_LABEL
    );
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
        })
        .count())
}

/// Waits until at least `n` pool pods are idle and ready; how long that took.
pub async fn wait_idle(
    client: &Client,
    namespace: &str,
    n: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        if idle_pool_pods(client, namespace).await? >= n {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("fewer than {n} idle pool pods after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chart's release, changed and restored through Helm.
pub struct Helm {
    pub helm: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Helm {
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(&self.helm)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.helm.display()))?;
        if !out.status.success() {
            bail!(
                "helm {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `helm upgrade --reuse-values --set <values>`, waiting for the rollout.
    fn set(&self, chart: &str, values: &str) -> anyhow::Result<()> {
        self.run(&[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            OPERATOR_NAMESPACE,
            "--reuse-values",
            "--set",
            values,
            "--wait",
            "--timeout",
            "5m",
        ])
    }

    /// A Python warm pool of exactly `size` (its minimum and maximum).
    pub fn set_python_pool(&self, chart: &str, size: usize) -> anyhow::Result<()> {
        progress(&format!("helm: Python warm pool of {size}"));
        self.set(
            chart,
            &format!(
                "warmPools[0].name=python,warmPools[0].language=python,warmPools[0].minReplicas={size},warmPools[0].maxReplicas={size}"
            ),
        )
    }

    /// Room in one tenant's queue for `runs` waiting runs, each allowed to wait `wait_s`
    /// (the chart's defaults, 1,000 runs and 900 s, refuse or time out part of a scale
    /// round: it puts all of its runs in one namespace, so one tenant, on one small node).
    pub fn set_queue(&self, chart: &str, runs: usize, wait_s: u64) -> anyhow::Result<()> {
        progress(&format!(
            "helm: up to {runs} queued runs per tenant, waiting up to {wait_s} s"
        ));
        self.set(
            chart,
            &format!("admission.maxQueuedPerTenant={runs},admission.queueTimeoutSeconds={wait_s}"),
        )
    }

    /// Back to the release as it was before (the previous revision).
    pub fn roll_back(&self) -> anyhow::Result<()> {
        progress("helm: rolling back to the previous revision");
        self.run(&[
            "rollback",
            RELEASE,
            "-n",
            OPERATOR_NAMESPACE,
            "--wait",
            "--timeout",
            "5m",
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_read_from_the_metrics_text_by_purpose_and_the_lease_is_left_out() {
        let w = |purpose: &str, verb: &str, resource: &str, n: u32| {
            format!(
                "codeinterp_operator_kube_writes_total{{purpose=\"{purpose}\",verb=\"{verb}\",resource=\"{resource}\"}} {n}\n"
            )
        };
        let before = Writes::parse(&format!(
            "# HELP x\n{}{}",
            w("run", "patch", "coderuns/status", 3),
            w("lease", "update", "leases", 10)
        ));
        let after = Writes::parse(&format!(
            "{}{}{}{}{}codeinterp_operator_runs_total{{language=\"python\"}} 9\n",
            w("run", "patch", "coderuns/status", 5),
            w("lease", "update", "leases", 12),
            w("tidy", "delete", "pods", 1),
            w("pool", "create", "pods", 1),
            w("event", "create", "events", 2),
        ));
        let d = after.since(&before);
        assert_eq!(d.before_answer(), 2.0);
        assert_eq!(d.in_all(), 5.0);
        assert!(!d.0.contains_key("lease update leases"));
        assert_eq!(
            d.describe(),
            "2.00 event create events, 2.00 run patch coderuns/status, 1.00 pool create pods, 1.00 tidy delete pods"
        );
    }
}
