//! A partition: one token of one module, found by label, serial or `pkcs11:` URI (never by slot
//! id), logged in once, handing out sessions one at a time.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use parking_lot::Mutex;

use super::capabilities::Capabilities;
use super::error::{ErrorClass, HsmError, HsmResult};
use super::module::Module;
use super::raw::{RawCalls, TokenInfo};
use crate::config::TokenSelector;
use crate::secret::Pin;

/// Static facts about a partition, from the config.
#[derive(Clone, Debug)]
pub struct PartitionSpec {
    /// Partition name (unique across providers).
    pub name: String,
    /// Provider (module) name.
    pub provider: String,
    /// How the token is found.
    pub selector: TokenSelector,
    /// Sign with session-object copies of keys.
    pub session_key_copy: bool,
    /// Replicate keys to this partition with the trusted KEK.
    pub replicate: bool,
    /// Worker threads for this partition.
    pub workers: usize,
    /// Lowest in-flight limit the adaptive limiter may set (clamped to `[1, workers]`).
    pub min_inflight: usize,
    /// 0: the primary provider; 1: a secondary provider, used only for keys that no healthy
    /// primary partition holds.
    pub tier: u8,
}

/// Breaker trips remembered per partition (for the module re-initialization rule).
const TRIPS_KEPT: usize = 8;

/// A logged-in token. Shared by the workers of this partition and by admin operations.
pub struct Partition {
    spec: PartitionSpec,
    index: usize,
    module: Arc<Module>,
    slot: Slot,
    token_label: String,
    pin: Pin,
    /// What the token can do, probed once at open.
    capabilities: Capabilities,
    /// Set when the module refused a session-object copy of a key (`C_CopyObject` not
    /// supported, or not for keys): workers then sign with the token objects.
    copies_refused: AtomicBool,
    /// Keeps the login alive (PKCS#11 logs a token out when its last session closes) and serves
    /// re-logins. Never used for signing.
    anchor: Mutex<Option<Session>>,
    /// Serializes session opening so that login problems surface once.
    open_lock: Mutex<()>,
    healthy: AtomicBool,
    /// Why the partition is out of rotation (empty while healthy).
    health_reason: Mutex<String>,
    /// Set once the token rejected our PIN: never present it again (real tokens lock).
    pin_rejected: AtomicBool,
    /// Workers quarantined inside a hung call whose thread has not come back yet.
    stuck_workers: AtomicUsize,
    /// Taken out of rotation by an operator; probes do not bring it back.
    maintenance: AtomicBool,
    /// The last health probe found the token gone (device/token error).
    device_lost: AtomicBool,
    /// When the circuit breaker opened recently (at most [`TRIPS_KEPT`]).
    trips: Mutex<std::collections::VecDeque<std::time::Instant>>,
    signed: AtomicU64,
    hsm_calls: AtomicU64,
    session_rebuilds: AtomicU64,
    logins: AtomicU64,
    /// Advanced each time a login is restored, so that workers told USER_NOT_LOGGED_IN at the
    /// same moment log in again once, not once each.
    login_epoch: AtomicU64,
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.spec.name)
            .field("token", &self.token_label)
            .field("module", &self.module.path())
            .finish_non_exhaustive()
    }
}

