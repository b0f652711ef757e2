//! The record format, reading side: one line of bytes in, a typed record out (or why not).
//! Used by the verifier and by tail recovery at open. Never panics on input.

use base64::Engine as _;
use serde::Deserialize;

use super::record::{hash_from_hex, sha256, FORMAT, MAX_LINE};

/// A parsed, well-formed record. Whether it fits the chain is the verifier's business.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    pub seq: u64,
    pub prev: [u8; 32],
    /// SHA-256 of the line (without its newline): the record's hash.
    pub hash: [u8; 32],
    pub body: Body,
}

#[derive(Clone, Debug)]
pub(crate) enum Body {
    Entry,
    Checkpoint(Checkpoint),
    Start(Start),
    Seal,
}

#[derive(Clone, Debug)]
pub(crate) struct Checkpoint {
    pub covers_seq: u64,
    pub covers_hash: [u8; 32],
    pub fin: bool,
    pub key: String,
    pub version: u32,
    pub spki: Vec<u8>,
    pub sig: Vec<u8>,
}

#[derive(Clone, Debug)]
pub(crate) struct Start {
    pub reason: String,
    pub prev_file: Option<String>,
    /// `Some(true)` for "sealed", `Some(false)` for "unclean".
    pub prior_sealed: Option<bool>,
    pub dropped_bytes: u64,
}

/// The union of all fields of all kinds; which are required depends on `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    seq: u64,
    prev: String,
    kind: String,
    time: Option<String>,
    identity: Option<String>,
    op: Option<String>,
    key: Option<String>,
    version: Option<u32>,
    payload_sha256: Option<String>,
    status: Option<String>,
    partition: Option<String>,
    detail: Option<String>,
    covers_seq: Option<u64>,
    covers_hash: Option<String>,
    #[serde(rename = "final")]
    fin: Option<bool>,
    spki: Option<String>,
    sig: Option<String>,
    format: Option<String>,
    reason: Option<String>,
    prev_file: Option<String>,
    prior: Option<String>,
    dropped_bytes: Option<u64>,
    dropped_sha256: Option<String>,
    pid: Option<u64>,
}

/// Parses one line (without its newline).
pub(crate) fn parse_line(line: &[u8]) -> Result<Parsed, String> {
    if line.len() > MAX_LINE {
        return Err(format!("line longer than {MAX_LINE} bytes"));
    }
    let raw: Raw = serde_json::from_slice(line).map_err(|e| format!("not a valid record: {e}"))?;
    let prev = hash_from_hex(&raw.prev).ok_or("`prev` is not 64 lower-case hex digits")?;
    let body = match raw.kind.as_str() {
        "entry" => entry(&raw)?,
        "checkpoint" => checkpoint(&raw)?,
        "start" => start(&raw)?,
        "seal" => Body::Seal,
        other => return Err(format!("unknown record kind {other:?}")),
    };
    Ok(Parsed {
        seq: raw.seq,
        prev,
        hash: sha256(line),
        body,
    })
}

fn need<'a, T>(v: &'a Option<T>, field: &str, kind: &str) -> Result<&'a T, String> {
    v.as_ref()
        .ok_or_else(|| format!("{kind} record without `{field}`"))
}

/// Fields that belong to other kinds must be absent.
fn forbid(present: &[(&str, bool)], kind: &str) -> Result<(), String> {
    match present.iter().find(|(_, p)| *p) {
        Some((name, _)) => Err(format!("{kind} record with unexpected field `{name}`")),
        None => Ok(()),
    }
}

fn entry(r: &Raw) -> Result<Body, String> {
    need(&r.time, "time", "entry")?;
    need(&r.identity, "identity", "entry")?;
    need(&r.op, "op", "entry")?;
    need(&r.status, "status", "entry")?;
    if let Some(h) = &r.payload_sha256 {
        hash_from_hex(h).ok_or("`payload_sha256` is not 64 lower-case hex digits")?;
    }
    forbid(
        &[
            ("covers_seq", r.covers_seq.is_some()),
            ("covers_hash", r.covers_hash.is_some()),
            ("final", r.fin.is_some()),
            ("spki", r.spki.is_some()),
            ("sig", r.sig.is_some()),
            ("format", r.format.is_some()),
            ("reason", r.reason.is_some()),
            ("prev_file", r.prev_file.is_some()),
            ("prior", r.prior.is_some()),
            ("dropped_bytes", r.dropped_bytes.is_some()),
            ("dropped_sha256", r.dropped_sha256.is_some()),
            ("pid", r.pid.is_some()),
        ],
        "entry",
    )?;
    Ok(Body::Entry)
}

