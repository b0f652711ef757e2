//! Two-admin approval: the first admin's request becomes a pending operation; a different admin
//! sending the same request (same op, key and version) within the window approves it, and only
//! then is it carried out. The same admin sending it again approves nothing. Both admins must
//! be listed individually in the policy rule that grants them `destroy_key` (a literal
//! identity, not a pattern; [`ApprovalStep::NotListed`]): "different admin" means different
//! identity, and only an identity written out as itself is taken as one person. Sans-IO: every
//! call takes `now`; expired entries are dropped on every call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signer_proto::keys::{KeyName, Version};

/// Default approval window: 10 minutes.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
/// Shortest window accepted.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest window accepted: a day.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most operations pending at once.
pub const MAX_PENDING: usize = 1024;

/// What a request did to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalStep {
    /// A new pending operation; it needs another admin before `expires_in` passes.
    Requested {
        /// Time left for the approval.
        expires_in: Duration,
    },
    /// The same admin asked again: still pending (the window is not extended).
    AlreadyRequested {
        /// Time left for the approval.
        expires_in: Duration,
    },
    /// A different admin approved the pending operation; it was removed and must be run now.
    Approved {
        /// The admin who asked first.
        requester: Arc<str>,
    },
    /// [`MAX_PENDING`] operations are pending already; nothing was recorded.
    Full,
    /// The admin is granted `destroy_key` on this key only through an identity pattern, never
    /// listed individually ([`super::Policy::lists_individually`]): it may neither request nor
    /// approve, as one person could hold two certificates the pattern matches. Nothing was
    /// recorded. (Decided by [`super::LivePolicy::destroy_approval`], not by [`Approvals`].)
    NotListed,
}

#[derive(Debug)]
struct Pending {
    requester: Arc<str>,
    expires: Instant,
}

/// Pending operations, keyed by what they would do.
#[derive(Debug, Default)]
pub struct Approvals {
    pending: HashMap<(KeyName, Version), Pending>,
}

impl Approvals {
    /// An empty table.
    pub fn new() -> Approvals {
        Approvals::default()
    }

    /// Operations pending now (after dropping expired ones at `now`).
    pub fn pending(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.pending.len()
    }

    /// A `destroy_key` of `key` version `version` by admin `identity` at `now`, with approvals
    /// valid for `window`.
    pub fn destroy(
        &mut self,
        key: &KeyName,
        version: Version,
        identity: &Arc<str>,
        window: Duration,
        now: Instant,
    ) -> ApprovalStep {
        self.expire(now);
        let id = (key.clone(), version);
        if let Some(p) = self.pending.get(&id) {
            let expires_in = p.expires.saturating_duration_since(now);
            if *p.requester == **identity {
                return ApprovalStep::AlreadyRequested { expires_in };
            }
            let requester = Arc::clone(&p.requester);
            self.pending.remove(&id);
            return ApprovalStep::Approved { requester };
        }
        if self.pending.len() >= MAX_PENDING {
            return ApprovalStep::Full;
        }
        self.pending.insert(
            id,
            Pending {
                requester: Arc::clone(identity),
                expires: now + window,
            },
        );
        ApprovalStep::Requested { expires_in: window }
    }

    fn expire(&mut self, now: Instant) {
        self.pending.retain(|_, p| p.expires > now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(600);

    fn key(n: &str) -> KeyName {
        KeyName::new(n).unwrap()
    }

    #[test]
    fn second_admin_approves_within_the_window() {
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let t0 = Instant::now();
        let mut a = Approvals::new();
        assert_eq!(
            a.destroy(&key("k"), 1, &alice, W, t0),
            ApprovalStep::Requested { expires_in: W }
        );
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            a.destroy(&key("k"), 1, &alice, W, t1),
            ApprovalStep::AlreadyRequested {
                expires_in: Duration::from_secs(540)
            }
        );
        assert_eq!(
            a.destroy(&key("k"), 1, &bob, W, t1),
            ApprovalStep::Approved {
                requester: alice.clone()
            }
        );
        // Consumed: the next request starts over.
        assert_eq!(a.pending(t1), 0);
        assert!(matches!(
            a.destroy(&key("k"), 1, &bob, W, t1),
            ApprovalStep::Requested { .. }
        ));
    }

    #[test]
    fn different_key_or_version_does_not_approve() {
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let t0 = Instant::now();
        let mut a = Approvals::new();
        a.destroy(&key("k"), 1, &alice, W, t0);
        assert!(matches!(
            a.destroy(&key("k"), 2, &bob, W, t0),
            ApprovalStep::Requested { .. }
        ));
        assert!(matches!(
            a.destroy(&key("j"), 1, &bob, W, t0),
            ApprovalStep::Requested { .. }
        ));
        assert_eq!(a.pending(t0), 3);
    }

    #[test]
    fn expired_requests_are_dropped() {
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let t0 = Instant::now();
        let mut a = Approvals::new();
        a.destroy(&key("k"), 1, &alice, W, t0);
        let late = t0 + W;
        assert_eq!(a.pending(late), 0);
        // Bob's request after expiry is a new request, not an approval.
        assert_eq!(
            a.destroy(&key("k"), 1, &bob, W, late),
            ApprovalStep::Requested { expires_in: W }
        );
        // And just inside the window it would have approved.
        let mut a = Approvals::new();
        a.destroy(&key("k"), 1, &alice, W, t0);
        assert!(matches!(
            a.destroy(&key("k"), 1, &bob, W, late - Duration::from_millis(1)),
            ApprovalStep::Approved { .. }
        ));
    }

    #[test]
    fn table_is_bounded() {
        let alice: Arc<str> = "alice".into();
        let t0 = Instant::now();
        let mut a = Approvals::new();
        for v in 0..MAX_PENDING as u32 {
            a.destroy(&key("k"), v, &alice, W, t0);
        }
        assert_eq!(
            a.destroy(&key("k"), u32::MAX, &alice, W, t0),
            ApprovalStep::Full
        );
        // Expiry frees room.
        assert!(matches!(
            a.destroy(&key("k"), u32::MAX, &alice, W, t0 + W),
            ApprovalStep::Requested { .. }
        ));
    }
}