impl Partition {
    /// Finds the token, opens the anchor session and logs in once. A wrong PIN fails here, once,
    /// with a clear error; it is never retried. A token that reports its user PIN locked or to
    /// be changed is refused before any login. Errors do not name the partition (the caller
    /// does, once).
    pub fn open(
        module: Arc<Module>,
        spec: PartitionSpec,
        pin: Pin,
        index: usize,
    ) -> HsmResult<Partition> {
        let (slot, info) = find_token(&module, &spec.selector)?;
        check_pin_state(&info)?;
        let token_label = info.label;
        let capabilities = Capabilities::probe(&module, slot);
        match capabilities.unknown() {
            Some(why) => {
                tracing::warn!(partition = %spec.name, "cannot read the token's mechanisms ({why}); assuming it can do every key type")
            }
            None => {
                tracing::info!(partition = %spec.name, mechanisms = capabilities.listed(), key_types = ?capabilities.key_types().iter().map(|t| t.as_str()).collect::<Vec<_>>(), "probed the token's mechanisms")
            }
        }
        let part = Partition {
            spec,
            index,
            module,
            slot,
            token_label,
            pin,
            capabilities,
            copies_refused: AtomicBool::new(false),
            anchor: Mutex::new(None),
            open_lock: Mutex::new(()),
            healthy: AtomicBool::new(true),
            health_reason: Mutex::new(String::new()),
            pin_rejected: AtomicBool::new(false),
            stuck_workers: AtomicUsize::new(0),
            maintenance: AtomicBool::new(false),
            device_lost: AtomicBool::new(false),
            trips: Mutex::new(std::collections::VecDeque::new()),
            signed: AtomicU64::new(0),
            hsm_calls: AtomicU64::new(0),
            session_rebuilds: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            login_epoch: AtomicU64::new(0),
        };
        part.login()?;
        Ok(part)
    }

    /// Opens a read-write session on this token (one at a time). The token is already logged in.
    pub fn open_session(&self) -> HsmResult<Session> {
        let _one_at_a_time = self.open_lock.lock();
        Ok(self.module.ctx().open_rw_session(self.slot)?)
    }

    /// Logs the token in if it is logged out (at start, after a module re-initialization, when a
    /// worker finds its session public). Serialized; a login another thread already restored is
    /// not repeated.
    pub fn login(&self) -> HsmResult<()> {
        self.restore_login(None)
    }

    /// The token answered a call with `USER_NOT_LOGGED_IN` while the login epoch was `seen`: logs
    /// in again even though the session may still report a user session (the token's answer to
    /// the call wins; an HSM idle timeout or a network HSM's failover can forget the login and
    /// leave the session state as it was). Serialized, and skipped when another thread logged in
    /// again since `seen`, so a burst of such answers costs one `C_Login`.
    pub fn relogin(&self, seen: u64) -> HsmResult<()> {
        self.restore_login(Some(seen))
    }

    /// The current login epoch, read before a call so that [`Partition::relogin`] can tell
    /// whether the login was already restored since.
    pub fn login_epoch(&self) -> u64 {
        self.login_epoch.load(Ordering::SeqCst)
    }

    fn restore_login(&self, told_at: Option<u64>) -> HsmResult<()> {
        if self.pin_rejected.load(Ordering::Relaxed) {
            return Err(HsmError::Login(format!(
                "token {:?} rejected our PIN earlier; not presenting it again. Fix the PIN \
                 source and restart.",
                self.token_label
            )));
        }
        let mut anchor = self.anchor.lock();
        if told_at.is_some_and(|seen| seen != self.login_epoch()) {
            tracing::debug!(partition = %self.spec.name, "the token said we were logged out; another worker has logged in again since");
            return Ok(());
        }
        if told_at.is_some() {
            tracing::warn!(partition = %self.spec.name, token = %self.token_label, "the token says we are logged out; logging in again");
        }
        let usable = anchor
            .as_ref()
            .is_some_and(|s| s.get_session_info().is_ok());
        if !usable {
            *anchor = None;
            let _one_at_a_time = self.open_lock.lock();
            *anchor = Some(self.module.ctx().open_rw_session(self.slot)?);
        }
        let session = anchor.as_ref().ok_or_else(|| {
            HsmError::Unexpected("anchor session missing right after opening it".into())
        })?;
        if told_at.is_none() {
            if let Ok(info) = session.get_session_info() {
                if matches!(
                    info.session_state(),
                    SessionState::RwUser | SessionState::RoUser
                ) {
                    return Ok(()); // another worker already restored the login
                }
            }
        }
        match session.login(UserType::User, Some(&self.pin.auth_pin())) {
            Ok(()) => {
                self.logins.fetch_add(1, Ordering::Relaxed);
                self.login_epoch.fetch_add(1, Ordering::SeqCst);
                tracing::info!(partition = %self.spec.name, token = %self.token_label, "logged in");
                Ok(())
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                if told_at.is_some() {
                    tracing::info!(partition = %self.spec.name, token = %self.token_label, "the token says we are still logged in; retrying");
                }
                self.login_epoch.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                let err = HsmError::from(e);
                match err.class() {
                    ErrorClass::PinIncorrect | ErrorClass::PinLocked => {
                        self.pin_rejected.store(true, Ordering::Relaxed);
                        Err(HsmError::Login(format!(
                            "login to token {:?} failed: {err}. The PIN is wrong or locked; \
                             not retrying, because real tokens lock after a few failed \
                             attempts. Fix the PIN source and restart.",
                            self.token_label
                        )))
                    }
                    _ => Err(err),
                }
            }
        }
    }

