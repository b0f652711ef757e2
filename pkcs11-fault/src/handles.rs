//! Own handles (`own_handles = true`): the application gets this module's session and object
//! handles, never the wrapped module's, so that a handle kept across a re-initialization can
//! be told from a new one.
//!
//! SoftHSM2 (like many modules) numbers sessions and objects afresh after `C_Finalize` and
//! `C_Initialize`: a session handle an application kept from before names, by chance, a session
//! another thread opened since, and the call silently runs there. Here every handle handed out
//! is a new number (sessions from [`SESSION_BASE`], objects from [`OBJECT_BASE`], counting up
//! for the life of the process), translated to the wrapped module's handle on every call and
//! forgotten, all of them, at `C_Finalize`. A call that arrives with a handle handed out before
//! the last `C_Finalize` is counted, per function (the stats' `stale_sessions` and
//! `stale_objects`), and answered `CKR_SESSION_HANDLE_INVALID` or `CKR_OBJECT_HANDLE_INVALID`
//! without reaching the wrapped module. Handles the module never handed out are answered the
//! same way, without being counted.
//!
//! Translation happens when the call is forwarded, after the rules (latency, hangs): a call
//! that was delayed across a `C_Finalize` is stale too. Object handles inside mechanism
//! parameters are not translated (none of the mechanisms signerd uses has one).
//!
//! Without the option every handle is passed through unchanged and nothing is recorded.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cryptoki_sys::*;
use parking_lot::RwLock;

use crate::names::{FUNCTIONS, FUNCTION_COUNT};

/// The first session handle this module hands out.
pub(crate) const SESSION_BASE: CK_ULONG = 0x5e55_0001;
/// The first object handle this module hands out.
pub(crate) const OBJECT_BASE: CK_ULONG = 0x0b1e_0001;

/// The translation tables and the stale-call counters.
pub(crate) struct Handles {
    own: AtomicBool,
    tables: RwLock<Tables>,
    stale_sessions: [AtomicU64; FUNCTION_COUNT],
    stale_objects: [AtomicU64; FUNCTION_COUNT],
}

/// One kind of handle: ours → the wrapped module's, and back.
struct Table {
    next: CK_ULONG,
    /// The first handle handed out since the last `C_Finalize`: those below it are stale.
    floor: CK_ULONG,
    base: CK_ULONG,
    ours: HashMap<CK_ULONG, CK_ULONG>,
    theirs: HashMap<CK_ULONG, CK_ULONG>,
}

struct Tables {
    sessions: Table,
    objects: Table,
}

#[derive(Clone, Copy)]
enum Kind {
    Session,
    Object,
}

/// What a handle of ours stands for now.
enum Lookup {
    Live(CK_ULONG),
    /// Handed out before the last `C_Finalize`.
    Stale,
    /// Never handed out, or closed (destroyed) since.
    Unknown,
}

impl Table {
    fn new(base: CK_ULONG) -> Table {
        Table {
            next: base,
            floor: base,
            base,
            ours: HashMap::new(),
            theirs: HashMap::new(),
        }
    }

    fn forget_all(&mut self) {
        self.ours.clear();
        self.theirs.clear();
        self.floor = self.next;
    }

    fn lookup(&self, ours: CK_ULONG) -> Lookup {
        match self.ours.get(&ours) {
            Some(theirs) => Lookup::Live(*theirs),
            None if (self.base..self.floor).contains(&ours) => Lookup::Stale,
            None => Lookup::Unknown,
        }
    }

    /// Ours for the wrapped module's `theirs`: the one already handed out in this generation,
    /// else a new one.
    fn ours_for(&mut self, theirs: CK_ULONG) -> CK_ULONG {
        if let Some(ours) = self.theirs.get(&theirs) {
            return *ours;
        }
        let ours = self.next;
        self.next += 1;
        self.ours.insert(ours, theirs);
        self.theirs.insert(theirs, ours);
        ours
    }

