//! The README's table of reason codes and its diagram of a run's phases are the code's: a
//! code, phase or meaning changed in one place and not the other fails here.
use std::collections::BTreeSet;

use codeinterp_crds::{Phase, Reason};

fn readme() -> String {
    // The path is read when the test runs (a build directory may be shared between checkouts).
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    std::fs::read_to_string(std::path::Path::new(&dir).join("../README.md")).unwrap()
}

#[test]
fn the_readme_lists_every_reason_code_with_its_phase_and_meaning() {
    let readme = readme();
    let section = readme
        .split("### Reason codes")
        .nth(1)
        .expect("a Reason codes section")
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<(String, String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (
                cells[0].trim_matches('`').to_string(),
                cells[1].to_string(),
                cells[2].to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = Reason::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_string(),
                r.phase().as_str().to_string(),
                r.meaning().to_string(),
            )
        })
        .collect();
    assert_eq!(rows, want);
}

#[test]
fn the_readme_diagram_shows_exactly_the_phase_transitions_the_code_allows() {
    let readme = readme();
    let diagram = readme
        .split("```mermaid")
        .nth(1)
        .expect("a mermaid diagram")
        .split("```")
        .next()
        .unwrap();
    let edges: BTreeSet<(String, String)> = diagram
        .lines()
        .filter_map(|l| l.trim().split_once(" --> "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut want = BTreeSet::from([("[*]".to_string(), Phase::Queued.as_str().to_string())]);
    for p in Phase::ALL {
        for next in p.successors() {
            want.insert((p.as_str().to_string(), next.as_str().to_string()));
        }
        if p.is_terminal() {
            assert!(p.successors().is_empty());
            want.insert((p.as_str().to_string(), "[*]".to_string()));
        }
    }
    assert_eq!(edges, want);
}
