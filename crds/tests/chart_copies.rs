//! The chart ships copies of the CRD and of the runner's seccomp profile (Helm reads only
//! files inside the chart): each must be byte for byte the file it copies. `make crd`
//! regenerates the CRD and refreshes both copies.
use std::path::PathBuf;

fn repo() -> PathBuf {
    // Read when the test runs: a build directory may be shared between checkouts.
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    for (file, _) in codeinterp_crds::crds() {
        assert!(
            read(&format!("charts/codeinterp/crds/{file}")) == read(&format!("crds/{file}")),
            "charts/codeinterp/crds/{file} differs from crds/{file}: run `make crd`"
        );
    }
}

#[test]
fn the_charts_seccomp_profile_is_the_policy() {
    assert!(
        read("charts/codeinterp/files/seccomp-runner.json") == read("policies/seccomp/runner.json"),
        "charts/codeinterp/files/seccomp-runner.json differs from policies/seccomp/runner.json: run `make crd`"
    );
}
