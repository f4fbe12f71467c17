//! `wa8s-modgraph <src dir>…` — prints the `use crate::…` graph among each crate's source
//! files (see `wa8s_e2e::modgraph`) and exits 1 if any has a cycle, naming its modules.
//!
//! `cargo run -p wa8s-e2e --bin wa8s-modgraph -- e2e/src shim/host/src`

use std::path::Path;
use std::process::ExitCode;

use wa8s_e2e::modgraph::{Graph, display};

fn main() -> ExitCode {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        eprintln!("usage: wa8s-modgraph <src dir>…");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for dir in &dirs {
        let graph = match Graph::of_dir(Path::new(dir)) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{dir}: {e}");
                return ExitCode::from(2);
            }
        };
        println!("# {dir}\n{}", graph.render());
        for cycle in graph.cycles() {
            failed = true;
            let names: Vec<String> = cycle.iter().map(|m| display(m)).collect();
            println!(
                "{dir}: these modules import each other in a loop: {}",
                names.join(", ")
            );
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
