//! Writes every CRD into each folder given: `cargo run -p codeinterp-crds --bin crdgen --
//! crds charts/codeinterp/crds`.
fn main() -> std::io::Result<()> {
    let folders: Vec<String> = std::env::args().skip(1).collect();
    if folders.is_empty() {
        eprintln!("usage: crdgen FOLDER...");
        std::process::exit(2);
    }
    for folder in folders {
        for (file, yaml) in codeinterp_crds::crds() {
            std::fs::write(std::path::Path::new(&folder).join(file), yaml)?;
        }
    }
    Ok(())
}