    fn remove_ours(&mut self, ours: CK_ULONG) {
        if let Some(theirs) = self.ours.remove(&ours) {
            self.theirs.remove(&theirs);
        }
    }

    fn remove_theirs(&mut self, theirs: CK_ULONG) {
        if let Some(ours) = self.theirs.remove(&theirs) {
            self.ours.remove(&ours);
        }
    }
}

impl Handles {
    pub(crate) fn new() -> Handles {
        Handles {
            own: AtomicBool::new(false),
            tables: RwLock::new(Tables {
                sessions: Table::new(SESSION_BASE),
                objects: Table::new(OBJECT_BASE),
            }),
            stale_sessions: std::array::from_fn(|_| AtomicU64::new(0)),
            stale_objects: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Whether handles are translated.
    pub(crate) fn own(&self) -> bool {
        self.own.load(Ordering::Acquire)
    }

    /// A successful `C_Initialize`: no handle of ours is live; `own` says whether to hand out
    /// our own from now on.
    pub(crate) fn initialized(&self, own: bool) {
        let mut t = self.tables.write();
        t.sessions.forget_all();
        t.objects.forget_all();
        self.own.store(own, Ordering::Release);
    }

    /// A successful `C_Finalize`: every handle handed out so far is stale.
    pub(crate) fn finalized(&self) {
        let mut t = self.tables.write();
        t.sessions.forget_all();
        t.objects.forget_all();
    }

    /// The wrapped module's session for the application's `session` (a call of function
    /// `fid`), or the code to answer.
    pub(crate) fn session(
        &self,
        fid: usize,
        session: CK_SESSION_HANDLE,
    ) -> Result<CK_ULONG, CK_RV> {
        self.translate(Kind::Session, fid, session)
    }

    /// As [`Handles::session`], without counting a stale handle (for the module's own calls).
    pub(crate) fn session_quiet(&self, session: CK_SESSION_HANDLE) -> Option<CK_ULONG> {
        if !self.own() {
            return Some(session);
        }
        match self.tables.read().sessions.lookup(session) {
            Lookup::Live(theirs) => Some(theirs),
            Lookup::Stale | Lookup::Unknown => None,
        }
    }

    /// The wrapped module's object for the application's `object` (CK_INVALID_HANDLE stays
    /// itself), or the code to answer.
    pub(crate) fn object(&self, fid: usize, object: CK_OBJECT_HANDLE) -> Result<CK_ULONG, CK_RV> {
        if object == CK_INVALID_HANDLE {
            return Ok(object);
        }
        self.translate(Kind::Object, fid, object)
    }

    /// Ours → theirs; a stale handle is counted for `fid` and, like an unknown one, refused.
    fn translate(&self, kind: Kind, fid: usize, ours: CK_ULONG) -> Result<CK_ULONG, CK_RV> {
        if !self.own() {
            return Ok(ours);
        }
        let (lookup, stale, invalid) = {
            let t = self.tables.read();
            match kind {
                Kind::Session => (
                    t.sessions.lookup(ours),
                    &self.stale_sessions,
                    CKR_SESSION_HANDLE_INVALID,
                ),
                Kind::Object => (
                    t.objects.lookup(ours),
                    &self.stale_objects,
                    CKR_OBJECT_HANDLE_INVALID,
                ),
            }
        };
        match lookup {
            Lookup::Live(theirs) => Ok(theirs),
            Lookup::Stale => {
                count(stale, fid);
                Err(invalid)
            }
            Lookup::Unknown => Err(invalid),
        }
    }

    /// A session the wrapped module opened: the handle to give the application.
    pub(crate) fn session_opened(&self, theirs: CK_SESSION_HANDLE) -> CK_SESSION_HANDLE {
        if !self.own() {
            return theirs;
        }
        self.tables.write().sessions.ours_for(theirs)
    }

    /// The application's `session` is closed.
    pub(crate) fn session_closed(&self, session: CK_SESSION_HANDLE) {
        if self.own() {
            self.tables.write().sessions.remove_ours(session);
        }
    }

    /// The wrapped module's object `theirs` was destroyed.
    pub(crate) fn object_destroyed(&self, theirs: CK_OBJECT_HANDLE) {
        if self.own() {
            self.tables.write().objects.remove_theirs(theirs);
        }
    }

    /// Replaces the `n` object handles the wrapped module wrote at `list` with ours.
    ///
    /// # Safety
    /// `list` must be null or valid for reading and writing `n` handles.
    pub(crate) unsafe fn objects_out(&self, list: *mut CK_OBJECT_HANDLE, n: CK_ULONG) {
        if !self.own() || list.is_null() {
            return;
        }
        let mut t = self.tables.write();
        for i in 0..n as usize {
            // SAFETY: `i < n`, and the caller guarantees `n` valid handles at `list`.
            let h = unsafe { &mut *list.add(i) };
            if *h != CK_INVALID_HANDLE {
                *h = t.objects.ours_for(*h);
            }
        }
    }

    /// Stale calls per function: (sessions, objects).
    pub(crate) fn stale(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        (by_name(&self.stale_sessions), by_name(&self.stale_objects))
    }
}

fn count(counters: &[AtomicU64; FUNCTION_COUNT], fid: usize) {
    if let Some(c) = counters.get(fid) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn by_name(counters: &[AtomicU64; FUNCTION_COUNT]) -> BTreeMap<String, u64> {
    FUNCTIONS
        .iter()
        .zip(counters.iter())
        .map(|(n, c)| ((*n).to_owned(), c.load(Ordering::Relaxed)))
        .filter(|(_, c)| *c > 0)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::names::fid;

    #[test]
    fn handles_are_never_reused_and_stale_ones_are_counted() {
        let h = Handles::new();
        h.initialized(true);
        let a = h.session_opened(1);
        assert_eq!(a, SESSION_BASE);
        assert_eq!(h.session(fid("C_Sign"), a), Ok(1));
        let mut objs = [7, 8, 7];
        // SAFETY: a local array of three handles.
        unsafe { h.objects_out(objs.as_mut_ptr(), 3) };
        assert_eq!(objs, [OBJECT_BASE, OBJECT_BASE + 1, OBJECT_BASE]);
        h.finalized();
        h.initialized(true);
        // The wrapped module reuses 1 and 7; we do not.
        let b = h.session_opened(1);
        assert_ne!(a, b);
        let mut obj = 7;
        // SAFETY: one local handle.
        unsafe { h.objects_out(&mut obj, 1) };
        assert_eq!(obj, OBJECT_BASE + 2);
        assert_eq!(h.session(fid("C_Sign"), a), Err(CKR_SESSION_HANDLE_INVALID));
        assert_eq!(
            h.object(fid("C_SignInit"), objs[0]),
            Err(CKR_OBJECT_HANDLE_INVALID)
        );
        assert_eq!(h.object(fid("C_SignInit"), obj), Ok(7));
        // Never handed out, or closed in this generation: refused, not counted.
        assert_eq!(h.session(fid("C_Sign"), 5), Err(CKR_SESSION_HANDLE_INVALID));
        h.session_closed(b);
        assert_eq!(h.session(fid("C_Sign"), b), Err(CKR_SESSION_HANDLE_INVALID));
        let (s, o) = h.stale();
        assert_eq!(s.get("C_Sign"), Some(&1));
        assert_eq!(s.len(), 1);
        assert_eq!(o.get("C_SignInit"), Some(&1));
    }

    #[test]
    fn without_the_option_handles_pass_through() {
        let h = Handles::new();
        h.initialized(false);
        assert_eq!(h.session_opened(3), 3);
        assert_eq!(h.session(fid("C_Sign"), 3), Ok(3));
        assert_eq!(h.object(fid("C_SignInit"), 9), Ok(9));
        h.finalized();
        assert_eq!(h.session(fid("C_Sign"), 3), Ok(3));
        assert_eq!(h.stale(), (BTreeMap::new(), BTreeMap::new()));
    }
}
