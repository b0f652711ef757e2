//! Access policy and quotas: who may use which key for which operation, how fast, and which
//! operations need a second admin's approval.
//!
//! The policy is a TOML file (docs/CONFIG.md, `policy.example.toml`) named by `[server] policy`.
//! It maps caller identities (the string the TLS layer extracts from the client certificate per
//! `[server] identity`) to rules:
//!
//! - **Default deny.** A request no rule allows is denied.
//! - **An explicit deny wins** over any number of allows (the AWS KMS / IAM model): rule order
//!   does not matter for the decision; it only picks which rule the explanation names (the first
//!   matching deny, else the first matching allow).
//! - A rule matches a request when the identity matches one of its `identities` (or a member of
//!   one of its `groups`), the key matches one of its `keys` (exact names or `*`/`?` globs, see
//!   [`glob`]), the op is one of its `ops` (`*` = all), and, when the rule lists `schemes`, the
//!   request carries one of them (a rule with `schemes` never matches an op without a scheme).
//! - Identities never contain `*`, `?`, `[`, `]` or control characters (the TLS layer refuses
//!   such certificates, [`crate::tls::check_identity`]); so an identity entry with `*` or `?`
//!   is always a glob, one without is exactly one identity, and entries with `[`, `]`, control
//!   characters or surrounding whitespace are refused at load.
//! - Two-admin approval counts only admins listed individually: see
//!   [`Policy::lists_individually`].
//! - `list_keys` itself is always answered, but lists only the keys the caller may use with some
//!   non-admin op ([`Policy::may_use`]).
//!
//! This module is sans-IO except [`Policy::load`] (one file read) and [`live::LivePolicy`]'s
//! reload, which calls it: decisions, token buckets ([`quota`]) and the pending-approval table
//! ([`approval`]) are plain data with `now: Instant` passed in.

pub mod approval;
mod file;
pub mod glob;
pub mod live;
pub mod quota;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use file::{parse_duration, PolicyError, MAX_POLICY_BYTES};
pub use glob::Glob;
pub use live::LivePolicy;
pub use quota::QuotaLimit;

use signer_proto::keys::Scheme;
use signer_proto::protocol::Op;

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Grants the request (unless some deny rule matches too).
    Allow,
    /// Refuses the request, whatever else matches.
    Deny,
}

impl Effect {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// A set of [`Op`]s as a bit mask over [`Op::ALL`] positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpSet(u16);

impl OpSet {
    /// Every op.
    pub const ALL: OpSet = OpSet((1 << Op::ALL.len()) - 1);

    /// The set holding `op`.
    pub fn of(op: Op) -> OpSet {
        OpSet(bit(op))
    }

    /// Adds `op`.
    pub fn insert(&mut self, op: Op) {
        self.0 |= bit(op);
    }

    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & bit(op) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

fn bit(op: Op) -> u16 {
    // Op::ALL holds every op (the enum and the array are defined together); position 15 is
    // never reached with 9 ops, and an op missing from ALL maps to no bit at all.
    Op::ALL
        .iter()
        .position(|o| *o == op)
        .map_or(0, |i| 1u16 << i)
}

/// The policy name of an op (as written in `ops = [...]`), the wire name otherwise:
/// `public_key` for `get_public_key` and `list` for `list_keys`.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::GetPublicKey => "public_key",
        Op::ListKeys => "list",
        other => other.as_str(),
    }
}

/// The op for a policy name. Accepts the policy names and the wire names (`get_public_key`,
/// `list_keys`).
pub fn parse_op(name: &str) -> Option<Op> {
    match name {
        "public_key" => Some(Op::GetPublicKey),
        "list" => Some(Op::ListKeys),
        other => Op::ALL.into_iter().find(|op| op.as_str() == other),
    }
}

/// Who a rule (or quota) applies to: one identity pattern, and the group it came from.
#[derive(Clone, Debug)]
pub struct Subject {
    /// The identity, exact or a glob.
    pub pattern: Glob,
    /// The group this pattern was listed in, if it came from `groups = [...]`.
    pub group: Option<Arc<str>>,
}

impl Subject {
    fn describe(&self) -> String {
        match &self.group {
            Some(g) => format!("identity {:?} of group {g:?}", self.pattern.as_str()),
            None => format!("identity {:?}", self.pattern.as_str()),
        }
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its `name`, or `rule[N]` (1-based position in the file) when it has none.
    pub name: Arc<str>,
    /// Allow or deny.
    pub effect: Effect,
    subjects: Vec<Subject>,
    keys: Vec<Glob>,
    ops: OpSet,
    /// `None`: any scheme, and ops without one. `Some`: only requests with one of these.
    schemes: Option<Vec<Scheme>>,
}

impl Rule {
    /// The subject and key pattern through which this rule matches the query, if it does.
    fn matches(&self, q: &Query<'_>) -> Option<(&Subject, &Glob)> {
        let key = self.covers(q)?;
        let subject = self
            .subjects
            .iter()
            .find(|s| s.pattern.matches(q.identity))?;
        Some((subject, key))
    }

