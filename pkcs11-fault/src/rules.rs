//! Live rules: a parsed rule plus its state (counters, PRNG stream, capacity queues, load time).
//!
//! On a reload, a rule whose text (and the seed) did not change keeps its state, so editing one
//! rule does not restart the others' counters, windows or PRNG streams. Every other rule starts
//! afresh, and the old ones are marked dead, which ends hangs and capacity waits they hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::capacity::Fifo;
use crate::config::{Action, Config, RuleSpec};
use crate::rng::{stream_seed, Rng};

/// The moment a rule is evaluated at: the monotonic time and how many times the application has
/// finalized the module so far.
#[derive(Debug, Clone, Copy)]
pub struct At {
    /// Now.
    pub now: Instant,
    /// Successful `C_Finalize` calls so far.
    pub finalizes: u64,
}

impl At {
    /// Now, with `finalizes` finalizations so far.
    pub fn now(finalizes: u64) -> At {
        At {
            now: Instant::now(),
            finalizes,
        }
    }
}

/// The rules in force, and the config they came from.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Bumped by every successful (re)load.
    pub generation: u64,
    /// The config (for `stats`, `target`, `seed`).
    pub config: Config,
    /// The rules, in file order.
    pub rules: Vec<Arc<LiveRule>>,
    /// Whether any rule is a `remove` rule (slot lists then need filtering).
    pub has_remove: bool,
}

/// A rule and its state.
#[derive(Debug)]
pub struct LiveRule {
    /// What the file says.
    pub spec: RuleSpec,
    fingerprint: String,
    loaded: Instant,
    finalizes_at_load: u64,
    alive: AtomicBool,
    matched: AtomicU64,
    fired: AtomicU64,
    injected: AtomicU64,
    busy: AtomicU64,
    rng: Mutex<Rng>,
    fifos: Mutex<HashMap<Arc<str>, Arc<Fifo>>>,
}

impl RuleSet {
    /// The rule set for `config`, taking over the state of unchanged rules from `previous` and
    /// marking the rest of `previous` dead.
    pub fn build(
        config: Config,
        generation: u64,
        previous: &RuleSet,
        entropy: u64,
        finalizes: u64,
    ) -> RuleSet {
        let seed = config.seed.unwrap_or(entropy);
        let mut old: HashMap<&str, Vec<&Arc<LiveRule>>> = HashMap::new();
        for r in &previous.rules {
            old.entry(r.fingerprint.as_str()).or_default().push(r);
        }
        for v in old.values_mut() {
            v.reverse(); // pop() then hands them out in file order
        }
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        for spec in &config.rules {
            let text = format!("{:?}|{:?}", config.seed, spec);
            let n = occurrences.entry(text.clone()).or_insert(0);
            let fingerprint = format!("{text}#{n}");
            *n += 1;
            let reused = old
                .get_mut(fingerprint.as_str())
                .and_then(|v| v.pop())
                .map(Arc::clone);
            let rule = reused.unwrap_or_else(|| {
                Arc::new(LiveRule {
                    spec: spec.clone(),
                    loaded: Instant::now(),
                    finalizes_at_load: finalizes,
                    alive: AtomicBool::new(true),
                    matched: AtomicU64::new(0),
                    fired: AtomicU64::new(0),
                    injected: AtomicU64::new(0),
                    busy: AtomicU64::new(0),
                    rng: Mutex::new(Rng::new(stream_seed(seed, &fingerprint))),
                    fifos: Mutex::new(HashMap::new()),
                    fingerprint,
                })
            });
            rules.push(rule);
        }
        for r in &previous.rules {
            if !rules.iter().any(|n| Arc::ptr_eq(n, r)) {
                r.alive.store(false, Ordering::Release);
            }
        }
        let has_remove = rules
            .iter()
            .any(|r| matches!(r.spec.action, Action::Remove { .. }));
        RuleSet {
            generation,
            config,
            rules,
            has_remove,
        }
    }

    /// Whether a `remove` rule hides `token` now (a state query: counts nothing).
    pub fn token_removed(&self, token: &str, at: At) -> Option<&Arc<LiveRule>> {
        self.rules.iter().find(|r| {
            matches!(r.spec.action, Action::Remove { .. })
                && r.token_matches(Some(token))
                && r.is_alive()
                && r.matched.load(Ordering::Relaxed) >= r.spec.gate.after_calls
                && r.in_force(at)
        })
    }
}

impl LiveRule {
    /// Whether the rule is still in force (not replaced or removed by a reload).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Whether the rule applies to this function and token.
    pub fn matches(&self, fid: usize, token: Option<&str>) -> bool {
        self.spec.functions.contains(fid) && self.token_matches(token)
    }

    /// Whether the rule applies to this token (`None`: the call has no token).
    pub fn token_matches(&self, token: Option<&str>) -> bool {
        match (&self.spec.token, token) {
            (None, _) => true,
            (Some(want), Some(t)) => want == t,
            (Some(_), None) => false,
        }
    }

    /// Counts a matching call and tells whether the rule fires on it, `count` aside (see
    /// [`LiveRule::take`]). Draws from the rule's PRNG on every matching call when it has a
    /// probability, so its sequence depends only on the calls it matched.
    pub fn gate(&self, at: At) -> bool {
        let n = self.matched.fetch_add(1, Ordering::Relaxed) + 1;
        let roll = match self.spec.gate.probability {
            Some(p) => self.rng.lock().next_f64() < p,
            None => true,
        };
        roll && n > self.spec.gate.after_calls && self.in_force(at)
    }

