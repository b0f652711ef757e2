//! Partition health: a thread that probes every partition and moves it in and out of rotation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::sync::{Parker, Unparker};

use crate::hsm::{ErrorClass, Partition};

/// How often the health thread checks every partition.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The health thread: probes every partition about once a second, takes failing ones out of
/// rotation and puts recovered ones back. Workers take a partition out at once on device
/// errors; only this thread brings it back.
pub(super) struct HealthProbe {
    partitions: Vec<Arc<Partition>>,
    stop: Arc<AtomicBool>,
    parker: Parker,
}

impl HealthProbe {
    pub(super) fn new(partitions: Vec<Arc<Partition>>, stop: Arc<AtomicBool>) -> HealthProbe {
        HealthProbe {
            partitions,
            stop,
            parker: Parker::new(),
        }
    }

    /// Wakes the thread early (shutdown).
    pub(super) fn unparker(&self) -> Unparker {
        self.parker.unparker().clone()
    }

    pub(super) fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            for p in &self.partitions {
                match p.probe() {
                    Ok(()) => p.mark_healthy(),
                    Err(e) if e.class() == ErrorClass::Busy => {}
                    Err(e) => p.mark_unhealthy(&format!("health probe failed: {e}")),
                }
            }
            self.parker.park_timeout(HEALTH_INTERVAL);
        }
    }
}
