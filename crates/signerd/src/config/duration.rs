//! Durations in the config: a string with its unit, parsed by `humantime` (`"30ms"`, `"10s"`,
//! `"2m"`, `"1h 30m"`; units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, and their long forms). A bare
//! number is refused: its unit would be a guess.
//!
//! Durations used to be numbers of milliseconds in keys ending in `_ms` (one, `_us`, in
//! microseconds). [`refuse_renamed`] turns such a key into an error that names its replacement,
//! so an old config stops at load with a message saying what to write instead.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// The longest duration accepted anywhere: `u64::MAX` milliseconds (what the `_ms` keys could
/// hold), so that no configured time can overflow an `Instant`.
pub const MAX: Duration = Duration::from_millis(u64::MAX);

/// What a duration looks like, for error messages.
const EXAMPLE: &str = "a duration with its unit, e.g. \"30ms\", \"10s\" or \"2m\"";

/// Parses a duration with its unit.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{text:?} is not {EXAMPLE}: {e}"))?;
    if d > MAX {
        return Err(format!("{text:?} is too long"));
    }
    Ok(d)
}

/// Writes a duration the way [`parse`] reads it (`30ms`, `10s`, `1m 30s`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `#[serde(deserialize_with = "...")]` for a [`Duration`] written as [`parse`] reads it.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXAMPLE)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{v} has no unit: write {EXAMPLE} (\"{v}ms\" for {v} milliseconds)"
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{v} has no unit: write {EXAMPLE} (\"{v}ms\" for {v} milliseconds)"
        )))
    }
}

/// The unit an old key's number was in.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Millis,
    Micros,
}

/// Every key that was renamed when durations got their units: (old key, new key, old unit),
/// both keys with their table (`engine.max_queue_wait_ms`).
const RENAMED: &[(&str, &str, Unit)] = &[
    (
        "engine.max_queue_wait_ms",
        "engine.max_queue_wait",
        Unit::Millis,
    ),
    (
        "engine.burst_queue_wait_ms",
        "engine.burst_queue_wait",
        Unit::Millis,
    ),
    (
        "engine.hang_timeout_ms",
        "engine.hang_timeout",
        Unit::Millis,
    ),
    (
        "server.handshake_timeout_ms",
        "server.handshake_timeout",
        Unit::Millis,
    ),
    (
        "server.idle_timeout_ms",
        "server.idle_timeout",
        Unit::Millis,
    ),
    (
        "server.read_timeout_ms",
        "server.read_timeout",
        Unit::Millis,
    ),
    (
        "server.default_deadline_ms",
        "server.default_deadline",
        Unit::Millis,
    ),
    (
        "server.max_deadline_ms",
        "server.max_deadline",
        Unit::Millis,
    ),
    (
        "server.shutdown_grace_ms",
        "server.shutdown_grace",
        Unit::Millis,
    ),
    (
        "audit.checkpoint_interval_ms",
        "audit.checkpoint_interval",
        Unit::Millis,
    ),
    (
        "audit.commit_interval_us",
        "audit.commit_interval",
        Unit::Micros,
    ),
    ("breaker.window_ms", "breaker.window", Unit::Millis),
    ("breaker.slow_call_ms", "breaker.slow_call", Unit::Millis),
    ("breaker.open_base_ms", "breaker.open_base", Unit::Millis),
    ("breaker.open_max_ms", "breaker.open_max", Unit::Millis),
    (
        "breaker.probe_timeout_ms",
        "breaker.probe_timeout",
        Unit::Millis,
    ),
];

/// Refuses the keys of [`RENAMED`] in a config (read as a plain TOML table): one sentence per key
/// found, naming its replacement with the value it stands for (`` `engine.max_queue_wait_ms` is
/// now `engine.max_queue_wait = "30ms"` (a duration with its unit) ``).
pub(crate) fn refuse_renamed(doc: &toml::Table) -> Result<(), String> {
    let found: Vec<String> = RENAMED
        .iter()
        .filter_map(|&(old, new, unit)| {
            let (table, key) = old.split_once('.')?;
            let value = doc.get(table)?.as_table()?.get(key)?;
            Some(renamed(old, new, unit, value))
        })
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(found.join("; "))
    }
}

/// The message for one renamed key.
fn renamed(old: &str, new: &str, unit: Unit, value: &toml::Value) -> String {
    let n = value.as_integer().and_then(|n| u64::try_from(n).ok());
    match n {
        Some(n) => {
            let d = match unit {
                Unit::Millis => Duration::from_millis(n),
                Unit::Micros => Duration::from_micros(n),
            };
            format!(
                "`{old}` is now `{new} = \"{}\"` (a duration with its unit)",
                format(d)
            )
        }
        None => format!("`{old}` is now `{new}` ({EXAMPLE})"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_their_unit() {
        assert_eq!(parse("30ms"), Ok(Duration::from_millis(30)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        let e = parse("30").unwrap_err();
        assert!(e.contains("time unit needed"), "{e}");
        let e = parse("5x").unwrap_err();
        assert!(
            e.contains("\"5x\" is not a duration") && e.contains("unknown time unit"),
            "{e}"
        );
        assert!(parse("").is_err());
        assert!(parse("-5s").is_err());
        assert!(parse("600000000years").unwrap_err().contains("too long"));
    }

    #[test]
    fn format_reads_back() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(30),
            Duration::from_millis(1500),
            Duration::from_secs(600),
            Duration::from_micros(4000),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_millis(30)), "30ms");
        assert_eq!(format(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn renamed_keys_name_their_replacement_with_the_same_value() {
        let doc: toml::Table = toml::from_str(
            "[engine]\nmax_queue_wait_ms = 30\n[audit]\ncommit_interval_us = 4000\n",
        )
        .unwrap();
        let e = refuse_renamed(&doc).unwrap_err();
        assert!(
            e.contains(
                "`engine.max_queue_wait_ms` is now `engine.max_queue_wait = \"30ms\"` (a duration \
                 with its unit)"
            ),
            "{e}"
        );
        assert!(
            e.contains("`audit.commit_interval_us` is now `audit.commit_interval = \"4ms\"`"),
            "{e}"
        );
        let doc: toml::Table = toml::from_str("[breaker]\nslow_call_ms = \"1s\"\n").unwrap();
        let e = refuse_renamed(&doc).unwrap_err();
        assert!(
            e.contains("`breaker.slow_call_ms` is now `breaker.slow_call` (a duration"),
            "{e}"
        );
        let doc: toml::Table = toml::from_str("[engine]\nmax_queue_wait = \"30ms\"\n").unwrap();
        assert_eq!(refuse_renamed(&doc), Ok(()));
    }
}
