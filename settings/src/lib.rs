//! The settings both binaries take and must agree on: where results live, the namespace of
//! the REST API's runs, the shard, and the ceilings on what a run may ask. Declared once
//! (each binary flattens [`Shared`] into its own settings) and checked once, by clap, as
//! they are parsed: a bad value stops the process with a message naming the setting.
#![forbid(unsafe_code)]

use clap::Args;
use codeinterp_crds::{Maxima, MemoryLimit, SHARD_LABEL};

#[derive(Clone, Debug, Args)]
pub struct Shared {
    /// Where run records and files live: a local directory or an object_store URL
    /// (`s3://bucket/prefix`, with `AWS_*` variables).
    #[arg(
        long,
        env = "STORAGE_URL",
        default_value = "/var/lib/codeinterp/storage"
    )]
    pub storage_url: String,
    /// The namespace where the REST API creates runs: only there is a run's tenant label
    /// honoured (elsewhere a run belongs to its namespace's tenant); the warm pools live
    /// there too.
    #[arg(long, env = "SANDBOX_NAMESPACE", default_value = "codeinterp", value_parser = parse_label_value)]
    pub sandbox_namespace: String,
    /// Serve (and create) only CodeRuns labelled `codeinterp.dev/shard=<this>`; without it,
    /// only those with no shard label.
    #[arg(long, env = "SHARD", value_parser = parse_label_value)]
    pub shard: Option<String>,
    /// Ceiling on a run's `timeout_ms`.
    #[arg(long, env = "MAX_TIMEOUT_MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub max_timeout_ms: u64,
    /// Ceiling on a run's `memory_mb`.
    #[arg(long, env = "MAX_MEMORY_MB", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(32..=8192))]
    pub max_memory_mb: u64,
    /// Most MiB of input files one run may be given (they must also fit its `/work`).
    #[arg(long, env = "MAX_INPUT_MB", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_input_mb: u64,
    /// Most runs of one tenant waiting for room: past it `POST /v1/runs` answers 429
    /// `queue_full`.
    #[arg(long, env = "MAX_QUEUED_PER_TENANT", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queued_per_tenant: u64,
    /// Live containers one tenant may have; past it `POST /v1/containers` answers 429.
    #[arg(long, env = "MAX_CONTAINERS_PER_TENANT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub max_containers_per_tenant: u64,
    /// The largest memory limit a container may have (`1g`, `4g`, `16g` or `64g`); a larger
    /// one is refused.
    #[arg(long, env = "CONTAINER_MAX_MEMORY", default_value = "4g", value_parser = parse_memory_limit)]
    pub container_max_memory: MemoryLimit,
    /// Size of a container's folder (`/mnt/data`, a memory-backed volume counted in its pod's
    /// memory): a file that would not fit is refused.
    #[arg(long, env = "CONTAINER_DISK_MB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(16..=65_536))]
    pub container_disk_mb: u64,
    /// The most one tenant may keep in storage, in MiB: its files (uploads and output files)
    /// and its runs' records and output. Past it an upload is refused (413), a new run too
    /// (429), and a run's output files are not kept. 0: no quota.
    #[arg(long, env = "STORAGE_QUOTA_MB", default_value_t = 10_240)]
    pub storage_quota_mb: u64,
}

fn parse_memory_limit(value: &str) -> Result<MemoryLimit, String> {
    value.parse()
}

impl Shared {
    pub fn maxima(&self) -> Maxima {
        Maxima::with_ceilings(self.max_timeout_ms, self.max_memory_mb, self.max_input_mb)
    }

    /// The label selector of the CodeRuns this shard serves.
    pub fn shard_selector(&self) -> String {
        match &self.shard {
            Some(shard) => format!("{SHARD_LABEL}={shard}"),
            None => format!("!{SHARD_LABEL}"),
        }
    }

    /// [`Shared::storage_quota_mb`] in bytes; `None` for no quota.
    pub fn storage_quota_bytes(&self) -> Option<u64> {
        (self.storage_quota_mb > 0).then(|| self.storage_quota_mb.saturating_mul(1024 * 1024))
    }

    pub fn max_queued_per_tenant(&self) -> usize {
        usize::try_from(self.max_queued_per_tenant).unwrap_or(usize::MAX)
    }
}

/// A Kubernetes label value (and so also a namespace name when lower-case): at most 63
/// characters, alphanumerics with `-`, `_` and `.` inside.
pub fn parse_label_value(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(inner);
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a label value: 1 to 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Both {
        #[command(flatten)]
        shared: Shared,
    }

    fn parse(args: &[&str]) -> Result<Shared, String> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Both::try_parse_from(all)
            .map(|b| b.shared)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_valid_and_select_unsharded_runs() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.shard_selector(), "!codeinterp.dev/shard");
        assert_eq!(s.maxima().max_input_bytes, 100 << 20);
        assert_eq!(s.storage_quota_bytes(), Some(10 << 30));
        let none = parse(&["--storage-quota-mb", "0"]).unwrap();
        assert_eq!(none.storage_quota_bytes(), None);
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_setting() {
        for (args, name) in [
            (&["--max-timeout-ms", "0"][..], "MAX_TIMEOUT_MS"),
            (&["--max-memory-mb", "100000"], "MAX_MEMORY_MB"),
            (&["--max-input-mb", "0"], "MAX_INPUT_MB"),
            (&["--max-queued-per-tenant", "0"], "MAX_QUEUED_PER_TENANT"),
            (&["--shard=-bad-"], "SHARD"),
            (&["--sandbox-namespace", ""], "SANDBOX_NAMESPACE"),
            (&["--container-max-memory", "2g"], "CONTAINER_MAX_MEMORY"),
            (&["--container-disk-mb", "1"], "CONTAINER_DISK_MB"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(name), "{args:?}: {e}");
        }
        assert_eq!(
            parse(&["--shard", "s3-x"]).unwrap().shard_selector(),
            "codeinterp.dev/shard=s3-x"
        );
    }
}
