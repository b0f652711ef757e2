//! Readiness: what `/readyz` asks, and how the answer is rendered. `/livez` needs nothing.

use std::fmt::Write as _;

/// The source of `/readyz`. Called on the async runtime once per request: it must answer from
/// state the daemon already keeps (cached partition health, a draining flag), never call the HSM
/// or block.
///
/// Any `Fn() -> ReadyReport + Send + Sync + 'static` closure is a `Readiness`.
pub trait Readiness: Send + Sync + 'static {
    /// The current readiness.
    fn readiness(&self) -> ReadyReport;
}

impl<F> Readiness for F
where
    F: Fn() -> ReadyReport + Send + Sync + 'static,
{
    fn readiness(&self) -> ReadyReport {
        self()
    }
}

/// What the daemon knows about its readiness to sign.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadyReport {
    /// The key registry has been loaded from the HSMs.
    pub keys_loaded: bool,
    /// Every configured partition, healthy or not.
    pub partitions: Vec<PartitionHealth>,
    /// A graceful drain has started: stop routing new requests here.
    pub draining: bool,
    /// Why signing is impossible whatever the partitions say (e.g. the audit log cannot be
    /// written, so signing fails closed). Empty when nothing blocks.
    pub blocked: Option<String>,
    /// What operators should attend to although signing works (e.g. the audit disk is nearly
    /// full). Rendered as `warning:` lines; never changes the status.
    pub warnings: Vec<String>,
}

/// One partition's health, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionHealth {
    /// Partition name (as configured).
    pub name: String,
    /// Healthy: can take signing work now.
    pub healthy: bool,
    /// Why not, for operators (ignored when healthy; may be empty).
    pub reason: String,
}

impl PartitionHealth {
    /// A healthy partition.
    pub fn healthy(name: impl Into<String>) -> Self {
        PartitionHealth {
            name: name.into(),
            healthy: true,
            reason: String::new(),
        }
    }

    /// An unhealthy partition and why.
    pub fn unhealthy(name: impl Into<String>, reason: impl Into<String>) -> Self {
        PartitionHealth {
            name: name.into(),
            healthy: false,
            reason: reason.into(),
        }
    }
}

impl ReadyReport {
    /// Ready: not draining, keys loaded, and at least one partition healthy.
    pub fn is_ready(&self) -> bool {
        !self.draining
            && self.blocked.is_none()
            && self.keys_loaded
            && self.partitions.iter().any(|p| p.healthy)
    }

    /// The `/readyz` answer: HTTP status (200 or 503) and a plain-text body. The first line is
    /// `ready`, `draining`, or `not ready: <why>` (`blocked`, keys, partitions); then one
    /// `warning: <text>` line per warning; then one line per partition, `<name>: ok` or
    /// `<name>: unhealthy: <reason>`. Names, reasons and warnings are flattened to one line each.
    pub fn render(&self) -> (u16, String) {
        let mut body = String::new();
        let code = if self.draining {
            body.push_str("draining\n");
            503
        } else if let Some(why) = &self.blocked {
            let _ = writeln!(body, "not ready: {}", one_line(why));
            503
        } else if !self.keys_loaded {
            body.push_str("not ready: keys not loaded\n");
            503
        } else if self.partitions.is_empty() {
            body.push_str("not ready: no partitions configured\n");
            503
        } else if !self.partitions.iter().any(|p| p.healthy) {
            body.push_str("not ready: no healthy partition\n");
            503
        } else {
            body.push_str("ready\n");
            200
        };
        for w in &self.warnings {
            let _ = writeln!(body, "warning: {}", one_line(w));
        }
        for p in &self.partitions {
            // Writing to a String cannot fail.
            let _ = if p.healthy {
                writeln!(body, "{}: ok", one_line(&p.name))
            } else if p.reason.trim().is_empty() {
                writeln!(body, "{}: unhealthy", one_line(&p.name))
            } else {
                writeln!(
                    body,
                    "{}: unhealthy: {}",
                    one_line(&p.name),
                    one_line(&p.reason)
                )
            };
        }
        (code, body)
    }
}

