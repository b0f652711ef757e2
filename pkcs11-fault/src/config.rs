//! The fault config: a small TOML file, parsed once into types that cannot be wrong (every rule
//! knows its kind, every return code is a number, every function name exists).
//!
//! The format is documented in the crate's README.md; keep the two in step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki_sys::{CKR_DEVICE_REMOVED, CKR_FUNCTION_FAILED, CK_MECHANISM_TYPE, CK_RV};
use serde::Deserialize;

use crate::mechanisms::parse_mechanism;
use crate::names::{fid, function_index, parse_rv, FUNCTIONS};
use crate::token_info::{padded16, parse_flag, TokenEdit};

/// The functions a `hide_mechanism` rule applies to.
const MECHANISM_FUNCTIONS: FunctionSet =
    FunctionSet((1u128 << fid("C_GetMechanismList")) | (1u128 << fid("C_GetMechanismInfo")));

/// A parsed, validated config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// PRNG seed for probabilities and jitter; `None`: seeded from the clock.
    pub seed: Option<u64>,
    /// The wrapped module, if the file names one.
    pub target: Option<PathBuf>,
    /// Where to write the stats file, if anywhere.
    pub stats: Option<PathBuf>,
    /// `own_handles = true`: hand the application this module's own session and object handles,
    /// never reused, and record calls that arrive with a handle from before the last
    /// `C_Finalize` (see `handles.rs`). Takes effect at the next `C_Initialize`.
    pub own_handles: bool,
    /// The rules, in file order (which is also the order in which they are applied).
    pub rules: Vec<RuleSpec>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// A name for the stats (`name = ...`; the stats say `rule<index>` without one).
    pub name: Option<String>,
    /// Which functions it applies to.
    pub functions: FunctionSet,
    /// Which token (by label) it applies to; `None`: any token, and calls with no token.
    pub token: Option<String>,
    /// When it fires.
    pub gate: Gate,
    /// What it does when it fires.
    pub action: Action,
}

/// A set of PKCS#11 functions, as a bit set over [`FUNCTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSet(u128);

impl FunctionSet {
    /// `"*"`: every function except `C_Initialize` and `C_Finalize` (name those explicitly), so a
    /// catch-all rule cannot stop a process from starting up or shutting down.
    pub fn all() -> FunctionSet {
        let mut bits = (1u128 << FUNCTIONS.len()) - 1;
        bits &= !(1u128 << fid("C_Initialize"));
        bits &= !(1u128 << fid("C_Finalize"));
        FunctionSet(bits)
    }

    /// Whether the function with index `fid` is in the set.
    pub fn contains(self, fid: usize) -> bool {
        fid < 128 && self.0 & (1u128 << fid) != 0
    }

    /// The names in the set, or `["*"]` for [`FunctionSet::all`].
    pub fn names(self) -> Vec<&'static str> {
        if self == FunctionSet::all() {
            return vec!["*"];
        }
        FUNCTIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// When a rule fires. A rule *matches* a call by function and token; every matching call is
/// counted (`n`), and the rule fires on it when all of these hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gate {
    /// Fires with this probability (a fresh draw from the rule's own PRNG stream per matching call).
    pub probability: Option<f64>,
    /// The first `after_calls` matching calls pass.
    pub after_calls: u64,
    /// Only from `.0` until `.1` (exclusive; `None`: forever) after the rule was loaded.
    pub window: Option<(Duration, Option<Duration>)>,
    /// Fires at most this many times, then the rule is spent ("the next N calls").
    pub count: Option<u64>,
    /// Stops firing for good at the application's first `C_Finalize` after the rule was loaded
    /// (a fault that only a re-initialisation of the module clears).
    pub until_finalize: bool,
}

