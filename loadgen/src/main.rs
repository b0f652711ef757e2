//! `loadgen`: the load generator for signerd. Open-loop constant rate with coordinated-omission
//! corrected latency, closed-loop concurrency, rate schedules, find-max, and the raw PKCS#11
//! ceiling for comparison in the same run.

mod cli;
mod flood;
mod plot;
mod report;
mod run;
mod verify;

/// Same allocator as the daemon (cheaper small allocations per request).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
