//! Authorization and quotas at the front end: the glue between a request and the access policy
//! (src/policy). Everything here answers before the engine (and so the HSM) is involved.
//!
//! Without a policy file the daemon keeps its original rules: any authenticated client may use
//! the non-admin ops on every key, and admin ops need an identity in `[server] admins`. With a
//! policy, the policy decides every op (`[server] admins` is not consulted) and may add quotas
//! and two-admin approval for `destroy_key`. In both modes the audit log's own key serves only
//! its public key (checked in dispatch, after this).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::State;
use crate::error::{EngineError, Status};
use crate::policy::approval::ApprovalStep;
use crate::policy::quota::{QuotaGuard, QuotaRefusal};
use crate::policy::{op_name, Policy, Query};
use crate::telemetry::OverloadReason;
use signer_proto::keys::{KeyName, Scheme, Version};
use signer_proto::protocol::{Op, Request};

/// Retry hint when the approval table is full.
const APPROVAL_FULL_RETRY: Duration = Duration::from_secs(10);

/// A refusal: what the client is told, and the fuller explanation for the audit log.
pub(super) struct Denial {
    /// The answer's message.
    pub message: String,
    /// The audit record's detail (the policy's explanation, when a policy decided).
    pub detail: String,
}

/// The policy one request is decided by: read once, when the request is decoded, and used for
/// every decision about it (authorization, quota, approval, the listing filter), so a reload
/// meanwhile never mixes two policies in one request. `None`: no policy file.
pub(super) fn snapshot(state: &State) -> Option<Arc<Policy>> {
    state.extras.policy.as_ref().map(|live| live.current())
}

/// Decides whether `identity` may run `op` on `key` (with `scheme`) under `policy` (the
/// request's [`snapshot`]). `ListKeys` names no key and is always allowed: its answer is
/// filtered with [`may_list`].
pub(super) fn authorize(
    state: &State,
    policy: Option<&Policy>,
    identity: &str,
    op: Op,
    key: Option<&KeyName>,
    scheme: Option<Scheme>,
) -> Result<(), Denial> {
    let Some(policy) = policy else {
        if op.is_admin() && !state.cfg.admins.iter().any(|a| a == identity) {
            tracing::warn!(identity, op = op.as_str(), "admin operation denied");
            let message = format!("identity {identity:?} may not run {}", op.as_str());
            return Err(Denial {
                detail: message.clone(),
                message,
            });
        }
        return Ok(());
    };
    let Some(key) = key else {
        return Ok(());
    };
    let decision = policy.decide(&Query {
        identity,
        key: key.as_str(),
        op,
        scheme,
    });
    if decision.allowed {
        return Ok(());
    }
    tracing::debug!(identity, op = op.as_str(), key = %key, "denied by policy: {decision}");
    // The client learns that the policy refused, not which rule did or whether one names the
    // key: the rules are the operators' to read (audit log, `signerd policy check`).
    Err(Denial {
        message: format!(
            "identity {identity:?} may not run {} on key {key}: not allowed by the access \
             policy",
            op_name(op)
        ),
        detail: decision.to_string(),
    })
}

/// Whether `identity` sees `key` in a `list_keys` answer: every key without a policy; with
/// one, the keys it may use with some non-admin op.
pub(super) fn may_list(policy: Option<&Policy>, identity: &str, key: &KeyName) -> bool {
    policy.is_none_or(|p| p.may_use(identity, key.as_str()))
}

/// Applies the caller's quota (in `policy`, the request's [`snapshot`]) to a sign, sign_batch,
/// verify or list_keys request (a verify takes a slot, no signatures; a listing costs as much as
/// one signature: it is work on the daemon's threads that grows with the keys and rules).
/// `Ok(Some(guard))` holds an in-flight slot until dropped; `Ok(None)`: no quota applies (or
/// another op). Refusals are counted in `signer_overloaded_total{reason="quota"}`.
pub(super) fn admit(
    state: &State,
    policy: Option<&Policy>,
    identity: &Arc<str>,
    request: &Request,
) -> Result<Option<QuotaGuard>, EngineError> {
    let (Some(live), Some(policy)) = (&state.extras.policy, policy) else {
        return Ok(None);
    };
    let signatures = match request {
        Request::Sign { .. } => 1,
        Request::SignBatch { payloads, .. } => u32::try_from(payloads.len()).unwrap_or(u32::MAX),
        // A verification takes no signatures from the rate, but holds one of the identity's
        // in-flight slots while it waits for and runs on the verify threads: one identity's
        // flood of them cannot fill the shared verify queue beyond its cap.
        Request::Verify { .. } => 0,
        Request::ListKeys => 1,
        _ => return Ok(None),
    };
    match live.admit(policy, identity, signatures, Instant::now()) {
        Ok(guard) => Ok(guard),
        Err(QuotaRefusal::TooLarge { asked, burst }) => Err(EngineError::InvalidArgument(format!(
            "a batch of {asked} signatures can never fit this identity's quota (burst \
                 {burst}); send smaller batches"
        ))),
        Err(
            QuotaRefusal::Rate { retry_after }
            | QuotaRefusal::Inflight { retry_after, .. }
            | QuotaRefusal::TableFull { retry_after },
        ) => {
            state.engine.metrics().overloaded(OverloadReason::Quota);
            tracing::debug!(identity = &**identity, ?retry_after, "quota exceeded");
            Err(EngineError::Overloaded { retry_after })
        }
    }
}