/// `s` with control characters (line breaks above all) replaced by spaces, trimmed.
fn one_line(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(keys_loaded: bool, draining: bool, parts: Vec<PartitionHealth>) -> ReadyReport {
        ReadyReport {
            keys_loaded,
            partitions: parts,
            draining,
            blocked: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn blocked_is_503_with_the_reason_even_with_healthy_partitions() {
        let mut r = report(true, false, vec![PartitionHealth::healthy("p0")]);
        assert_eq!(r.render().0, 200);
        r.blocked = Some("audit log cannot be written:\nEIO".into());
        assert!(!r.is_ready());
        let (code, body) = r.render();
        assert_eq!(code, 503);
        assert!(
            body.starts_with("not ready: audit log cannot be written: EIO\n"),
            "{body}"
        );
        assert!(body.contains("p0: ok"), "{body}");
    }

    #[test]
    fn warnings_are_listed_and_do_not_change_the_status() {
        let mut r = report(true, false, vec![PartitionHealth::healthy("p0")]);
        r.warnings = vec!["audit disk low:\n12 MiB free".into()];
        assert!(r.is_ready());
        let (code, body) = r.render();
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "ready\nwarning: audit disk low: 12 MiB free\np0: ok\n"
        );
        r.draining = true;
        let (code, body) = r.render();
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "draining\nwarning: audit disk low: 12 MiB free\np0: ok\n"
        );
    }

    #[test]
    fn ready_with_one_healthy_partition_lists_the_sick_one() {
        let r = report(
            true,
            false,
            vec![
                PartitionHealth::healthy("hsm-a"),
                PartitionHealth::unhealthy("hsm-b", "CKR_DEVICE_REMOVED"),
            ],
        );
        assert!(r.is_ready());
        let (code, body) = r.render();
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "ready\nhsm-a: ok\nhsm-b: unhealthy: CKR_DEVICE_REMOVED\n"
        );
    }

    #[test]
    fn no_healthy_partition_is_503_with_reasons() {
        let r = report(
            true,
            false,
            vec![
                PartitionHealth::unhealthy("hsm-a", "breaker open"),
                PartitionHealth::unhealthy("hsm-b", ""),
            ],
        );
        assert!(!r.is_ready());
        let (code, body) = r.render();
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "not ready: no healthy partition\nhsm-a: unhealthy: breaker open\nhsm-b: unhealthy\n"
        );
    }

    #[test]
    fn keys_not_loaded_is_503() {
        let r = report(false, false, vec![PartitionHealth::healthy("p")]);
        let (code, body) = r.render();
        assert_eq!(code, 503);
        assert!(body.starts_with("not ready: keys not loaded\n"), "{body}");
        assert!(body.ends_with("p: ok\n"), "{body}");
    }

    #[test]
    fn no_partitions_is_503() {
        let (code, body) = report(true, false, vec![]).render();
        assert_eq!(code, 503);
        assert_eq!(body, "not ready: no partitions configured\n");
    }

    #[test]
    fn draining_wins_over_everything() {
        let r = report(true, true, vec![PartitionHealth::healthy("p")]);
        assert!(!r.is_ready());
        let (code, body) = r.render();
        assert_eq!(code, 503);
        assert!(body.starts_with("draining\n"), "{body}");
    }

    #[test]
    fn reasons_stay_on_one_line() {
        let r = report(
            true,
            false,
            vec![PartitionHealth::unhealthy("a\nb", "line1\r\nline2\n")],
        );
        let (_, body) = r.render();
        assert_eq!(
            body,
            "not ready: no healthy partition\na b: unhealthy: line1  line2\n"
        );
        assert_eq!(body.lines().count(), 2);
    }

    #[test]
    fn closures_are_readiness_sources() {
        let src = || ReadyReport {
            keys_loaded: true,
            partitions: vec![PartitionHealth::healthy("p")],
            draining: false,
            blocked: None,
            warnings: Vec::new(),
        };
        let dynsrc: std::sync::Arc<dyn Readiness> = std::sync::Arc::new(src);
        assert!(dynsrc.readiness().is_ready());
    }
}
