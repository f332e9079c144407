use std::path::PathBuf;

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
}

pub const PROGRAM_TMP: &str = "/tmp";
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const TMP_SEED: &str = "/usr/local/share/ci-runner/tmp-seed";

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
        }
    }
}
