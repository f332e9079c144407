use serde::{Deserialize, Serialize};

/// The languages a runner image can serve; each image holds one interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Node,
    Ruby,
    Php,
}

impl Language {
    pub const ALL: [Language; 4] = [
        Language::Python,
        Language::Node,
        Language::Ruby,
        Language::Php,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
            Language::Ruby => "ruby",
            Language::Php => "php",
        }
    }

    /// The file name the program's source is stored under in the inputs Secret.
    pub fn source_file(self) -> &'static str {
        match self {
            Language::Python => "main.py",
            Language::Node => "main.js",
            Language::Ruby => "main.rb",
            Language::Php => "main.php",
        }
    }

    /// The interpreter command line for a source file at `path`.
    pub fn command(self, path: &str) -> Vec<String> {
        let argv: &[&str] = match self {
            // -u: unbuffered, so output written before a kill or timeout is not lost.
            Language::Python => &["python3", "-u"],
            Language::Node => &["node"],
            Language::Ruby => &["ruby"],
            Language::Php => &["php"],
        };
        argv.iter()
            .map(|s| s.to_string())
            .chain([path.to_string()])
            .collect()
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Language::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                format!("unknown language {s:?}; expected one of python, node, ruby, php")
            })
    }
}

/// Limits the wrapper enforces itself. The pod's cgroup limits (memory, CPU quota, pids) and
/// `activeDeadlineSeconds` are set by the operator and back these up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Wall clock, from the moment the program starts.
    pub timeout_ms: u64,
    /// CPU time (RLIMIT_CPU, whole seconds rounded up, plus the wrapper's own check).
    pub cpu_ms: u64,
    /// Per stream: stdout and stderr are each cut after this many bytes.
    pub max_output_bytes: u64,
    /// Output files collected from `/work/outputs`.
    pub max_artifacts: u32,
    pub max_artifact_bytes: u64,
    pub max_artifact_total_bytes: u64,
    /// RLIMIT_FSIZE: no single file the program writes may grow past this.
    pub max_file_bytes: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// Processes (and threads) the program may have at once; the pod's pids limit backs it up.
    pub max_processes: u64,
}

/// An input file: copied from the inputs Secret (key `secret_key`) into `/work/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub name: String,
    pub secret_key: String,
}

/// What the wrapper runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub language: Language,
    /// Inputs Secret key holding the source (see [`Language::source_file`]).
    pub source_key: String,
    /// Inputs Secret key holding stdin, if any.
    #[serde(default)]
    pub stdin_key: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub files: Vec<InputFile>,
    pub limits: JobLimits,
}
