//! `loadgen`: the load generator for signerd. Its commands arrive with the loadgen issue; until
//! then it prints its usage.

use clap::Parser;

/// Load generator for signerd (open-loop rate, closed-loop concurrency, find-max, raw PKCS#11
/// ceiling). Not implemented yet: this build only prints its usage.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "loadgen: the load generator for signerd.\n\n\
         Planned commands (see docs and DESIGN.md §7):\n  \
         loadgen run --client FILE --key NAME (--rate R | --concurrency C) --duration D\n  \
         loadgen find-max --client FILE --key NAME --slo-p95 100ms\n  \
         loadgen ceiling --config FILE --key NAME --threads N --duration D\n\n\
         Not implemented in this build."
    );
}
