//! `signerd init --dev DIR [--partitions N] [--kryoptic MODULE]`.

use std::path::Path;

use super::{CliError, EXIT_UNAVAILABLE, EXIT_USAGE};
use signerd::dev::{init_dev_on, DevError, DevHsm, DevPorts};

pub fn run(dir: &Path, partitions: usize, ports: DevPorts, hsm: &DevHsm) -> Result<(), CliError> {
    let setup = init_dev_on(dir, partitions, ports, hsm).map_err(|e| match e {
        DevError::NoSoftHsm => CliError::new(EXIT_UNAVAILABLE, e),
        DevError::Inconsistent(_) => CliError::new(EXIT_USAGE, e),
        _ => CliError::new(1, e),
    })?;
    println!("dev set-up in {}", setup.dir.display());
    println!("  module:    {}", setup.module.display());
    for t in &setup.tokens {
        let how = if setup.created.contains(t) {
            "created"
        } else {
            "existing"
        };
        println!("  token:     {t} ({how})");
    }
    let how = if setup.wrote_config {
        "written"
    } else {
        "kept as it was"
    };
    println!("  config:    {} ({how})", setup.config.display());
    println!("  PIN files: {}/pins (mode 0600)", setup.dir.display());
    println!(
        "  dev PKI:   {}/tls (CA, server and client certificates; keys mode 0600)",
        setup.dir.display()
    );
    println!(
        "  clients:   {0}/client.toml (admin), {0}/client-app.toml (app)",
        setup.dir.display()
    );
    println!(
        "For the module's own tools: export {}={}",
        setup.conf_var,
        setup.softhsm2_conf.display()
    );
    Ok(())
}