    /// Counts a call on a token for a `remove` rule, and tells whether the token is gone for it.
    pub fn remove_gate(&self, at: At) -> bool {
        let n = self.matched.fetch_add(1, Ordering::Relaxed) + 1;
        n > self.spec.gate.after_calls && self.in_force(at)
    }

    /// Takes one of the rule's `count` firings; false when spent.
    pub fn take(&self) -> bool {
        match self.spec.gate.count {
            None => {
                self.fired.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(limit) => self
                .fired
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                    (f < limit).then_some(f + 1)
                })
                .is_ok(),
        }
    }

    /// Whether the time and finalize gates are open: inside the window (if any), and not
    /// finalized since loading (for `until_finalize`).
    pub fn in_force(&self, at: At) -> bool {
        if self.spec.gate.until_finalize && at.finalizes != self.finalizes_at_load {
            return false;
        }
        match self.spec.gate.window {
            None => true,
            Some((from, until)) => {
                let t = at.now.saturating_duration_since(self.loaded);
                t >= from && until.is_none_or(|u| t < u)
            }
        }
    }

    /// A uniform draw in `[0, max)` from the rule's stream.
    pub fn jitter(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        max.mul_f64(self.rng.lock().next_f64())
    }

    /// Records one injected fault.
    pub fn injected(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one "busy" answer of a capacity rule (also counted as injected).
    pub fn busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.injected();
    }

    /// The capacity queue of one token.
    pub fn fifo(&self, token: &Arc<str>, max: usize) -> Arc<Fifo> {
        let mut f = self.fifos.lock();
        Arc::clone(
            f.entry(Arc::clone(token))
                .or_insert_with(|| Arc::new(Fifo::new(max))),
        )
    }

    /// The alive flag, for waits that end when the rule is lifted.
    pub fn alive_flag(&self) -> &AtomicBool {
        &self.alive
    }

    /// Counters for the stats: (matched, injected, busy, peak inside, peak waiting).
    pub fn counters(&self) -> (u64, u64, u64, usize, usize) {
        let (mut inside, mut waiting) = (0, 0);
        for f in self.fifos.lock().values() {
            let (i, w) = f.peaks();
            inside = inside.max(i);
            waiting = waiting.max(w);
        }
        (
            self.matched.load(Ordering::Relaxed),
            self.injected.load(Ordering::Relaxed),
            self.busy.load(Ordering::Relaxed),
            inside,
            waiting,
        )
    }

    /// Seconds since the rule was (first) loaded.
    pub fn age(&self) -> Duration {
        self.loaded.elapsed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn set(text: &str, prev: &RuleSet) -> RuleSet {
        RuleSet::build(
            Config::parse(text).unwrap(),
            prev.generation + 1,
            prev,
            1,
            0,
        )
    }

    const A: &str = "seed = 1\n[[rule]]\nkind = \"error\"\nrv = 5\nprobability = 0.5\n";

    #[test]
    fn unchanged_rules_keep_their_state_others_die() {
        let empty = RuleSet::default();
        let one = set(A, &empty);
        let now = At::now(0);
        for _ in 0..10 {
            one.rules[0].gate(now);
        }
        let two = set(
            &format!("{A}[[rule]]\nkind = \"latency\"\nfixed_ms = 1\n"),
            &one,
        );
        assert!(Arc::ptr_eq(&one.rules[0], &two.rules[0]));
        assert_eq!(two.rules[0].counters().0, 10);
        let three = set("seed = 2\n", &two);
        assert!(three.rules.is_empty());
        assert!(!two.rules[0].is_alive() && !two.rules[1].is_alive());
    }

    #[test]
    fn seeded_streams_repeat_and_ignore_other_rules() {
        let draws = |text: &str| {
            let s = set(text, &RuleSet::default());
            let now = At::now(0);
            (0..64).map(|_| s.rules[0].gate(now)).collect::<Vec<_>>()
        };
        let a = draws(A);
        assert_eq!(a, draws(A));
        assert!(a.iter().any(|x| *x) && a.iter().any(|x| !*x));
        // Another rule before it does not change its stream.
        let with_other = format!("seed = 1\n[[rule]]\nkind = \"latency\"\n{}", &A[9..]);
        let s = set(&with_other, &RuleSet::default());
        let now = At::now(0);
        let b: Vec<bool> = (0..64).map(|_| s.rules[1].gate(now)).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn after_calls_and_count() {
        let s = set(
            "[[rule]]\nkind = \"error\"\nrv = 5\nafter_calls = 2\ncount = 2\n",
            &RuleSet::default(),
        );
        let r = &s.rules[0];
        let now = At::now(0);
        let fired: Vec<bool> = (0..6).map(|_| r.gate(now) && r.take()).collect();
        assert_eq!(fired, [false, false, true, true, false, false]);
    }

    #[test]
    fn until_finalize_ends_at_the_next_finalize() {
        let s = set(
            "[[rule]]\nkind = \"error\"\nrv = 5\nuntil_finalize = true\n",
            &RuleSet::default(),
        );
        let r = &s.rules[0];
        assert!(r.gate(At::now(0)));
        assert!(!r.gate(At::now(1)));
        assert!(!r.gate(At::now(2)));
    }

    #[test]
    fn removal_is_a_state() {
        let s = set(
            "[[rule]]\nkind = \"remove\"\ntoken = \"t1\"\nafter_calls = 1\n",
            &RuleSet::default(),
        );
        let now = At::now(0);
        assert!(s.token_removed("t1", now).is_none());
        assert!(!s.rules[0].remove_gate(now));
        assert!(s.token_removed("t1", now).is_some());
        assert!(s.token_removed("t0", now).is_none());
        assert!(s.rules[0].remove_gate(now));
    }
}