    /// Partition name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Index of this partition in the engine.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Config facts.
    pub fn spec(&self) -> &PartitionSpec {
        &self.spec
    }

    /// Whether workers sign with session-object copies of keys: configured
    /// (`session_key_copy`) and not refused by the module.
    pub fn session_copies(&self) -> bool {
        self.spec.session_key_copy && !self.copies_refused.load(Ordering::Relaxed)
    }

    /// Whether `err`, from a session-object copy, means the module does not make such copies
    /// (rather than a lost session or device): if so, copies are off for this partition from
    /// now on, with one warning, and the caller signs with the token object.
    pub fn copy_refused(&self, err: &HsmError) -> bool {
        use cryptoki::error::RvError;
        let refused = matches!(
            err.rv(),
            Some(
                RvError::FunctionNotSupported
                    | RvError::ActionProhibited
                    | RvError::AttributeTypeInvalid
                    | RvError::AttributeValueInvalid
                    | RvError::AttributeReadOnly
                    | RvError::TemplateInconsistent
                    | RvError::TemplateIncomplete
            )
        );
        if refused && !self.copies_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                partition = %self.name(),
                "the module refused a session-object copy of a key ({err}); signing with the \
                 token objects from now on (set session_key_copy = false for this provider to \
                 silence this)"
            );
        }
        refused
    }

    /// What the token can do (probed at open).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Token label as the token reports it (trailing blanks and NULs removed).
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// Whether the partition takes new work.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Why the partition is out of rotation (empty while healthy).
    pub fn health_reason(&self) -> String {
        self.health_reason.lock().clone()
    }

    /// Takes the partition out of rotation, saying why (logged once per change).
    pub fn mark_unhealthy(&self, reason: &str) {
        let mut why = self.health_reason.lock();
        if why.as_str() != reason {
            reason.clone_into(&mut why);
        }
        if self.healthy.swap(false, Ordering::SeqCst) {
            tracing::warn!(partition = %self.spec.name, reason, "partition out of rotation");
        }
    }

    /// Takes the partition out of rotation for maintenance, or ends that.
    pub fn set_maintenance(&self, out: bool) {
        self.maintenance.store(out, Ordering::SeqCst);
        if out {
            self.mark_unhealthy("taken out for maintenance");
        } else {
            tracing::info!(partition = %self.spec.name, "maintenance over; back after the next health probe");
        }
    }

    /// The module this partition's token is in.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The breaker opened at `now`.
    pub fn note_trip(&self, now: std::time::Instant) {
        let mut trips = self.trips.lock();
        if trips.len() >= TRIPS_KEPT {
            trips.pop_front();
        }
        trips.push_back(now);
    }

    /// Breaker trips within `window` before `now`.
    pub fn recent_trips(&self, now: std::time::Instant, window: std::time::Duration) -> usize {
        self.trips
            .lock()
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= window)
            .count()
    }

    /// After the module was re-initialized: the anchor session is dead, and its handle number may
    /// now name another session, so it is forgotten (never closed); the trip history restarts.
    /// The next [`Partition::login`] opens a new anchor and logs in.
    pub fn forget_sessions(&self) {
        if let Some(dead) = self.anchor.lock().take() {
            std::mem::forget(dead);
        }
        self.trips.lock().clear();
    }

    /// Records what the last health probe found: whether the token answered at all.
    pub fn set_device_lost(&self, lost: bool) {
        self.device_lost.store(lost, Ordering::Relaxed);
    }

    /// Whether breaker probes (real requests) may be sent here: not in maintenance, no hung call
    /// outstanding, and the last health probe found the token. A probe to a token known to be
    /// gone would only fail (and cost its caller a hop).
    pub fn takes_probes(&self) -> bool {
        !self.maintenance.load(Ordering::SeqCst)
            && !self.hang_suspected()
            && !self.device_lost.load(Ordering::Relaxed)
    }

    /// Puts the partition back into rotation (logged once per change), unless it is in
    /// maintenance or a hung call is outstanding.
    pub fn mark_healthy(&self) {
        if self.maintenance.load(Ordering::SeqCst) || self.hang_suspected() {
            return;
        }
        if !self.healthy.swap(true, Ordering::SeqCst) {
            self.health_reason.lock().clear();
            tracing::info!(partition = %self.spec.name, "partition back in rotation");
        }
    }

    /// A worker was quarantined in a hung call: the partition stays out of rotation until every
    /// such call has returned (a successful health probe alone does not bring it back).
    pub fn add_stuck(&self) {
        self.stuck_workers.fetch_add(1, Ordering::SeqCst);
    }

    /// A quarantined worker's call returned.
    pub fn stuck_returned(&self) {
        let _ = self
            .stuck_workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Workers still stuck in hung calls.
    pub fn stuck(&self) -> usize {
        self.stuck_workers.load(Ordering::SeqCst)
    }

    /// Whether a hung call is still outstanding on this partition.
    pub fn hang_suspected(&self) -> bool {
        self.stuck() > 0
    }

    /// Checks that the token answers and our login holds: the anchor session is alive and
    /// logged in, restoring either if lost (never re-presenting a rejected PIN). Cheap; the
    /// engine's health thread calls it about once a second.
    pub fn probe(&self) -> HsmResult<()> {
        self.login()?;
        let anchor = self.anchor.lock();
        let session = anchor
            .as_ref()
            .ok_or_else(|| HsmError::Unexpected("anchor session missing".into()))?;
        session.get_session_info()?;
        Ok(())
    }

    /// Counters for tests, benchmarks and (later) metrics.
    pub fn stats(&self) -> PartitionStats {
        PartitionStats {
            name: self.spec.name.clone(),
            signed: self.signed.load(Ordering::Relaxed),
            hsm_calls: self.hsm_calls.load(Ordering::Relaxed),
            session_rebuilds: self.session_rebuilds.load(Ordering::Relaxed),
            logins: self.logins.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_hsm_call(&self) {
        self.hsm_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_signed(&self) {
        self.signed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rebuild(&self) {
        self.session_rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the anchor session (logs the token out if no other session is open).
    pub fn close(&self) {
        if let Some(s) = self.anchor.lock().take() {
            if let Err(e) = s.close() {
                tracing::debug!(partition = %self.spec.name, "closing anchor session: {e}");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.close();
    }
}

/// Per-partition counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStats {
    /// Partition name.
    pub name: String,
    /// Signatures produced.
    pub signed: u64,
    /// `C_Sign` calls made (including failed ones).
    pub hsm_calls: u64,
    /// Worker sessions rebuilt after session loss.
    pub session_rebuilds: u64,
    /// Successful `C_Login` calls (1 at start; more after the token logged us out).
    pub logins: u64,
}

/// Finds the one token matching `selector`. Returns its slot (valid for this process's
/// initialization of the module only) and what discovery read of it.
///
/// Each slot's token is read with the raw `C_GetTokenInfo` ([`RawCalls::token_info`]), not
/// cryptoki's `get_token_info`: only label, manufacturer, model, serial and flags are used, and
/// a field cryptoki cannot parse (a `utcTime` that is not digits, as kryoptic's) must not hide a
/// token. One path for every module, so the path the tests take is the one users get. A slot
/// whose token cannot be read at all is skipped with a warning, and listed with the reason if
/// nothing matches. The messages do not name the partition: the caller does.
fn find_token(module: &Module, selector: &TokenSelector) -> HsmResult<(Slot, TokenInfo)> {
    let ctx = module.ctx();
    let raw = RawCalls::open(module)?;
    let mut found = Vec::new();
    let mut seen = Vec::new();
    let mut unreadable = Vec::new();
    for slot in ctx.get_slots_with_token()? {
        let info = match raw.token_info(slot) {
            Ok(i) => i,
            Err(e) => {
                unreadable.push(match e.rv() {
                    Some(rv) => {
                        format!("slot {}: C_GetTokenInfo answered {rv:?} ({rv})", slot.id())
                    }
                    None => format!("slot {}: {e}", slot.id()),
                });
                continue;
            }
        };
        if selector.matches(&info.label, &info.manufacturer, &info.model, &info.serial) {
            found.push((slot, info));
        } else {
            seen.push((slot, info));
        }
    }
    let unread = || {
        if unreadable.is_empty() {
            String::new()
        } else {
            format!(
                "; slots whose token could not be read: [{}]",
                unreadable.join(", ")
            )
        }
    };
    match found.len() {
        1 => {
            let (slot, info) = found.remove(0);
            if !info.initialized() {
                return Err(HsmError::Unexpected(format!(
                    "token {:?} is not initialized",
                    info.label
                )));
            }
            for u in &unreadable {
                tracing::warn!(token = %info.label, "another slot of the module could not be read ({u}); not needed for this partition");
            }
            Ok((slot, info))
        }
        0 => {
            let no_serial: Vec<String> = seen
                .iter()
                .filter(|(_, t)| t.initialized() && t.serial.is_empty())
                .map(|(_, t)| format!("{:?}", t.label))
                .collect();
            let hint = match selector {
                TokenSelector::Serial(_) if !no_serial.is_empty() => format!(
                    "; token {} {} no serial number: select by label or by a pkcs11: URI",
                    no_serial.join(", "),
                    if no_serial.len() == 1 { "has" } else { "have" }
                ),
                _ => String::new(),
            };
            Err(HsmError::Unexpected(format!(
                "no token matches {selector:?} in module {}; tokens present: [{}]{}{hint}",
                module.path().display(),
                seen.iter()
                    .map(|(slot, t)| describe(*slot, t))
                    .collect::<Vec<_>>()
                    .join(", "),
                unread(),
            )))
        }
        n => Err(HsmError::Unexpected(format!(
            "{n} tokens match {selector:?}: [{}]; select by serial or a more specific pkcs11: URI",
            found
                .iter()
                .map(|(slot, t)| describe(*slot, t))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A token as the discovery errors list it: its label and serial (a free slot's token, which
/// SoftHSM2 always offers, by its slot).
fn describe(slot: Slot, t: &TokenInfo) -> String {
    if !t.initialized() {
        format!("an uninitialized token in slot {}", slot.id())
    } else if t.serial.is_empty() {
        format!("{:?} (no serial)", t.label)
    } else {
        format!("{:?} (serial {})", t.label, t.serial)
    }
}

/// Refuses a token whose flags say a login cannot work: its user PIN is locked, or must be
/// changed first. Checked before the login, so the PIN is never presented in vain (a locked
/// token would only count another failure).
fn check_pin_state(info: &TokenInfo) -> HsmResult<()> {
    if info.user_pin_locked() {
        return Err(HsmError::Login(format!(
            "token {:?} reports its user PIN locked (CKF_USER_PIN_LOCKED); not logging in. The \
             token's security officer must set a new user PIN (C_InitPIN, e.g. `pkcs11-tool \
             --init-pin --login --login-type so`); then update the PIN source and restart.",
            info.label
        )));
    }
    if info.user_pin_to_be_changed() {
        return Err(HsmError::Login(format!(
            "token {:?} reports that its user PIN must be changed before use \
             (CKF_USER_PIN_TO_BE_CHANGED); not logging in. Set a new user PIN (C_SetPIN, e.g. \
             `pkcs11-tool --change-pin --login`), put it in the PIN source and restart.",
            info.label
        )));
    }
    Ok(())
}
