//! The checked-in CRD must be exactly what the types generate.
#[test]
fn checked_in_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/coderun.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = codeinterp_crds::crd_yaml();
    assert!(
        checked_in == generated,
        "crds/coderun.yaml is stale: run `cargo run -p codeinterp-crds --bin crdgen > crds/coderun.yaml`"
    );
}