/// What a rule does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Return `rv` instead of forwarding.
    Error { rv: CK_RV },
    /// Sleep `fixed` plus a uniform draw in `[0, jitter)`, then go on.
    Latency { fixed: Duration, jitter: Duration },
    /// Block for `max` (`None`: until the rule is lifted), then return `rv` or (`None`) forward.
    /// Lifting the rule ends the block at once, and the call is forwarded.
    Hang {
        max: Option<Duration>,
        rv: Option<CK_RV>,
    },
    /// The token is gone: hidden from `C_GetSlotList(TRUE)`, `CKR_TOKEN_NOT_PRESENT` from
    /// slot functions, `rv` from calls on its sessions.
    Remove { rv: CK_RV },
    /// A network HSM's capacity, per token: at most `max_concurrent` calls inside at once, each
    /// taking at least `call`; the rest wait in FIFO order, or get `rv` at once when
    /// `max_waiting` are already waiting.
    Capacity {
        max_concurrent: usize,
        call: Duration,
        max_waiting: Option<usize>,
        rv: CK_RV,
    },
    /// Rewrite the wrapped module's successful answer to `C_GetTokenInfo` (see
    /// `token_info.rs`): the quirks of other vendors' `CK_TOKEN_INFO`.
    TokenInfo(TokenEdit),
    /// The token lacks these mechanisms (see `mechanisms.rs`): removed from
    /// `C_GetMechanismList`'s answer, `CKR_MECHANISM_INVALID` from `C_GetMechanismInfo`.
    HideMechanism { mechanisms: Vec<CK_MECHANISM_TYPE> },
}