/// The outcome of a `destroy_key` under two-admin approval.
pub(super) enum DestroyGate {
    /// No approval needed (no policy, or the policy does not ask for it): destroy now.
    Proceed,
    /// A second admin approved `requester`'s request: destroy now, audited as the approval.
    Approved {
        /// The first admin.
        requester: Arc<str>,
    },
    /// Recorded as pending (or already pending from this admin): answer and audit, do nothing.
    Pending {
        /// The answer's message.
        message: String,
    },
    /// Refused without recording anything.
    Refused(EngineError),
    /// Denied: by the two-admin rule (the identity is not listed individually; nothing
    /// recorded), or, when approved, because the requester may no longer destroy the key (the
    /// pending request dropped). Answered and audited as a denial.
    Denied(Denial),
}

/// Runs a `destroy_key` of `key` version `version` by `identity` through the approval table
/// (the approver is already authorized under `policy`, the request's [`snapshot`]). The
/// requester of an approved operation is authorized again under `policy`: an admin whose right
/// was taken away (policy reload) since the request cannot have it carried out by an approval.
pub(super) fn destroy_gate(
    state: &State,
    policy: Option<&Policy>,
    key: &KeyName,
    version: Version,
    identity: &Arc<str>,
) -> DestroyGate {
    let (Some(live), Some(policy)) = (&state.extras.policy, policy) else {
        return DestroyGate::Proceed;
    };
    let what = format!("destroy_key of {key} v{version}");
    match live.destroy_approval(policy, key, version, identity, Instant::now()) {
        None => DestroyGate::Proceed,
        Some(ApprovalStep::Approved { requester }) => {
            let asked = Query {
                identity: &requester,
                key: key.as_str(),
                op: Op::DestroyKey,
                scheme: None,
            };
            let decision = policy.decide(&asked);
            if decision.allowed && policy.lists_individually(&asked) {
                DestroyGate::Approved { requester }
            } else {
                DestroyGate::Denied(Denial {
                    message: format!(
                        "{what} was requested by {requester:?}, who may no longer run it; the \
                         request is dropped (nothing was destroyed)"
                    ),
                    detail: format!("requester {requester:?} re-authorized: {decision}"),
                })
            }
        }
        Some(ApprovalStep::Requested { expires_in }) => DestroyGate::Pending {
            message: format!(
                "approval pending: {what} is recorded and needs a second admin: the same \
                 request from a different admin within {}s carries it out",
                expires_in.as_secs()
            ),
        },
        Some(ApprovalStep::AlreadyRequested { expires_in }) => DestroyGate::Pending {
            message: format!(
                "approval pending: {what} was already requested by this identity; it needs a \
                 different admin within {}s",
                expires_in.as_secs()
            ),
        },
        Some(ApprovalStep::NotListed) => {
            let message = format!(
                "identity {:?} may not request or approve {what}: two-admin approval counts only \
                 admins the policy lists individually (not through a pattern), and this identity \
                 is granted destroy_key on {key} only through one",
                &**identity
            );
            DestroyGate::Denied(Denial {
                detail: message.clone(),
                message,
            })
        }
        Some(ApprovalStep::Full) => DestroyGate::Refused(EngineError::Unavailable {
            reason: "too many operations await approval".into(),
            retry_after: APPROVAL_FULL_RETRY,
        }),
    }
}

/// The status a pending approval is answered with: the caller alone may not do this (yet).
pub(super) const PENDING_STATUS: Status = Status::PermissionDenied;

/// The scheme a request carries, for policy rules that restrict schemes.
pub(super) fn scheme_of(request: &Request) -> Option<Scheme> {
    match request {
        Request::Sign { scheme, .. }
        | Request::SignBatch { scheme, .. }
        | Request::Verify { scheme, .. } => Some(*scheme),
        _ => None,
    }
}
