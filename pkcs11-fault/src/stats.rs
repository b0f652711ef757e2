//! Counters, as the JSON document written to the `stats` file and returned by
//! `certnode_fault_stats_json` (see [`crate::Control`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the module has seen and done since it was loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Successful config (re)loads; 0 until a config was loaded.
    pub generation: u64,
    /// Config files that could not be used (each bad version counted once).
    pub config_errors: u64,
    /// `SIGNERD_FAULT_CONFIG`, if set.
    pub config: Option<String>,
    /// The wrapped module, once loaded.
    pub target: Option<String>,
    /// Calls per PKCS#11 function (functions never called are left out).
    pub calls: BTreeMap<String, u64>,
    /// Successful `C_Finalize` calls (see `until_finalize`).
    pub finalizes: u64,
    /// Faults injected by all rules, including rules since removed.
    pub injected_total: u64,
    /// The rules in force, in file order.
    pub rules: Vec<RuleStats>,
    /// Whether the application gets this module's own handles (`own_handles`, as of the last
    /// `C_Initialize`).
    #[serde(default)]
    pub own_handles: bool,
    /// With `own_handles`: calls, per function, that arrived with a session handle handed out
    /// before the last `C_Finalize` (answered `CKR_SESSION_HANDLE_INVALID`, not forwarded).
    #[serde(default)]
    pub stale_sessions: BTreeMap<String, u64>,
    /// With `own_handles`: calls, per function, that arrived with an object handle handed out
    /// before the last `C_Finalize` (answered `CKR_OBJECT_HANDLE_INVALID`, not forwarded).
    #[serde(default)]
    pub stale_objects: BTreeMap<String, u64>,
}

/// One rule's counters (kept across reloads while the rule's text is unchanged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    /// `name` from the file, or `rule<index>`.
    pub name: String,
    /// error | latency | hang | remove | capacity.
    pub kind: String,
    /// Function names, or `["*"]`.
    pub functions: Vec<String>,
    /// Token label, if the rule names one.
    pub token: Option<String>,
    /// Calls the rule matched (by function and token; `remove`: calls on the token).
    pub matched: u64,
    /// Faults it injected: error returns, delays, hangs, calls failed or slot lists filtered by
    /// a removal, capacity waits cut short with the busy code.
    pub injected: u64,
    /// Capacity: calls answered with the busy code.
    pub busy: u64,
    /// Capacity: the most calls inside at once, over its tokens.
    pub max_inflight: u64,
    /// Capacity: the longest wait queue seen.
    pub max_waiting: u64,
    /// Seconds since the rule was first loaded.
    pub age_s: f64,
}

impl Stats {
    /// Faults injected by the rule called `name` (0 if there is none).
    pub fn injected(&self, name: &str) -> u64 {
        self.rule(name).map_or(0, |r| r.injected)
    }

    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleStats> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Calls that arrived with a session or object handle from before the last `C_Finalize`.
    pub fn stale_calls(&self) -> u64 {
        self.stale_sessions
            .values()
            .chain(self.stale_objects.values())
            .sum()
    }

    /// Calls of one function.
    pub fn calls(&self, function: &str) -> u64 {
        self.calls.get(function).copied().unwrap_or(0)
    }
}

/// Writes `json` to `path` atomically (a temporary file beside it, then rename), so a reader
/// never sees half a document.
pub fn write_atomic(path: &Path, json: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(json)?;
        f.write_all(b"\n")?;
    }
    std::fs::rename(&tmp, path)
}
