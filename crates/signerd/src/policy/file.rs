//! The policy file: TOML, unknown keys rejected, compiled once into a [`Policy`]. Every error
//! names the table and value that is wrong.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::glob::Glob;
use super::quota::QuotaLimit;
use super::{approval, parse_op, ApprovalConfig, Effect, OpSet, Policy, QuotaRule, Rule, Subject};
use crate::tls::check_identity_pattern;
use signer_proto::keys::{KeyName, Scheme};

/// Largest policy file read (bytes). A policy is a few kilobytes; this bounds a mistake.
pub const MAX_POLICY_BYTES: u64 = 4 << 20;
/// Most rules, quotas, groups and members per group.
const MAX_ENTRIES: usize = 10_000;

/// Why a policy file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read (or is larger than [`MAX_POLICY_BYTES`]).
    #[error("cannot read policy {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error or size.
        reason: String,
    },
    /// TOML syntax error, unknown key, or wrong type (the message has line and column).
    #[error("policy {path}: {reason}")]
    Parse {
        /// The file (`<text>` when parsed from a string).
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A value is out of range, unknown or inconsistent.
    #[error("policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// Reads and compiles a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let read_err = |reason: String| PolicyError::Read {
            path: path.to_owned(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| read_err(e.to_string()))?
            .len();
        if len > MAX_POLICY_BYTES {
            return Err(read_err(format!(
                "{len} bytes; a policy file may hold at most {MAX_POLICY_BYTES}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
        Policy::parse(&text).map_err(|e| match e {
            PolicyError::Parse { reason, .. } => PolicyError::Parse {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and compiles policy text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: PathBuf::from("<text>"),
            reason: e.to_string(),
        })?;
        raw.compile().map_err(PolicyError::Invalid)
    }
}

/// Parses `500ms`, `30s`, `10m`, `1h` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} has no unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("duration {s:?}: unit must be ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    quota: Vec<RawQuota>,
    #[serde(default)]
    approval: Option<RawApproval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    effect: RawEffect,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    keys: Vec<String>,
    ops: Vec<String>,
    #[serde(default)]
    schemes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEffect {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    max_inflight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    #[serde(default)]
    destroy_key: bool,
    #[serde(default)]
    window: Option<String>,
}

impl RawPolicy {
    fn compile(self) -> Result<Policy, String> {
        if self.groups.len() > MAX_ENTRIES
            || self.rule.len() > MAX_ENTRIES
            || self.quota.len() > MAX_ENTRIES
        {
            return Err(format!(
                "at most {MAX_ENTRIES} groups, rules and quotas each"
            ));
        }
        let mut groups: BTreeMap<String, Arc<str>> = BTreeMap::new();
        for (name, members) in &self.groups {
            if name.is_empty() {
                return Err("groups: a group name is empty".into());
            }
            if members.is_empty() || members.len() > MAX_ENTRIES {
                return Err(format!("groups.{name}: list 1 to {MAX_ENTRIES} identities"));
            }
            for m in members {
                identity_pattern(&format!("groups.{name}"), m)?;
            }
            groups.insert(name.clone(), Arc::from(name.as_str()));
        }
        let subjects = |at: &str, identities: &[String], names: &[String]| {
            subjects(at, identities, names, &self.groups, &groups)
        };

        let mut rules = Vec::with_capacity(self.rule.len());
        let mut rule_names = HashSet::new();
        for (i, raw) in self.rule.iter().enumerate() {
            let name = entry_name(raw.name.as_deref(), "rule", i, &mut rule_names)?;
            let at = format!("rule {name:?}");
            let subjects = subjects(&at, &raw.identities, &raw.groups)?;
            if raw.keys.is_empty() {
                return Err(format!(
                    "{at}: keys is empty; list key names or patterns (\"*\" for every key)"
                ));
            }
            let keys = raw
                .keys
                .iter()
                .map(|k| key_pattern(&at, k))
                .collect::<Result<Vec<_>, _>>()?;
            let ops = ops(&at, &raw.ops)?;
            let schemes = match &raw.schemes {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(format!(
                        "{at}: schemes is empty; leave it out to allow every scheme"
                    ))
                }
                Some(list) => Some(
                    list.iter()
                        .map(|s| s.parse::<Scheme>().map_err(|e| format!("{at}: {e}")))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            rules.push(Rule {
                name,
                effect: match raw.effect {
                    RawEffect::Allow => Effect::Allow,
                    RawEffect::Deny => Effect::Deny,
                },
                subjects,
                keys,
                ops,
                schemes,
            });
        }

        let mut quotas = Vec::with_capacity(self.quota.len());
        let mut quota_names = HashSet::new();
        for (i, raw) in self.quota.iter().enumerate() {
            let name = entry_name(raw.name.as_deref(), "quota", i, &mut quota_names)?;
            let at = format!("quota {name:?}");
            let subjects = subjects(&at, &raw.identities, &raw.groups)?;
            let limit = QuotaLimit::new(raw.rate, raw.burst, raw.max_inflight)
                .map_err(|e| format!("{at}: {e}"))?;
            quotas.push(QuotaRule {
                name,
                subjects,
                limit,
            });
        }

        let approval = match self.approval {
            None => ApprovalConfig::default(),
            Some(a) => {
                let window = match a.window.as_deref() {
                    None => approval::DEFAULT_WINDOW,
                    Some(w) => parse_duration(w).map_err(|e| format!("approval.window: {e}"))?,
                };
                if !(approval::MIN_WINDOW..=approval::MAX_WINDOW).contains(&window) {
                    return Err(format!(
                        "approval.window must be between {:?} and {:?}",
                        approval::MIN_WINDOW,
                        approval::MAX_WINDOW
                    ));
                }
                ApprovalConfig {
                    destroy_key: a.destroy_key,
                    window,
                }
            }
        };
        Ok(Policy {
            rules,
            quotas,
            approval,
        })
    }
}

/// The entry's own name (unique among its kind), or `kind[N]` with N counted from 1.
fn entry_name(
    name: Option<&str>,
    kind: &str,
    index: usize,
    seen: &mut HashSet<String>,
) -> Result<Arc<str>, String> {
    let name = match name {
        Some("") => return Err(format!("{kind}[{}]: name is empty", index + 1)),
        Some(n) => n.to_owned(),
        None => format!("{kind}[{}]", index + 1),
    };
    if !seen.insert(name.clone()) {
        return Err(format!("{kind} name {name:?} is used twice"));
    }
    Ok(Arc::from(name))
}

/// A rule's or quota's identities plus the members of its groups; at least one.
fn subjects(
    at: &str,
    identities: &[String],
    group_names: &[String],
    members: &BTreeMap<String, Vec<String>>,
    shared: &BTreeMap<String, Arc<str>>,
) -> Result<Vec<Subject>, String> {
    if identities.is_empty() && group_names.is_empty() {
        return Err(format!("{at}: name at least one identity or group"));
    }
    let mut out = Vec::new();
    for id in identities {
        out.push(Subject {
            pattern: identity_pattern(at, id)?,
            group: None,
        });
    }
    for g in group_names {
        let (Some(list), Some(name)) = (members.get(g), shared.get(g)) else {
            return Err(format!(
                "{at}: unknown group {g:?} (define it under [groups])"
            ));
        };
        out.extend(list.iter().map(|id| Subject {
            pattern: Glob::new(id),
            group: Some(Arc::clone(name)),
        }));
    }
    Ok(out)
}

/// An identity or an identity pattern ([`check_identity_pattern`]: no control character, no
/// surrounding whitespace, no `[` `]`). Identities never contain `*` or `?`, so an entry with
/// one is a glob and an entry without is one identity.
fn identity_pattern(at: &str, id: &str) -> Result<Glob, String> {
    check_identity_pattern(id).map_err(|reason| format!("{at}: identity {id:?} {reason}"))?;
    Ok(Glob::new(id))
}

/// A key name or a pattern: a literal must be a valid key name (a typo would silently match
/// nothing); a pattern may use only key-name characters and `*`, `?`.
fn key_pattern(at: &str, k: &str) -> Result<Glob, String> {
    let glob = Glob::new(k);
    if glob.is_literal() {
        KeyName::new(k).map_err(|e| format!("{at}: {e}"))?;
    } else if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?'))
    {
        return Err(format!(
            "{at}: key pattern {k:?} may use only [A-Za-z0-9._-] and the wildcards * and ?"
        ));
    }
    Ok(glob)
}

fn ops(at: &str, names: &[String]) -> Result<OpSet, String> {
    if names.is_empty() {
        return Err(format!("{at}: ops is empty; list ops or \"*\""));
    }
    let mut set = OpSet::default();
    for n in names {
        if n == "*" {
            set = OpSet::ALL;
            continue;
        }
        let op = parse_op(n).ok_or_else(|| {
            format!(
                "{at}: unknown op {n:?}; expected *, sign, sign_batch, verify, public_key, list, \
                 create_key, rotate_key, retire_key or destroy_key"
            )
        })?;
        set.insert(op);
    }
    Ok(set)
}
