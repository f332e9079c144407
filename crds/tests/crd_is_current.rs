//! The checked-in CRDs must be exactly what the types generate.
#[test]
fn checked_in_crds_match_the_types() {
    // Read when the test runs: a build directory may be shared between checkouts.
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    for (file, generated) in codeinterp_crds::crds() {
        let checked_in = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            checked_in == generated,
            "crds/{file} is stale: run `make crd`"
        );
    }
}
