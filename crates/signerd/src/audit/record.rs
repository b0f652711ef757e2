//! The record format, writer side: how each kind of record is laid out as one JSON line, the
//! chain state that links them, and the checkpoint message that the audit key signs.
//! docs/AUDIT.md is the contract; the parsing side is in `parse.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::AuditEntry;

/// Value of the `format` field of `start` records.
pub const FORMAT: &str = "signerd-audit-v1";

/// Domain separation prefix of the checkpoint message (28 bytes, ends with a NUL byte).
pub const CHECKPOINT_DOMAIN: &[u8] = b"signerd-audit-checkpoint-v1\0";

/// Longest line a writer produces and a verifier accepts, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// Strings from callers (identity, key, partition, detail) are cut to at most this many bytes.
pub const MAX_FIELD: usize = 1024;

/// `prev` of the first record of a log (seq 0).
pub const GENESIS_PREV: [u8; 32] = [0; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The 69-byte checkpoint message: `CHECKPOINT_DOMAIN || covers_seq (u64 big-endian) ||
/// covers_hash (32 bytes) || final (one byte, 0 or 1)`.
pub(crate) fn checkpoint_message(covers_seq: u64, covers_hash: &[u8; 32], fin: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32 + 1);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&covers_seq.to_be_bytes());
    m.extend_from_slice(covers_hash);
    m.push(u8::from(fin));
    m
}

/// The digest the audit key signs: SHA-256 of [`checkpoint_message`].
pub(crate) fn checkpoint_digest(covers_seq: u64, covers_hash: &[u8; 32], fin: bool) -> [u8; 32] {
    sha256(&checkpoint_message(covers_seq, covers_hash, fin))
}

/// Lower-case hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses exactly 64 lower-case hex digits.
pub(crate) fn hash_from_hex(s: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// RFC 3339 UTC with microseconds: `2025-01-31T23:59:59.123456Z`. Times before 1970 print as the
/// epoch.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// The head of the chain: the seq the next record gets and the hash of the last record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    pub next_seq: u64,
    pub head: [u8; 32],
}

impl Chain {
    /// A new log: the first record gets seq 0 and `prev` all zeros.
    pub fn genesis() -> Chain {
        Chain {
            next_seq: 0,
            head: GENESIS_PREV,
        }
    }

    /// Seq of the last record, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }

    /// Appends one record (its `seq` and `prev`, then the fields `body` writes, then `\n`) to
    /// `buf` and advances the chain. Returns the record's seq.
    pub fn push(&mut self, buf: &mut Vec<u8>, body: impl FnOnce(&mut Fields<'_>)) -> u64 {
        let start = buf.len();
        let seq = self.next_seq;
        let mut f = Fields { buf, first: true };
        f.buf.push(b'{');
        f.u64("seq", seq);
        f.str("prev", &to_hex(&self.head));
        body(&mut f);
        f.buf.push(b'}');
        self.head = sha256(&buf[start..]);
        self.next_seq += 1;
        buf.push(b'\n');
        seq
    }
}

/// Writes the fields of one JSON object, in call order.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        push_json_str(self.buf, k);
        self.buf.push(b':');
    }

    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_json_str(self.buf, v);
    }

    pub fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    pub fn u64(&mut self, k: &str, v: u64) {
        self.key(k);
        self.buf.extend_from_slice(v.to_string().as_bytes());
    }

    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.buf
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
    }
}

/// A JSON string: `"` and `\` escaped with a backslash, control characters as `\u00XX`,
/// everything else (valid UTF-8) as is.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut clean = 0; // start of the run of bytes that need no escape
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[clean..i]);
        clean = i + 1;
        if esc.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.extend_from_slice(to_hex(&[b]).as_bytes());
        } else {
            buf.extend_from_slice(esc);
        }
    }
    buf.extend_from_slice(&bytes[clean..]);
    buf.push(b'"');
}

/// `s` cut to at most [`MAX_FIELD`] bytes, at a character boundary.
fn cap(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Fields of an `entry` record.
pub(crate) fn entry_fields(f: &mut Fields<'_>, e: &AuditEntry) {
    f.str("kind", "entry");
    f.str("time", &rfc3339(e.time));
    f.str("identity", cap(&e.identity));
    f.str("op", cap(e.op));
    f.opt_str("key", e.key.as_deref().map(cap));
    if let Some(v) = e.version {
        f.u64("version", u64::from(v));
    }
    if let Some(h) = &e.payload_sha256 {
        f.str("payload_sha256", &to_hex(h));
    }
    f.str("status", cap(e.status));
    f.opt_str("partition", e.partition.as_deref().map(cap));
    f.opt_str("detail", e.detail.as_deref().map(cap));
}

/// Why a `start` record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartReason {
    /// The first record of a new log (seq 0).
    Genesis,
    /// A process opened an existing log.
    Restart,
    /// The first record of a new active file after rotation.
    Rotate,
}

