use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_protocol::Language;

/// Where the wrapper finds things. The defaults are the runner image's layout; the variables
/// exist so the wrapper can be tested on a host (the operator's pod spec never sets them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the wrapper writes the program's source and stdin (`CI_RUNNER_JOB_DIR`).
    pub job_dir: PathBuf,
    /// The program's working directory; outputs are collected from its `outputs` folder
    /// (`CI_RUNNER_WORK_DIR`).
    pub work_dir: PathBuf,
    /// `PATH` of the program, also where its interpreter is looked up (`CI_RUNNER_PATH`).
    pub program_path: String,
    /// The container's cgroup, read for peak memory and OOM kills (`CI_RUNNER_CGROUP_DIR`).
    /// By default only used as PID 1: anywhere else `/sys/fs/cgroup` would be someone else's.
    pub cgroup: Option<PathBuf>,
    /// Files the image wants in the program's `/tmp` (which is an empty volume at run time),
    /// such as matplotlib's prebuilt font cache.
    pub tmp_seed: PathBuf,
    /// PID 1 of the container's PID namespace: everything else in it can be killed at once.
    pub is_pid1: bool,
    /// Start a kernel before the job (`CI_RUNNER_KERNEL`); `None`: a fresh interpreter per
    /// job, as always.
    pub kernel: Option<KernelSettings>,
    /// Serve a container's operations instead of running one job (`CI_RUNNER_MODE=container`).
    pub container: Option<ContainerSettings>,
}

/// A container: a long-lived server of the operations of [`runner_protocol::Op`], whose
/// programs run in one interpreter per language that keeps its state between runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSettings {
    /// The container's files, the programs' working folder (`CI_RUNNER_DATA_DIR`, by default
    /// [`runner_protocol::CONTAINER_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// Where the kernel drivers are (`CI_RUNNER_KERNELS_DIR`).
    pub kernels_dir: PathBuf,
    /// What the Python interpreter imports when it starts (`CI_RUNNER_PRELOAD`,
    /// comma-separated; unset: nothing). The other languages load nothing ahead.
    pub python_preload: Vec<String>,
    /// How long a run waits for its language's interpreter to start and preload
    /// (`CI_RUNNER_KERNEL_READY_MS`) before it fails.
    pub ready_timeout: Duration,
}

/// The one-shot kernel of a pool pod: an interpreter started before the job, with modules
/// already imported, that the job's program runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSettings {
    /// `CI_RUNNER_KERNEL=python|node|ruby|php`; `None` (`CI_RUNNER_KERNEL=1`): the language
    /// whose kernel the image has.
    pub language: Option<Language>,
    /// `CI_RUNNER_PRELOAD`, comma-separated; `None` (unset): the language's default.
    pub preload: Option<Vec<String>>,
    /// Where the kernel drivers are, one folder per language (`CI_RUNNER_KERNELS_DIR`).
    pub kernels_dir: PathBuf,
    /// How long a job waits for a kernel still preloading before it gets a fresh interpreter
    /// instead (`CI_RUNNER_KERNEL_READY_MS`).
    pub ready_timeout: Duration,
}

pub const PROGRAM_TMP: &str = "/tmp";
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const TMP_SEED: &str = "/usr/local/share/ci-runner/tmp-seed";
const KERNELS_DIR: &str = "/usr/local/share/ci-runner/kernels";
const KERNEL_READY_MS: u64 = 10_000;
/// A container's run waits this long for its interpreter: failing it would not make the next
/// start any faster.
const CONTAINER_KERNEL_READY_MS: u64 = 60_000;

impl Settings {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let is_pid1 = std::process::id() == 1;
        Settings {
            job_dir: var("CI_RUNNER_JOB_DIR")
                .map_or_else(|| runner_protocol::JOB_DIR.into(), PathBuf::from),
            work_dir: var("CI_RUNNER_WORK_DIR")
                .map_or_else(|| runner_protocol::WORK_DIR.into(), PathBuf::from),
            program_path: var("CI_RUNNER_PATH")
                .and_then(|v| v.into_string().ok())
                .unwrap_or_else(|| DEFAULT_PATH.into()),
            cgroup: var("CI_RUNNER_CGROUP_DIR")
                .map(PathBuf::from)
                .or_else(|| is_pid1.then(|| "/sys/fs/cgroup".into())),
            tmp_seed: TMP_SEED.into(),
            is_pid1,
            kernel: KernelSettings::from_vars(|name| std::env::var(name).ok()),
            container: ContainerSettings::from_vars(|name| std::env::var(name).ok()),
        }
    }
}

impl ContainerSettings {
    /// Reads the container's variables through `var`; `None` unless `CI_RUNNER_MODE` is
    /// `container`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if var("CI_RUNNER_MODE")?.trim() != "container" {
            return None;
        }
        Some(ContainerSettings {
            data_dir: var("CI_RUNNER_DATA_DIR")
                .map_or_else(|| runner_protocol::CONTAINER_DATA_DIR.into(), PathBuf::from),
            kernels_dir: var("CI_RUNNER_KERNELS_DIR")
                .map_or_else(|| KERNELS_DIR.into(), PathBuf::from),
            python_preload: var("CI_RUNNER_PRELOAD")
                .map(|list| split_list(&list))
                .unwrap_or_default(),
            ready_timeout: Duration::from_millis(
                var("CI_RUNNER_KERNEL_READY_MS")
                    .and_then(|ms| ms.trim().parse().ok())
                    .unwrap_or(CONTAINER_KERNEL_READY_MS),
            ),
        })
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect()
}

