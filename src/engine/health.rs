//! Partition health: one thread per partition probes it about once a second and moves it in
//! and out of rotation. One thread each, so that a hung device stalls only its own probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::sync::{Parker, Unparker};

use crate::hsm::{ErrorClass, Partition};

/// How often each partition is probed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the probe threads (detached: a probe stuck in a hung device must not block
/// shutdown; they exit at the next tick after `stop`). Returns their wake-up handles.
pub(super) fn spawn_probes(
    partitions: &[Arc<Partition>],
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<Unparker>> {
    let mut wakers = Vec::new();
    for p in partitions {
        let parker = Parker::new();
        wakers.push(parker.unparker().clone());
        let (p, stop) = (Arc::clone(p), Arc::clone(stop));
        std::thread::Builder::new()
            .name(format!("signer-health-{}", p.name()))
            .spawn(move || probe_loop(&p, &stop, &parker))?;
    }
    Ok(wakers)
}

/// Probes one partition until `stop`. Workers take a partition out at once on device errors
/// (and the watchdog on a hung call); only a successful probe brings it back.
fn probe_loop(p: &Partition, stop: &AtomicBool, parker: &Parker) {
    while !stop.load(Ordering::SeqCst) {
        match p.probe() {
            Ok(()) if !p.hang_suspected() => p.mark_healthy(),
            Ok(()) => {}
            Err(e) if e.class() == ErrorClass::Busy => {}
            Err(e) => p.mark_unhealthy(&format!("health probe failed: {e}")),
        }
        parker.park_timeout(HEALTH_INTERVAL);
    }
}
