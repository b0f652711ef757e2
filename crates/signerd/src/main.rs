//! `signerd`: parse the command line, set up logging, run one command, map the result to an
//! exit code (64 = bad usage or config).

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// mimalloc instead of glibc malloc: requests allocate on the runtime thread and are freed on
/// HSM worker and audit threads; glibc's per-arena locking and consolidation showed up as
/// ~20% of the runtime thread's samples under load (tuning/RESULTS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are not errors; bad usage exits 64 (EX_USAGE).
            let code = if e.use_stderr() { cli::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGNERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journal gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match args.log_format {
        cli::LogFormat::Human => logs.init(),
        cli::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An empty message: the command already said everything (e.g. a policy denial).
            if !e.message.is_empty() {
                eprintln!("signerd: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