fn checkpoint(r: &Raw) -> Result<Body, String> {
    let k = "checkpoint";
    need(&r.time, "time", k)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let covers_hash = hash_from_hex(need(&r.covers_hash, "covers_hash", k)?)
        .ok_or("`covers_hash` is not 64 lower-case hex digits")?;
    let spki = b64
        .decode(need(&r.spki, "spki", k)?)
        .map_err(|e| format!("`spki` is not base64: {e}"))?;
    let sig = b64
        .decode(need(&r.sig, "sig", k)?)
        .map_err(|e| format!("`sig` is not base64: {e}"))?;
    forbid(
        &[
            ("identity", r.identity.is_some()),
            ("op", r.op.is_some()),
            ("payload_sha256", r.payload_sha256.is_some()),
            ("status", r.status.is_some()),
            ("partition", r.partition.is_some()),
            ("detail", r.detail.is_some()),
            ("format", r.format.is_some()),
            ("reason", r.reason.is_some()),
            ("prev_file", r.prev_file.is_some()),
            ("prior", r.prior.is_some()),
            ("dropped_bytes", r.dropped_bytes.is_some()),
            ("dropped_sha256", r.dropped_sha256.is_some()),
            ("pid", r.pid.is_some()),
        ],
        k,
    )?;
    Ok(Body::Checkpoint(Checkpoint {
        covers_seq: *need(&r.covers_seq, "covers_seq", k)?,
        covers_hash,
        fin: *need(&r.fin, "final", k)?,
        key: need(&r.key, "key", k)?.clone(),
        version: *need(&r.version, "version", k)?,
        spki,
        sig,
    }))
}

fn start(r: &Raw) -> Result<Body, String> {
    let k = "start";
    need(&r.time, "time", k)?;
    let format = need(&r.format, "format", k)?;
    if format != FORMAT {
        return Err(format!(
            "unsupported format {format:?} (expected {FORMAT:?})"
        ));
    }
    let reason = need(&r.reason, "reason", k)?.clone();
    if !matches!(reason.as_str(), "genesis" | "restart" | "rotate") {
        return Err(format!("unknown start reason {reason:?}"));
    }
    let prior_sealed = match r.prior.as_deref() {
        None => None,
        Some("sealed") => Some(true),
        Some("unclean") => Some(false),
        Some(other) => return Err(format!("unknown `prior` value {other:?}")),
    };
    if (reason == "restart") != prior_sealed.is_some() {
        return Err("`prior` must be present exactly in restart records".into());
    }
    if let Some(name) = &r.prev_file {
        if name.is_empty() || name.contains('/') || name.contains('\\') {
            return Err("`prev_file` must be a plain file name".into());
        }
    }
    let dropped_bytes = match (&r.dropped_bytes, &r.dropped_sha256) {
        (None, None) => 0,
        (Some(n), Some(h)) if *n > 0 && reason != "rotate" => {
            hash_from_hex(h).ok_or("`dropped_sha256` is not 64 lower-case hex digits")?;
            *n
        }
        _ => {
            return Err(
                "`dropped_bytes` (> 0) and `dropped_sha256` go together, not in rotate records"
                    .into(),
            )
        }
    };
    need(&r.pid, "pid", k)?;
    forbid(
        &[
            ("identity", r.identity.is_some()),
            ("op", r.op.is_some()),
            ("key", r.key.is_some()),
            ("version", r.version.is_some()),
            ("payload_sha256", r.payload_sha256.is_some()),
            ("status", r.status.is_some()),
            ("partition", r.partition.is_some()),
            ("detail", r.detail.is_some()),
            ("covers_seq", r.covers_seq.is_some()),
            ("covers_hash", r.covers_hash.is_some()),
            ("final", r.fin.is_some()),
            ("spki", r.spki.is_some()),
            ("sig", r.sig.is_some()),
        ],
        k,
    )?;
    Ok(Body::Start(Start {
        reason,
        prev_file: r.prev_file.clone(),
        prior_sealed,
        dropped_bytes,
    }))
}

/// Cheap first look used by the verifier's first pass: the `covers_seq` of a checkpoint line,
/// `None` for anything else (including garbage).
pub(crate) fn covers_seq_of(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Peek {
        kind: Option<String>,
        covers_seq: Option<u64>,
    }
    let s = std::str::from_utf8(line).ok()?;
    // Any line that could be a checkpoint: one that says so, or one with \u escapes.
    if !s.contains("\"checkpoint\"") && !s.contains("\\u") {
        return None;
    }
    let p: Peek = serde_json::from_str(s).ok()?;
    if p.kind.as_deref() == Some("checkpoint") {
        p.covers_seq
    } else {
        None
    }
}
