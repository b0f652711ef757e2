//! The decision made on every call: which rules match, what they inject, and whether the call
//! is forwarded to the wrapped module.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use super::{Ctx, Engine, SLICE};
use crate::capacity::{Acquire, Permit};
use crate::config::Action;
use crate::names::fid;
use crate::rules::LiveRule;
use crate::token_info::TokenEdit;

impl Engine {
    /// Counts a call that is forwarded without rules (C_GetSlotList's own path).
    pub(crate) fn count_call(&self, fid: usize) {
        if let Some(c) = self.calls.get(fid) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Runs one call through the rules: removal, capacity, latency, hangs, errors, then (if no
    /// rule answered) `call`, the forward to the wrapped module. `drain` runs when an injected
    /// return code replaces a call that, per PKCS#11, ends the active operation; it ends that
    /// operation in the wrapped module too. A `size_query` (a `C_Sign` with a NULL output
    /// buffer, which PKCS#11 applications make before every signature) is not charged by
    /// capacity and latency rules: network HSM client libraries answer it without a round trip.
    pub(crate) fn intercept(
        &self,
        fid: usize,
        ctx: Ctx,
        size_query: bool,
        call: impl FnOnce() -> CK_RV,
        drain: impl FnOnce(),
    ) -> CK_RV {
        self.intercept_then(fid, ctx, size_query, call, drain, |rv, _| rv)
    }

    /// [`Engine::intercept`], and when the forwarded call succeeded, `edit` gets the edits of
    /// the `token_info` rules that fired on it (in file order), to apply to the answer.
    pub(crate) fn intercept_edit(
        &self,
        fid: usize,
        ctx: Ctx,
        size_query: bool,
        call: impl FnOnce() -> CK_RV,
        drain: impl FnOnce(),
        edit: impl FnOnce(&[&TokenEdit]),
    ) -> CK_RV {
        self.intercept_then(fid, ctx, size_query, call, drain, |rv, fired| {
            if rv == CKR_OK {
                let mut edits = Vec::new();
                for r in fired {
                    if let Action::TokenInfo(e) = &r.spec.action {
                        if r.take() {
                            self.note(r);
                            edits.push(e);
                        }
                    }
                }
                if !edits.is_empty() {
                    edit(&edits);
                }
            }
            rv
        })
    }

    /// [`Engine::intercept`] for `C_GetMechanismList` and `C_GetMechanismInfo`: `answer` gets
    /// the forwarded call's return code and whether a mechanism is hidden by a
    /// `hide_mechanism` rule that fired on this call, and returns the application's return code
    /// and the hidden mechanisms it acted on (their rules count an injection). It runs after
    /// every forwarded call, also with no rules.
    pub(crate) fn intercept_mechanisms(
        &self,
        fid: usize,
        ctx: Ctx,
        call: impl FnOnce() -> CK_RV,
        answer: impl FnOnce(
            CK_RV,
            &dyn Fn(CK_MECHANISM_TYPE) -> bool,
        ) -> (CK_RV, Vec<CK_MECHANISM_TYPE>),
    ) -> CK_RV {
        self.intercept_then(fid, ctx, false, call, || {}, |rv, fired| {
            let hides = |m: CK_MECHANISM_TYPE| {
                fired.iter().any(|r| {
                    matches!(&r.spec.action, Action::HideMechanism { mechanisms } if mechanisms.contains(&m))
                })
            };
            let (rv, used) = answer(rv, &hides);
            for r in fired {
                if let Action::HideMechanism { mechanisms } = &r.spec.action {
                    if used.iter().any(|m| mechanisms.contains(m)) && r.take() {
                        self.note(r);
                    }
                }
            }
            rv
        })
    }

    /// The rules' pass over one call (see [`Engine::intercept`]); `then` gets the return code
    /// of the forwarded call and the rules that matched and passed their gates (not taken yet),
    /// and returns the application's return code. Not run when a rule answered instead.
    fn intercept_then(
        &self,
        fid: usize,
        ctx: Ctx,
        size_query: bool,
        call: impl FnOnce() -> CK_RV,
        drain: impl FnOnce(),
        then: impl FnOnce(CK_RV, &[&Arc<LiveRule>]) -> CK_RV,
    ) -> CK_RV {
        self.count_call(fid);
        let set = self.rules();
        if set.rules.is_empty() {
            return then(call(), &[]);
        }
        let token = self.token_of(ctx);
        let tok = token.as_deref();
        let now = self.at();

        // Pass 1: every matching rule counts the call (and draws, if it has a probability).
        let mut removed: Option<&Arc<LiveRule>> = None;
        let mut fired: Vec<&Arc<LiveRule>> = Vec::new();
        for r in &set.rules {
            if let Action::Remove { .. } = r.spec.action {
                if tok.is_some() && r.token_matches(tok) && r.remove_gate(now) && removed.is_none()
                {
                    removed = Some(r);
                }
            } else if r.matches(fid, tok) && r.gate(now) {
                fired.push(r);
            }
        }

        // Removal.
        if let Some(rule) = removed {
            if !REMOVAL_EXEMPT.contains(&fid) {
                let rv = match (ctx, &rule.spec.action) {
                    (Ctx::Slot(_), _) => CKR_TOKEN_NOT_PRESENT,
                    (_, Action::Remove { rv }) => *rv,
                    _ => CKR_DEVICE_REMOVED,
                };
                self.note(rule);
                return injected_rv(rv, drain);
            }
        }

        // Capacity: a place in each matching token queue (released, after the minimum call time,
        // when `_permits` drops at the end of this function).
        let mut _permits: Vec<Permit> = Vec::new();
        for r in fired.iter().filter(|_| !size_query) {
            let Action::Capacity {
                max_concurrent,
                call: min_call,
                max_waiting,
                rv,
            } = r.spec.action
            else {
                continue;
            };
            let Some(token) = &token else {
                continue; // capacity is per token; token-less calls pass
            };
            if !r.take() {
                continue;
            }
            let fifo = r.fifo(token, max_concurrent);
            match fifo.acquire(min_call, max_waiting, r.alive_flag()) {
                Acquire::Entered(p) => _permits.push(p),
                Acquire::Busy => {
                    r.busy();
                    self.injected_total.fetch_add(1, Ordering::Relaxed);
                    self.dirty.store(true, Ordering::Relaxed);
                    return injected_rv(rv, drain);
                }
                Acquire::Abandoned => {}
            }
        }

        // Latency: all matching rules add up, one sleep.
        let mut delay = Duration::ZERO;
        for r in fired.iter().filter(|_| !size_query) {
            if let Action::Latency { fixed, jitter } = r.spec.action {
                if r.take() {
                    delay += fixed + r.jitter(jitter);
                    self.note(r);
                }
            }
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }

        // Hangs, one after another.
        for r in &fired {
            if let Action::Hang { max, rv } = r.spec.action {
                if !r.take() {
                    continue;
                }
                self.note(r);
                let lifted = self.hang(r, max);
                if let (false, Some(rv)) = (lifted, rv) {
                    return injected_rv(rv, drain);
                }
            }
        }

        // Errors: the first that fires answers.
        for r in &fired {
            if let Action::Error { rv } = r.spec.action {
                if r.take() {
                    self.note(r);
                    return injected_rv(rv, drain);
                }
            }
        }

        then(call(), &fired)
    }

    /// Blocks for `max` (or until lifted); true when the rule was lifted.
    fn hang(&self, rule: &LiveRule, max: Option<Duration>) -> bool {
        let start = Instant::now();
        loop {
            if !rule.is_alive() {
                return true;
            }
            let slice = match max {
                Some(m) => {
                    let spent = start.elapsed();
                    if spent >= m {
                        return false;
                    }
                    (m - spent).min(SLICE)
                }
                None => SLICE,
            };
            std::thread::sleep(slice);
            // Do not depend on the watcher alone (e.g. C_Finalize ran in another thread).
            self.check_config(false);
        }
    }

    fn note(&self, rule: &LiveRule) {
        rule.injected();
        self.injected_total.fetch_add(1, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }
}

/// Answers an injected return code; ends the wrapped operation first unless the code is one that
/// keeps it (`CKR_OK`, `CKR_BUFFER_TOO_SMALL`).
fn injected_rv(rv: CK_RV, drain: impl FnOnce()) -> CK_RV {
    if rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL {
        drain();
    }
    rv
}

/// Functions a removed token does not fail: slot info (it reports the token absent instead) and
/// closing sessions (so applications can clean up and rebuild).
const REMOVAL_EXEMPT: [usize; 3] = [
    fid("C_GetSlotInfo"),
    fid("C_CloseSession"),
    fid("C_CloseAllSessions"),
];
