//! The policy of a running daemon: the current [`Policy`] (swapped whole on reload, so a request
//! sees either the old or the new one, never a mix), the per-identity quota state and the
//! pending approvals. Quota and approval state survive a reload; new limits apply from the next
//! request on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use super::approval::{ApprovalStep, Approvals};
use super::quota::{QuotaGuard, QuotaRefusal, QuotaTable};
use super::{Policy, PolicyError, Query};
use signer_proto::keys::{KeyName, Version};
use signer_proto::protocol::Op;

/// A loaded policy file and the state that goes with it.
#[derive(Debug)]
pub struct LivePolicy {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    quotas: Arc<Mutex<QuotaTable>>,
    approvals: Mutex<Approvals>,
}

/// What a successful reload loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Rules in the new policy.
    pub rules: usize,
    /// Quotas in the new policy.
    pub quotas: usize,
}

impl LivePolicy {
    /// Loads the policy file at `path`.
    pub fn load(path: &Path) -> Result<LivePolicy, PolicyError> {
        Ok(LivePolicy::new(path, Policy::load(path)?))
    }

    /// A live policy starting from `policy`; [`LivePolicy::reload`] reads `path`.
    pub fn new(path: &Path, policy: Policy) -> LivePolicy {
        LivePolicy {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(policy)),
            quotas: Arc::new(Mutex::new(QuotaTable::default())),
            approvals: Mutex::new(Approvals::new()),
        }
    }

    /// The file this policy comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read())
    }

    /// Reads the file again. On success the new policy replaces the old one for every request
    /// decided from now on; on error the old one stays in force.
    pub fn reload(&self) -> Result<ReloadSummary, PolicyError> {
        let policy = Policy::load(&self.path)?;
        let summary = ReloadSummary {
            rules: policy.rules().len(),
            quotas: policy.quota_count(),
        };
        *self.current.write() = Arc::new(policy);
        Ok(summary)
    }

    /// Applies `identity`'s quota in `policy` (the request's snapshot, see [`Self::current`]), if it
    /// gives one, to a request of `signatures` signatures. `Ok(None)`: no quota applies.
    pub fn admit(
        &self,
        policy: &Policy,
        identity: &Arc<str>,
        signatures: u32,
        now: Instant,
    ) -> Result<Option<QuotaGuard>, QuotaRefusal> {
        let Some((_, limit)) = policy.quota_for(identity) else {
            return Ok(None);
        };
        QuotaTable::admit(&self.quotas, identity, limit, signatures, now).map(Some)
    }

    /// Runs a `destroy_key` through the approval table when the policy asks for two admins;
    /// `None` when it does not (the destroy proceeds at once). An identity the policy does not
    /// list individually for `destroy_key` on `key` ([`Policy::lists_individually`]) gets
    /// [`ApprovalStep::NotListed`], as requester and as approver, and the table is not touched:
    /// the one place the two-admin rule for patterns and groups is decided.
    pub fn destroy_approval(
        &self,
        policy: &Policy,
        key: &KeyName,
        version: Version,
        identity: &Arc<str>,
        now: Instant,
    ) -> Option<ApprovalStep> {
        let approval = policy.approval();
        if !approval.destroy_key {
            return None;
        }
        let query = Query {
            identity,
            key: key.as_str(),
            op: Op::DestroyKey,
            scheme: None,
        };
        if !policy.lists_individually(&query) {
            return Some(ApprovalStep::NotListed);
        }
        Some(
            self.approvals
                .lock()
                .destroy(key, version, identity, approval.window, now),
        )
    }
}
