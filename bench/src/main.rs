//! `make bench`: benchmarks of the running stack, each figure beside a baseline measured in
//! the same run. Prints one table and writes the same figures as JSON.
#![forbid(unsafe_code)]

mod apiserver_load;
mod cluster;
mod config;
mod containers;
mod latency;
mod lists;
mod mcp;
mod pool;
mod preload;
mod raw_pod;
mod report;
mod rest;
mod scale;
mod sim;
mod stats;
mod stream;
mod suite;
mod throughput;
mod transitions;
mod wrapper;
mod wrk;

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = config::Args::parse();
    let report = suite::run(&args).await;
    println!("{}", report::render(&report.table));
    println!();
    println!("notes:");
    for note in &report.notes {
        println!("  - {note}");
    }
    match suite::write(&report, &args.out_dir) {
        Ok((latest, copy)) => {
            println!("  - JSON: {} (copy: {})", latest.display(), copy.display())
        }
        Err(e) => println!("  - JSON not written: {e:#}"),
    }
    println!("  - took {:.0} s", report.duration_s);
}
