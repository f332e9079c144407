//! Prints the CodeRun CRD: `cargo run -p codeinterp-crds --bin crdgen > crds/coderun.yaml`.
fn main() {
    print!("{}", codeinterp_crds::crd_yaml());
}
