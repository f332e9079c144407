//! The checked-in CRD must be exactly what the types generate.
#[test]
fn checked_in_crd_matches_the_types() {
    // Read when the test runs: a build directory may be shared between checkouts.
    let path =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("coderun.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = codeinterp_crds::crd_yaml();
    assert!(
        checked_in == generated,
        "crds/coderun.yaml is stale: run `cargo run -p codeinterp-crds --bin crdgen > crds/coderun.yaml`"
    );
}
