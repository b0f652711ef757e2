//! Partition health: one thread per partition probes it about once a second and moves it in
//! and out of rotation. One thread each, so that a hung device stalls only its own probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::sync::{Parker, Unparker};

use crate::hsm::{ErrorClass, Partition};
use crate::pipeline::breakers::Breakers;

/// How often each partition is probed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the probe threads (detached: a probe stuck in a hung device must not block
/// shutdown; they exit at the next tick after `stop`). Returns their wake-up handles.
pub(super) fn spawn_probes(
    partitions: &[Arc<Partition>],
    breakers: &Arc<Breakers>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<Unparker>> {
    let mut wakers = Vec::new();
    for p in partitions {
        let parker = Parker::new();
        wakers.push(parker.unparker().clone());
        let (p, stop, breakers) = (Arc::clone(p), Arc::clone(stop), Arc::clone(breakers));
        std::thread::Builder::new()
            .name(format!("signer-health-{}", p.name()))
            .spawn(move || probe_loop(&p, &breakers, &stop, &parker))?;
    }
    Ok(wakers)
}

/// Probes one partition until `stop`. Workers take a partition out at once on device errors
/// (and the watchdog on a hung call); only a successful probe brings it back.
fn probe_loop(p: &Partition, breakers: &Breakers, stop: &AtomicBool, parker: &Parker) {
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        breakers.tick(now);
        match p.probe() {
            // The probe shows the token answers; only real signing (breaker probes) closes an
            // open breaker, so a partition with an open breaker stays out.
            Ok(()) if breakers.closed(p.index()) => p.mark_healthy(),
            Ok(()) => {}
            Err(e) if e.class() == ErrorClass::Busy => {}
            Err(e) => {
                let why = format!("health probe failed: {e}");
                if e.class() == ErrorClass::DeviceLost {
                    breakers.force_open(p.index(), now, &why);
                }
                p.mark_unhealthy(&why);
            }
        }
        // Look again soon while out of rotation, so recovery is quick.
        let next = if p.is_healthy() {
            HEALTH_INTERVAL
        } else {
            HEALTH_INTERVAL / 4
        };
        parker.park_timeout(next);
    }
}
