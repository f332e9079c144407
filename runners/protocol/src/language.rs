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

    /// The file name the wrapper writes the program's source to, in the job folder.
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