impl KernelSettings {
    /// Reads the kernel's variables through `var`; `None` when `CI_RUNNER_KERNEL` is unset,
    /// empty, `0`, `false` or `off`, or names no language (said on stderr).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let language = match var("CI_RUNNER_KERNEL")?
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "0" | "false" | "off" | "no" => return None,
            "1" | "true" | "on" | "yes" => None,
            name => match name.parse() {
                Ok(language) => Some(language),
                Err(err) => {
                    eprintln!("ci-runner: CI_RUNNER_KERNEL: {err}; no kernel");
                    return None;
                }
            },
        };
        let preload = var("CI_RUNNER_PRELOAD").map(|list| split_list(&list));
        let ready_ms = var("CI_RUNNER_KERNEL_READY_MS")
            .and_then(|ms| ms.trim().parse().ok())
            .unwrap_or(KERNEL_READY_MS);
        Some(KernelSettings {
            language,
            preload,
            kernels_dir: var("CI_RUNNER_KERNELS_DIR")
                .filter(|dir| !dir.is_empty())
                .map_or_else(|| KERNELS_DIR.into(), PathBuf::from),
            ready_timeout: Duration::from_millis(ready_ms),
        })
    }

    /// The kernel's language: the one named, or the only one whose driver the image has.
    pub fn language(&self) -> Result<Language, String> {
        if let Some(language) = self.language {
            return Ok(language);
        }
        let present: Vec<Language> = Language::ALL
            .into_iter()
            .filter(|l| Path::new(&self.kernels_dir).join(l.as_str()).is_dir())
            .collect();
        match present[..] {
            [language] => Ok(language),
            _ => Err(format!(
                "{} holds {} kernels, not one: set CI_RUNNER_KERNEL to a language",
                self.kernels_dir.display(),
                present.len()
            )),
        }
    }

    /// What the kernel imports before the job: the list given, or the language's default.
    pub fn preload(&self, language: Language) -> Vec<String> {
        self.preload
            .clone()
            .unwrap_or_else(|| default_preload(language))
    }
}

/// Python's data stack, which the image ships and most code-interpreter programs import; the
/// other languages have nothing worth importing ahead (their kernels save the start).
pub fn default_preload(language: Language) -> Vec<String> {
    match language {
        Language::Python => ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"]
            .map(String::from)
            .to_vec(),
        Language::Node | Language::Ruby | Language::Php => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn no_kernel_unless_the_pod_asks_for_one() {
        for off in [None, Some(""), Some("0"), Some("off"), Some("cobol")] {
            let set: Vec<(&str, &str)> = off.map(|v| ("CI_RUNNER_KERNEL", v)).into_iter().collect();
            assert_eq!(KernelSettings::from_vars(vars(&set)), None, "{off:?}");
        }
    }

    #[test]
    fn a_kernel_with_its_language_preload_and_wait() {
        let k = KernelSettings::from_vars(vars(&[
            ("CI_RUNNER_KERNEL", "Ruby"),
            ("CI_RUNNER_PRELOAD", " json, ,set "),
            ("CI_RUNNER_KERNEL_READY_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(k.language(), Ok(Language::Ruby));
        assert_eq!(k.preload(Language::Ruby), ["json", "set"]);
        assert_eq!(k.ready_timeout, Duration::from_millis(250));
        assert_eq!(k.kernels_dir, Path::new(KERNELS_DIR));
    }

    #[test]
    fn the_default_preload_is_the_python_data_stack_and_empty_means_none() {
        let k = KernelSettings::from_vars(vars(&[("CI_RUNNER_KERNEL", "1")])).unwrap();
        assert_eq!(k.language, None);
        assert_eq!(
            k.preload(Language::Python),
            ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"]
        );
        assert!(k.preload(Language::Node).is_empty());
        let none = KernelSettings::from_vars(vars(&[
            ("CI_RUNNER_KERNEL", "1"),
            ("CI_RUNNER_PRELOAD", ""),
        ]))
        .unwrap();
        assert!(none.preload(Language::Python).is_empty());
    }

    #[test]
    fn a_container_only_when_the_pod_says_so_with_nothing_preloaded_by_default() {
        assert_eq!(ContainerSettings::from_vars(vars(&[])), None);
        let one_shot = vars(&[("CI_RUNNER_MODE", "job")]);
        assert_eq!(ContainerSettings::from_vars(one_shot), None);
        let c = ContainerSettings::from_vars(vars(&[("CI_RUNNER_MODE", "container")])).unwrap();
        assert_eq!(c.data_dir, Path::new("/mnt/data"));
        assert!(c.python_preload.is_empty());
        assert_eq!(c.ready_timeout, Duration::from_secs(60));
        let c = ContainerSettings::from_vars(vars(&[
            ("CI_RUNNER_MODE", "container"),
            ("CI_RUNNER_DATA_DIR", "/tmp/d"),
            ("CI_RUNNER_PRELOAD", "numpy, pandas"),
        ]))
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/tmp/d"));
        assert_eq!(c.python_preload, ["numpy", "pandas"]);
    }

    #[test]
    fn a_kernel_of_the_only_language_the_image_has() {
        let dir = tempfile::tempdir().unwrap();
        let k = KernelSettings::from_vars(vars(&[
            ("CI_RUNNER_KERNEL", "1"),
            ("CI_RUNNER_KERNELS_DIR", dir.path().to_str().unwrap()),
        ]))
        .unwrap();
        assert!(k.language().is_err());
        std::fs::create_dir(dir.path().join("php")).unwrap();
        assert_eq!(k.language(), Ok(Language::Php));
        std::fs::create_dir(dir.path().join("node")).unwrap();
        assert!(k.language().is_err());
    }
}