impl Action {
    /// The `kind` word of the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Error { .. } => "error",
            Action::Latency { .. } => "latency",
            Action::Hang { .. } => "hang",
            Action::Remove { .. } => "remove",
            Action::Capacity { .. } => "capacity",
            Action::TokenInfo(_) => "token_info",
            Action::HideMechanism { .. } => "hide_mechanism",
        }
    }
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        Config::parse(&text)
    }

    /// Parses config text. Unknown keys, unknown functions or return codes, fields that do not
    /// belong to the rule's kind and out-of-range values are errors.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // One line (the default rendering draws the offending line over several).
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            match line {
                Some(l) => format!("TOML line {l}: {}", e.message().trim()),
                None => format!("TOML: {}", e.message().trim()),
            }
        })?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (i, r) in raw.rule.into_iter().enumerate() {
            let spec = r.into_spec().map_err(|e| format!("rule {i}: {e}"))?;
            rules.push(spec);
        }
        Ok(Config {
            seed: raw.seed,
            target: raw.target,
            stats: raw.stats,
            own_handles: raw.own_handles.unwrap_or(false),
            rules,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    seed: Option<u64>,
    target: Option<PathBuf>,
    stats: Option<PathBuf>,
    own_handles: Option<bool>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    kind: String,
    name: Option<String>,
    function: Option<OneOrMany>,
    token: Option<String>,
    // gates
    probability: Option<f64>,
    after_calls: Option<u64>,
    window_s: Option<Vec<f64>>,
    count: Option<u64>,
    until_finalize: Option<bool>,
    // actions
    rv: Option<RawRv>,
    fixed_ms: Option<f64>,
    jitter_ms: Option<f64>,
    hang_ms: Option<f64>,
    max_concurrent: Option<u64>,
    call_ms: Option<f64>,
    max_waiting: Option<u64>,
    utc_time: Option<String>,
    label_padding: Option<String>,
    serial: Option<String>,
    set_flags: Option<Vec<String>>,
    garbage_numbers: Option<bool>,
    mechanism: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRv {
    Number(u64),
    Text(String),
}

impl RawRule {
    fn into_spec(self) -> Result<RuleSpec, String> {
        let functions = self.functions()?;
        let gate = self.gate()?;
        let rv = match &self.rv {
            None => None,
            Some(RawRv::Number(n)) => Some(*n as CK_RV),
            Some(RawRv::Text(t)) => {
                Some(parse_rv(t).ok_or_else(|| format!("unknown return code {t:?}"))?)
            }
        };
        let kind = self.kind.as_str();
        let allowed: &[&str] = match kind {
            "error" => &["rv"],
            "latency" => &["fixed_ms", "jitter_ms"],
            "hang" => &["hang_ms", "rv"],
            "remove" => &["rv"],
            "capacity" => &["max_concurrent", "call_ms", "max_waiting", "rv"],
            "token_info" => &[
                "utc_time",
                "label_padding",
                "serial",
                "set_flags",
                "garbage_numbers",
            ],
            "hide_mechanism" => &["mechanism"],
            other => {
                return Err(format!(
                    "unknown kind {other:?} (error | latency | hang | remove | capacity | \
                     token_info | hide_mechanism)"
                ))
            }
        };
        for (field, present) in [
            ("rv", self.rv.is_some()),
            ("fixed_ms", self.fixed_ms.is_some()),
            ("jitter_ms", self.jitter_ms.is_some()),
            ("hang_ms", self.hang_ms.is_some()),
            ("max_concurrent", self.max_concurrent.is_some()),
            ("call_ms", self.call_ms.is_some()),
            ("max_waiting", self.max_waiting.is_some()),
            ("utc_time", self.utc_time.is_some()),
            ("label_padding", self.label_padding.is_some()),
            ("serial", self.serial.is_some()),
            ("set_flags", self.set_flags.is_some()),
            ("garbage_numbers", self.garbage_numbers.is_some()),
            ("mechanism", self.mechanism.is_some()),
        ] {
            if present && !allowed.contains(&field) {
                return Err(format!("`{field}` does not apply to kind {kind:?}"));
            }
        }
        let action = match kind {
            "error" => Action::Error {
                rv: rv.ok_or("kind \"error\" needs `rv`")?,
            },
            "latency" => Action::Latency {
                fixed: ms("fixed_ms", self.fixed_ms.unwrap_or(0.0))?,
                jitter: ms("jitter_ms", self.jitter_ms.unwrap_or(0.0))?,
            },
            "hang" => Action::Hang {
                max: self.hang_ms.map(|m| ms("hang_ms", m)).transpose()?,
                rv,
            },
            "remove" => {
                if functions != FunctionSet::all() {
                    return Err("kind \"remove\" applies to the whole token: no `function`".into());
                }
                if gate.probability.is_some() || gate.count.is_some() {
                    return Err(
                        "kind \"remove\" is a token state: only `after_calls` and `window_s` gate it"
                            .into(),
                    );
                }
                Action::Remove {
                    rv: rv.unwrap_or(CKR_DEVICE_REMOVED),
                }
            }
            "token_info" => Action::TokenInfo(self.token_edit(functions)?),
            "hide_mechanism" => self.hide_mechanism(functions)?,
            _ => {
                let max_concurrent = self
                    .max_concurrent
                    .ok_or("kind \"capacity\" needs `max_concurrent`")?;
                if max_concurrent == 0 {
                    return Err("`max_concurrent` must be at least 1".into());
                }
                Action::Capacity {
                    max_concurrent: usize::try_from(max_concurrent)
                        .map_err(|_| "`max_concurrent` is too large")?,
                    call: ms("call_ms", self.call_ms.unwrap_or(0.0))?,
                    max_waiting: self
                        .max_waiting
                        .map(usize::try_from)
                        .transpose()
                        .map_err(|_| "`max_waiting` is too large")?,
                    rv: rv.unwrap_or(CKR_FUNCTION_FAILED),
                }
            }
        };
        Ok(RuleSpec {
            name: self.name,
            functions,
            token: self.token,
            gate,
            action,
        })
    }

    /// The fields of a `token_info` rule; `functions` must be `C_GetTokenInfo` (the default
    /// for this kind, as `"*"` is the default of the others).
    fn token_edit(&self, functions: FunctionSet) -> Result<TokenEdit, String> {
        if self.function.is_some() && functions != FunctionSet(1u128 << fid("C_GetTokenInfo")) {
            return Err("kind \"token_info\" rewrites C_GetTokenInfo answers only".into());
        }
        let utc_time = match &self.utc_time {
            None => None,
            Some(t) => Some(padded16(t).ok_or("`utc_time` is at most 16 bytes")?),
        };
        let label_nul_padded = match self.label_padding.as_deref() {
            None | Some("blank") => false,
            Some("nul") => true,
            Some(other) => {
                return Err(format!("`label_padding` {other:?} is \"nul\" or \"blank\""))
            }
        };
        let serial = match &self.serial {
            None => None,
            Some(s) => Some(padded16(s).ok_or("`serial` is at most 16 bytes")?),
        };
        let mut set_flags = 0;
        for f in self.set_flags.iter().flatten() {
            set_flags |= parse_flag(f).ok_or_else(|| format!("unknown token flag {f:?}"))?;
        }
        Ok(TokenEdit {
            utc_time,
            label_nul_padded,
            serial,
            set_flags,
            garbage_numbers: self.garbage_numbers.unwrap_or(false),
        })
    }

    /// The fields of a `hide_mechanism` rule; `functions` must be `C_GetMechanismList`,
    /// `C_GetMechanismInfo` or both (the default for this kind).
    fn hide_mechanism(&self, functions: FunctionSet) -> Result<Action, String> {
        if functions.0 & !MECHANISM_FUNCTIONS.0 != 0 {
            return Err(
                "kind \"hide_mechanism\" applies to C_GetMechanismList and C_GetMechanismInfo only"
                    .into(),
            );
        }
        let names: Vec<&str> = match &self.mechanism {
            None => return Err("kind \"hide_mechanism\" needs `mechanism`".into()),
            Some(OneOrMany::One(n)) => vec![n.as_str()],
            Some(OneOrMany::Many(v)) => v.iter().map(String::as_str).collect(),
        };
        if names.is_empty() {
            return Err("`mechanism` is an empty list".into());
        }
        let mechanisms = names
            .into_iter()
            .map(|n| parse_mechanism(n).ok_or_else(|| format!("unknown mechanism {n:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Action::HideMechanism { mechanisms })
    }

    fn functions(&self) -> Result<FunctionSet, String> {
        let names: Vec<&str> = match &self.function {
            None if self.kind == "token_info" => {
                return Ok(FunctionSet(1u128 << fid("C_GetTokenInfo")))
            }
            None if self.kind == "hide_mechanism" => return Ok(MECHANISM_FUNCTIONS),
            None => return Ok(FunctionSet::all()),
            Some(OneOrMany::One(n)) => vec![n.as_str()],
            Some(OneOrMany::Many(v)) => v.iter().map(String::as_str).collect(),
        };
        if names.is_empty() {
            return Err("`function` is an empty list".into());
        }
        let mut bits = 0u128;
        for n in names {
            if n == "*" {
                bits |= FunctionSet::all().0;
                continue;
            }
            if n == "C_GetFunctionList" {
                return Err("C_GetFunctionList is answered by this module itself".into());
            }
            let i = function_index(n).ok_or_else(|| format!("unknown function {n:?}"))?;
            bits |= 1u128 << i;
        }
        Ok(FunctionSet(bits))
    }

    fn gate(&self) -> Result<Gate, String> {
        if let Some(p) = self.probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("`probability` {p} is not within 0..=1"));
            }
        }
        let window = match &self.window_s {
            None => None,
            Some(w) => {
                let (from, until) = match w.as_slice() {
                    [from] => (*from, None),
                    [from, until] => (*from, Some(*until)),
                    _ => return Err("`window_s` is [from] or [from, until], in seconds".into()),
                };
                let from = secs("window_s", from)?;
                let until = match until {
                    Some(u) if u.is_infinite() && u > 0.0 => None,
                    Some(u) => Some(secs("window_s", u)?),
                    None => None,
                };
                if let Some(u) = until {
                    if u < from {
                        return Err("`window_s`: until is before from".into());
                    }
                }
                Some((from, until))
            }
        };
        Ok(Gate {
            probability: self.probability,
            after_calls: self.after_calls.unwrap_or(0),
            window,
            count: self.count,
            until_finalize: self.until_finalize.unwrap_or(false),
        })
    }
}

fn ms(field: &str, v: f64) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=86_400_000.0).contains(&v) {
        return Err(format!("`{field}` {v} is not a duration in milliseconds"));
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

fn secs(field: &str, v: f64) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=1.0e9).contains(&v) {
        return Err(format!("`{field}` {v} is not a time in seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cryptoki_sys::{CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, CKR_DEVICE_ERROR};

    #[test]
    fn empty_is_pass_through() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_example() {
        let c = Config::parse(
            r#"
            seed = 42
            target = "/usr/lib/softhsm/libsofthsm2.so"
            stats = "/tmp/s.json"
            own_handles = true
            [[rule]]
            function = "C_Sign"
            token = "signerd-0"
            kind = "error"
            rv = "CKR_DEVICE_ERROR"
            probability = 0.01
            after_calls = 100
            window_s = [5.0, 10.0]
            [[rule]]
            kind = "latency"
            function = ["C_Sign", "C_SignInit"]
            fixed_ms = 2
            jitter_ms = 1
            [[rule]]
            kind = "hang"
            function = "C_Sign"
            hang_ms = 500
            rv = 0x30
            [[rule]]
            kind = "remove"
            token = "signerd-1"
            window_s = [1.0]
            [[rule]]
            kind = "capacity"
            name = "cloudhsm"
            token = "signerd-1"
            max_concurrent = 8
            call_ms = 2
            max_waiting = 16
            "#,
        )
        .unwrap();
        assert_eq!(c.seed, Some(42));
        assert!(c.own_handles);
        assert_eq!(c.rules.len(), 5);
        let r = &c.rules[0];
        assert_eq!(
            r.action,
            Action::Error {
                rv: CKR_DEVICE_ERROR
            }
        );
        assert!(r.functions.contains(fid("C_Sign")));
        assert!(!r.functions.contains(fid("C_SignInit")));
        assert_eq!(r.gate.after_calls, 100);
        assert_eq!(
            r.gate.window,
            Some((Duration::from_secs(5), Some(Duration::from_secs(10))))
        );
        assert_eq!(c.rules[1].functions.names(), vec!["C_SignInit", "C_Sign"]);
        assert_eq!(
            c.rules[2].action,
            Action::Hang {
                max: Some(Duration::from_millis(500)),
                rv: Some(CKR_DEVICE_ERROR)
            }
        );
        assert_eq!(
            c.rules[3].action,
            Action::Remove {
                rv: CKR_DEVICE_REMOVED
            }
        );
        assert_eq!(c.rules[3].gate.window, Some((Duration::from_secs(1), None)));
        assert_eq!(c.rules[4].name.as_deref(), Some("cloudhsm"));
        assert_eq!(c.rules[3].name, None);
    }

    #[test]
    fn hide_mechanism_rules() {
        let c = Config::parse(
            "[[rule]]\nkind = \"hide_mechanism\"\ntoken = \"signerd-1\"\n\
             mechanism = \"CKM_EC_EDWARDS_KEY_PAIR_GEN\"\n\
             [[rule]]\nkind = \"hide_mechanism\"\nfunction = \"C_GetMechanismInfo\"\n\
             mechanism = [\"eddsa\", \"0x1057\"]\n",
        )
        .unwrap();
        let r = &c.rules[0];
        assert_eq!(
            r.functions.names(),
            vec!["C_GetMechanismList", "C_GetMechanismInfo"]
        );
        assert_eq!(
            r.action,
            Action::HideMechanism {
                mechanisms: vec![CKM_EC_EDWARDS_KEY_PAIR_GEN]
            }
        );
        assert_eq!(r.action.kind(), "hide_mechanism");
        assert_eq!(c.rules[1].functions.names(), vec!["C_GetMechanismInfo"]);
        assert_eq!(
            c.rules[1].action,
            Action::HideMechanism {
                mechanisms: vec![CKM_EDDSA, 0x1057]
            }
        );
        for (text, err) in [
            ("[[rule]]\nkind = \"hide_mechanism\"\n", "needs `mechanism`"),
            (
                "[[rule]]\nkind = \"hide_mechanism\"\nmechanism = \"CKM_NOPE\"\n",
                "unknown mechanism",
            ),
            (
                "[[rule]]\nkind = \"hide_mechanism\"\nmechanism = []\n",
                "empty list",
            ),
            (
                "[[rule]]\nkind = \"hide_mechanism\"\nfunction = \"C_Sign\"\nmechanism = \"eddsa\"\n",
                "C_GetMechanismList and C_GetMechanismInfo only",
            ),
            (
                "[[rule]]\nkind = \"error\"\nrv = 5\nmechanism = \"eddsa\"\n",
                "does not apply",
            ),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(err), "{text}: {e}");
        }
    }

    #[test]
    fn token_info_rules() {
        let c = Config::parse(
            "[[rule]]\nkind = \"token_info\"\ntoken = \"signerd-0\"\nutc_time = \"kryoptic\"\n\
             label_padding = \"nul\"\nserial = \"\"\n\
             set_flags = [\"CKF_USER_PIN_LOCKED\", \"user_pin_to_be_changed\"]\n\
             garbage_numbers = true\n",
        )
        .unwrap();
        let r = &c.rules[0];
        assert_eq!(r.functions.names(), vec!["C_GetTokenInfo"]);
        assert_eq!(
            r.action,
            Action::TokenInfo(TokenEdit {
                utc_time: Some(*b"kryoptic        "),
                label_nul_padded: true,
                serial: Some([b' '; 16]),
                set_flags: cryptoki_sys::CKF_USER_PIN_LOCKED
                    | cryptoki_sys::CKF_USER_PIN_TO_BE_CHANGED,
                garbage_numbers: true,
            })
        );
        assert_eq!(r.action.kind(), "token_info");
    }

    #[test]
    fn star_leaves_out_initialize_and_finalize() {
        let all = FunctionSet::all();
        assert!(all.contains(fid("C_Sign")));
        assert!(all.contains(fid("C_WaitForSlotEvent")));
        assert!(!all.contains(fid("C_Initialize")));
        assert!(!all.contains(fid("C_Finalize")));
        let c = Config::parse(
            "[[rule]]\nkind = \"error\"\nrv = 5\nfunction = [\"*\", \"C_Finalize\"]\n",
        )
        .unwrap();
        assert!(c.rules[0].functions.contains(fid("C_Finalize")));
    }

    #[test]
    fn errors_are_reported() {
        for (text, want) in [
            ("[[rule]]\nkind = \"boom\"\n", "unknown kind"),
            ("[[rule]]\nkind = \"error\"\n", "needs `rv`"),
            (
                "[[rule]]\nkind = \"error\"\nrv = \"CKR_NOPE\"\n",
                "unknown return code",
            ),
            (
                "[[rule]]\nkind = \"error\"\nrv = 5\nfunction = \"C_Sing\"\n",
                "unknown function",
            ),
            (
                "[[rule]]\nkind = \"error\"\nrv = 5\nprobability = 1.5\n",
                "probability",
            ),
            (
                "[[rule]]\nkind = \"error\"\nrv = 5\nfixed_ms = 1\n",
                "does not apply",
            ),
            ("[[rule]]\nkind = \"latency\"\nfixed_ms = -1\n", "fixed_ms"),
            (
                "[[rule]]\nkind = \"remove\"\nfunction = \"C_Sign\"\n",
                "whole token",
            ),
            (
                "[[rule]]\nkind = \"remove\"\nprobability = 0.5\n",
                "token state",
            ),
            ("[[rule]]\nkind = \"capacity\"\n", "max_concurrent"),
            (
                "[[rule]]\nkind = \"capacity\"\nmax_concurrent = 0\n",
                "at least 1",
            ),
            (
                "[[rule]]\nkind = \"error\"\nrv = 5\nwindow_s = [3.0, 1.0]\n",
                "before",
            ),
            ("[[rule]]\nkind = \"error\"\nrv = 5\nbogus = 1\n", "bogus"),
            (
                "[[rule]]\nkind = \"token_info\"\nfunction = \"C_Sign\"\n",
                "C_GetTokenInfo answers only",
            ),
            (
                "[[rule]]\nkind = \"token_info\"\nserial = \"12345678901234567\"\n",
                "at most 16",
            ),
            (
                "[[rule]]\nkind = \"token_info\"\nset_flags = [\"CKF_NOPE\"]\n",
                "unknown token flag",
            ),
            (
                "[[rule]]\nkind = \"token_info\"\nlabel_padding = \"tabs\"\n",
                "label_padding",
            ),
            (
                "[[rule]]\nkind = \"error\"\nrv = 5\nserial = \"\"\n",
                "does not apply",
            ),
            ("sed = 1\n", "sed"),
            ("[[rule]\n", ""),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