    /// The key pattern through which this rule covers the query's op, scheme and key (whoever
    /// asks), if it does.
    fn covers(&self, q: &Query<'_>) -> Option<&Glob> {
        if !self.ops.contains(q.op) {
            return None;
        }
        if let Some(schemes) = &self.schemes {
            if !q.scheme.is_some_and(|s| schemes.contains(&s)) {
                return None;
            }
        }
        self.keys.iter().find(|k| k.matches(q.key))
    }

    /// Whether the query's identity is listed in this rule as itself: a literal entry (in
    /// `identities` or in a group), not through a pattern.
    fn lists(&self, identity: &str) -> bool {
        self.subjects
            .iter()
            .any(|s| s.pattern.is_literal() && s.pattern.matches(identity))
    }
}

/// What is being asked: who, which key, which op, with which scheme.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// The caller's identity.
    pub identity: &'a str,
    /// The key name the request names.
    pub key: &'a str,
    /// The operation.
    pub op: Op,
    /// The signature scheme, for ops that carry one (sign, sign_batch, verify).
    pub scheme: Option<Scheme>,
}

/// A decision and why it was made.
#[derive(Clone, Copy, Debug)]
pub struct Decision<'p> {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule that decided (the first matching deny, else the first matching allow), with the
    /// subject and key pattern that matched; `None` when no rule matched (default deny).
    pub matched: Option<(&'p Rule, &'p Subject, &'p Glob)>,
}

impl Decision<'_> {
    /// The deciding rule's name, or `default-deny`.
    pub fn rule_name(&self) -> &str {
        self.matched.map_or("default-deny", |(r, _, _)| &r.name)
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allow" } else { "deny" };
        match self.matched {
            None => write!(f, "{verdict}: no rule matched: default deny"),
            Some((rule, subject, key)) => write!(
                f,
                "{verdict}: {} rule {:?} matched ({}, key pattern {:?})",
                rule.effect.as_str(),
                &*rule.name,
                subject.describe(),
                key.as_str()
            ),
        }
    }
}

/// `[approval]`: operations that need a second admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalConfig {
    /// `destroy_key` needs a second, different admin to send the same request within `window`.
    pub destroy_key: bool,
    /// How long a pending request waits for its approval.
    pub window: Duration,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            destroy_key: false,
            window: approval::DEFAULT_WINDOW,
        }
    }
}

/// One `[[quota]]`: a limit for each identity it names (a group quota limits each member on its
/// own; members do not share one bucket).
#[derive(Clone, Debug)]
pub struct QuotaRule {
    /// Its `name`, or `quota[N]`.
    pub name: Arc<str>,
    subjects: Vec<Subject>,
    /// The limit.
    pub limit: QuotaLimit,
}

/// A parsed, validated policy. Cheap to share behind an `Arc`; immutable (a reload builds a
/// new one).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    quotas: Vec<QuotaRule>,
    approval: ApprovalConfig,
}

impl Policy {
    /// Decides a request. Deny wins: any matching deny rule denies; otherwise any matching allow
    /// rule allows; otherwise the default is deny.
    pub fn decide(&self, q: &Query<'_>) -> Decision<'_> {
        let mut allow = None;
        for rule in &self.rules {
            if let Some((subject, key)) = rule.matches(q) {
                match rule.effect {
                    Effect::Deny => {
                        return Decision {
                            allowed: false,
                            matched: Some((rule, subject, key)),
                        }
                    }
                    Effect::Allow if allow.is_none() => allow = Some((rule, subject, key)),
                    Effect::Allow => {}
                }
            }
        }
        Decision {
            allowed: allow.is_some(),
            matched: allow,
        }
    }

    /// Whether `identity` may use `key` with some non-admin op (with any scheme, or none): the
    /// filter `list_keys` applies.
    pub fn may_use(&self, identity: &str, key: &str) -> bool {
        let schemes = std::iter::once(None).chain(Scheme::ALL.into_iter().map(Some));
        let ops = Op::ALL.into_iter().filter(|op| !op.is_admin());
        let mut combos = ops.flat_map(|op| schemes.clone().map(move |s| (op, s)));
        combos.any(|(op, scheme)| {
            self.decide(&Query {
                identity,
                key,
                op,
                scheme,
            })
            .allowed
        })
    }

    /// Whether some allow rule grants the query through an entry that lists its identity
    /// individually (a literal identity in the rule's `identities` or in one of its groups, not
    /// a pattern). This does not decide the request (deny rules are [`Policy::decide`]'s); it
    /// is the rule of two-admin approval ([`live::LivePolicy::destroy_approval`]): an admin
    /// granted `destroy_key` only through a pattern can neither request nor approve a destroy,
    /// since one person could hold two certificates the pattern matches.
    pub fn lists_individually(&self, q: &Query<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.effect == Effect::Allow && rule.covers(q).is_some() && rule.lists(q.identity)
        })
    }

    /// The quota for `identity`: the first `[[quota]]` (in file order) naming it.
    pub fn quota_for(&self, identity: &str) -> Option<(&QuotaRule, QuotaLimit)> {
        self.quotas
            .iter()
            .find(|q| q.subjects.iter().any(|s| s.pattern.matches(identity)))
            .map(|q| (q, q.limit))
    }

    /// The `[approval]` settings.
    pub fn approval(&self) -> ApprovalConfig {
        self.approval
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of `[[quota]]` entries.
    pub fn quota_count(&self) -> usize {
        self.quotas.len()
    }
}
