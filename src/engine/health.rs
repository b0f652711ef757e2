//! Partition health: one thread per partition probes it about once a second and moves it in
//! and out of rotation. One thread each, so that a hung device stalls only its own probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::sync::{Parker, Unparker};

use crate::breaker::{Outcome, State};
use crate::hsm::{ErrorClass, Partition};
use crate::pipeline::breakers::Breakers;

/// How often each partition is probed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the probe threads; they exit when woken after `stop`. Returns their wake-up handles
/// and join handles (joined with a bounded wait: a probe stuck in a hung device is left).
pub(super) fn spawn_probes(
    partitions: &[Arc<Partition>],
    breakers: &Arc<Breakers>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<(Vec<Unparker>, Vec<JoinHandle<()>>)> {
    let mut wakers = Vec::new();
    let mut handles = Vec::new();
    for p in partitions {
        let parker = Parker::new();
        wakers.push(parker.unparker().clone());
        let (p, stop, breakers) = (Arc::clone(p), Arc::clone(stop), Arc::clone(breakers));
        handles.push(
            std::thread::Builder::new()
                .name(format!("signer-health-{}", p.name()))
                .spawn(move || probe_loop(&p, &breakers, &stop, &parker))?,
        );
    }
    Ok((wakers, handles))
}

/// Probes one partition until `stop`. Workers take a partition out at once on device errors
/// (and the watchdog on a hung call); only a successful probe brings it back.
fn probe_loop(p: &Partition, breakers: &Breakers, stop: &AtomicBool, parker: &Parker) {
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        breakers.tick(now);
        let probed = p.probe();
        p.set_device_lost(matches!(&probed, Err(e) if e.class() == ErrorClass::DeviceLost));
        match probed {
            Ok(()) if breakers.closed(p.index()) => p.mark_healthy(),
            // Half-open: a successful probe counts as one breaker probe, next to the real
            // requests the router sends there. Without this, a partition (or all of them) with
            // no traffic would never come back, and /readyz would keep traffic away for good.
            // If signing still fails, the next requests reopen it with a longer backoff.
            Ok(()) => {
                if breakers.state(p.index()) == State::HalfOpen {
                    if let Some(ticket) = breakers.probe(p.index(), now) {
                        let took = now.elapsed();
                        breakers.record(
                            p.index(),
                            Instant::now(),
                            Some(ticket),
                            Outcome::Success { took },
                        );
                    }
                }
            }
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
