//! `[batch]`: Merkle batch signatures (docs/BATCH.md). Which keys may answer a request with one
//! HSM signature over a Merkle tree root plus the request's inclusion proof, and how big trees get.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::policy::glob::Glob;

/// Whether a key signs in batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// Always plain signatures (the default).
    #[default]
    Off,
    /// A batch signature for requests that accept one (`ACCEPT_BATCH_SIGNATURE`); plain for
    /// the others.
    Allowed,
    /// Only batch signatures: requests that do not accept one are refused (FAILED_PRECONDITION).
    Required,
}

/// Default largest tree (leaves).
pub const DEFAULT_MAX_TREE: usize = 1024;
/// Default most requests waiting for a tree, per key and scheme.
pub const DEFAULT_MAX_PENDING: usize = 65_536;

/// `[batch]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Mode of keys not named in `keys` (default `off`).
    pub default: BatchMode,
    /// Mode per key: exact names, or glob patterns with `*` and `?`. An exact name wins over
    /// patterns; among patterns the longest (most specific) wins.
    pub keys: BTreeMap<String, BatchMode>,
    /// Most leaves in one tree (default 1024, at most 4096).
    pub max_tree: usize,
    /// Most requests waiting for a tree per (key, version, scheme) (default 65536); beyond it
    /// requests are answered OVERLOADED.
    pub max_pending: usize,
    /// Trees of one (key, version, scheme) being signed at once (default: the
    /// engine's workers). While all are busy, new requests gather into the next tree.
    pub max_trees_in_flight: Option<usize>,
}

impl Default for BatchSection {
    fn default() -> Self {
        BatchSection {
            default: BatchMode::Off,
            keys: BTreeMap::new(),
            max_tree: DEFAULT_MAX_TREE,
            max_pending: DEFAULT_MAX_PENDING,
            max_trees_in_flight: None,
        }
    }
}

/// The per-key modes of a [`BatchSection`], compiled once: exact names in a map, globs longest
/// first, so a lookup per request neither allocates nor recompiles patterns.
#[derive(Clone, Debug)]
pub struct BatchModes {
    default: BatchMode,
    exact: BTreeMap<String, BatchMode>,
    globs: Vec<(Glob, BatchMode)>,
}

impl BatchModes {
    /// The batch mode of key `name`: its exact entry, else the longest matching glob, else the
    /// default.
    pub fn mode(&self, name: &str) -> BatchMode {
        if let Some(m) = self.exact.get(name) {
            return *m;
        }
        self.globs
            .iter()
            .find(|(g, _)| g.matches(name))
            .map_or(self.default, |(_, m)| *m)
    }
}

impl BatchSection {
    /// The modes, compiled for lookups.
    pub fn modes(&self) -> BatchModes {
        let (exact, globs): (Vec<_>, Vec<_>) = self
            .keys
            .iter()
            .partition(|(p, _)| Glob::new(p).is_literal());
        let mut globs: Vec<(Glob, BatchMode)> =
            globs.into_iter().map(|(p, m)| (Glob::new(p), *m)).collect();
        // Longest (most specific) first; between equally long globs, the first in name order.
        globs.sort_by_key(|(g, _)| std::cmp::Reverse(g.as_str().len()));
        BatchModes {
            default: self.default,
            exact: exact.into_iter().map(|(p, m)| (p.clone(), *m)).collect(),
            globs,
        }
    }

    /// The batch mode of key `name` (see [`BatchModes::mode`]).
    pub fn mode(&self, name: &str) -> BatchMode {
        self.modes().mode(name)
    }

    /// Whether any key can sign in batches.
    pub fn enabled(&self) -> bool {
        self.default != BatchMode::Off || self.keys.values().any(|m| *m != BatchMode::Off)
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=signer_proto::merkle::MAX_TREE).contains(&self.max_tree) {
            return Err(format!(
                "batch.max_tree must be between 1 and {}",
                signer_proto::merkle::MAX_TREE
            ));
        }
        if !(1..=1 << 24).contains(&self.max_pending) {
            return Err("batch.max_pending must be between 1 and 16777216".into());
        }
        if matches!(self.max_trees_in_flight, Some(0) | Some(1025..)) {
            return Err("batch.max_trees_in_flight must be between 1 and 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> BatchSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn exact_names_win_then_the_longest_pattern_then_the_default() {
        let b = section(
            r#"
            default = "off"
            [keys]
            "pay-*" = "allowed"
            "pay-eu-*" = "required"
            "pay-eu-legacy" = "off"
            "#,
        );
        assert_eq!(b.mode("pay-us-1"), BatchMode::Allowed);
        assert_eq!(b.mode("pay-eu-1"), BatchMode::Required);
        assert_eq!(b.mode("pay-eu-legacy"), BatchMode::Off);
        assert_eq!(b.mode("other"), BatchMode::Off);
        assert!(b.enabled());
        assert!(!BatchSection::default().enabled());
        let all = section("default = \"allowed\"");
        assert_eq!(all.mode("anything"), BatchMode::Allowed);
    }

    #[test]
    fn limits_are_checked() {
        assert!(BatchSection::default().validate().is_ok());
        assert!(section("max_tree = 0").validate().is_err());
        assert!(section("max_tree = 4097").validate().is_err());
        assert!(section("max_tree = 4096").validate().is_ok());
        assert!(section("max_pending = 0").validate().is_err());
        assert!(section("max_trees_in_flight = 0").validate().is_err());
        assert!(toml::from_str::<BatchSection>("mode = \"on\"").is_err());
        assert!(toml::from_str::<BatchSection>("default = \"sometimes\"").is_err());
    }
}