impl StartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StartReason::Genesis => "genesis",
            StartReason::Restart => "restart",
            StartReason::Rotate => "rotate",
        }
    }
}

/// Everything a `start` record says.
#[derive(Clone, Debug)]
pub(crate) struct StartInfo {
    pub reason: StartReason,
    /// File name (no directory) of the file that holds the record before this one, when that is
    /// another file.
    pub prev_file: Option<String>,
    /// For a restart: whether the previous run ended with a seal.
    pub prior_sealed: Option<bool>,
    /// For a restart: the torn bytes cut from the end of the file, and their SHA-256.
    pub dropped: Option<(u64, [u8; 32])>,
}

pub(crate) fn start_fields(f: &mut Fields<'_>, s: &StartInfo, now: SystemTime) {
    f.str("kind", "start");
    f.str("time", &rfc3339(now));
    f.str("format", FORMAT);
    f.str("reason", s.reason.as_str());
    f.opt_str("prev_file", s.prev_file.as_deref());
    if let Some(sealed) = s.prior_sealed {
        f.str("prior", if sealed { "sealed" } else { "unclean" });
    }
    if let Some((n, h)) = &s.dropped {
        f.u64("dropped_bytes", *n);
        f.str("dropped_sha256", &to_hex(h));
    }
    f.u64("pid", u64::from(std::process::id()));
}

/// A signed checkpoint, ready to be written.
#[derive(Clone, Debug)]
pub(crate) struct SignedCheckpoint {
    pub covers_seq: u64,
    pub covers_hash: [u8; 32],
    pub fin: bool,
    pub sig_der: Vec<u8>,
}

/// The audit key as it appears in checkpoint records.
#[derive(Clone, Debug)]
pub(crate) struct KeyFields {
    pub name: String,
    pub version: u32,
    pub spki_b64: String,
}

pub(crate) fn checkpoint_fields(
    f: &mut Fields<'_>,
    c: &SignedCheckpoint,
    key: &KeyFields,
    now: SystemTime,
) {
    use base64::Engine as _;
    f.str("kind", "checkpoint");
    f.str("time", &rfc3339(now));
    f.u64("covers_seq", c.covers_seq);
    f.str("covers_hash", &to_hex(&c.covers_hash));
    f.bool("final", c.fin);
    f.str("key", &key.name);
    f.u64("version", u64::from(key.version));
    f.str("spki", &key.spki_b64);
    f.str(
        "sig",
        &base64::engine::general_purpose::STANDARD.encode(&c.sig_der),
    );
}

/// A seal has no field but `seq`, `prev` and `kind`, so its bytes follow from its position.
pub(crate) fn seal_fields(f: &mut Fields<'_>) {
    f.str("kind", "seal");
}

/// The one valid line for a seal at `seq` after a record with hash `prev`.
pub(crate) fn canonical_seal(seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    let mut chain = Chain {
        next_seq: seq,
        head: *prev,
    };
    let mut buf = Vec::new();
    chain.push(&mut buf, seal_fields);
    buf.pop(); // the newline
    buf
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 1_500); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000001Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31T23:59:59
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000000Z");
    }

    #[test]
    fn hex_round_trip_and_strictness() {
        let h = sha256(b"abc");
        let s = to_hex(&h);
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hash_from_hex(&s), Some(h));
        assert_eq!(hash_from_hex(&s.to_uppercase()), None);
        assert_eq!(hash_from_hex(&s[..62]), None);
    }

    #[test]
    fn json_strings_are_escaped_and_parse_back() {
        let mut buf = Vec::new();
        let mut f = Fields {
            buf: &mut buf,
            first: true,
        };
        f.buf.push(b'{');
        f.str("a", "q\"b\\s\n\u{1}é\u{7f}");
        f.buf.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["a"], "q\"b\\s\n\u{1}é\u{7f}");
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips_through_json(s in ".*") {
            let mut buf = Vec::new();
            push_json_str(&mut buf, &s);
            let back: String = serde_json::from_slice(&buf).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn checkpoint_message_layout() {
        let m = checkpoint_message(0x0102, &[7; 32], true);
        assert_eq!(m.len(), 69);
        assert_eq!(&m[..28], CHECKPOINT_DOMAIN);
        assert_eq!(&m[28..36], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&m[36..68], &[7; 32]);
        assert_eq!(m[68], 1);
    }

    #[test]
    fn cap_cuts_at_char_boundary() {
        let s = "é".repeat(MAX_FIELD);
        let c = cap(&s);
        assert!(c.len() <= MAX_FIELD && c.len() >= MAX_FIELD - 1);
        assert!(s.starts_with(c));
    }
}
