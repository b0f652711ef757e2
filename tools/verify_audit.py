#!/usr/bin/env python3
"""Independent verifier of signerd audit logs: docs/AUDIT.md §5, written apart from the Rust one.

Checks the hash chain across every segment, the segment links, every checkpoint (its coverage, its
key, optionally pinned, and its ECDSA P-256 signature) and the seal. For brevity it does not check
the per-kind field rules of §3.

    verify_audit.py FILE [--public-key PEM] [--live | --prefix] [--after SEQ:HASH]

FILE is the active file or any rotated segment (the others are found beside it). --live: the log
may still be written to (an unsealed end and an incomplete last line pass). --prefix: FILE is an
archive, the beginning of a longer log (no active file, no seal needed). --after: the log's
beginning was archived; it continues from this record, the archive's head.

Prints "OK: N records, C checkpoints, head SEQ:HASH" and exits 0, or the first bad record and 1.
Needs Python 3 and the `cryptography` package.
"""
import argparse
import base64
import glob
import hashlib
import json
import os
import re
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

DOMAIN = b"signerd-audit-checkpoint-v1\0"
COVERS = re.compile(rb'"covers_seq":(\d+)')


def files_of(path):
    """The active file's path and the log's files in chain order (segments, then the active)."""
    m = re.fullmatch(r"(.*)\.(\d{20})", path)
    active = m.group(1) if m else path
    segs = sorted(p for p in glob.glob(glob.escape(active) + ".*")
                  if re.fullmatch(r"\d{20}", p[len(active) + 1:]))
    return active, segs + ([active] if os.path.exists(active) else [])


def snapshot(path):
    """files_of, with every file opened while the listing holds still: reading through these
    handles, a rotation or an archive run during the verification changes nothing."""
    for _ in range(10):
        active, files = files_of(path)
        handles = []
        try:
            for f in files:
                handles.append(open(f, "rb"))
        except FileNotFoundError:
            pass
        if len(handles) == len(files) and files_of(path) == (active, files):
            return active, list(zip(files, handles))
        for h in handles:
            h.close()
    raise RuntimeError(f"the files of {path} kept changing while being listed; try again")


def verify(path, pinned_pem=None, live=False, prefix=False, after=None):
    """None if the log verifies, else why not. Also returns the report as a dict."""
    active, opened = snapshot(path)
    files = [f for f, _ in opened]
    report = {"records": 0, "checkpoints": 0, "head": None, "sealed": False}
    if not files:
        return f"{path}: no audit log here", report
    if not os.path.exists(active) and not (live or prefix):
        return f"the active file {active} is missing: the newest records are gone", report
    pinned = serialization.load_pem_public_key(pinned_pem) if pinned_pem else None
    # Pass 1: which seqs checkpoints cover, so pass 2 keeps only those hashes.
    # The lengths seen here bound pass 2: a live log growing meanwhile cannot show pass 2 a
    # checkpoint whose covered hash pass 1 did not know to keep.
    wanted, lengths = set(), []
    for _, h in opened:
        for line in h:
            m = COVERS.search(line)
            if m:
                wanted.add(int(m.group(1)))
        lengths.append(h.tell())
    if after:
        seq, prev = after[0] + 1, after[1]
        kept = {after[0]: after[1]}
    else:
        seq, prev, kept = 0, bytes(32), {}
    last, key, covered = None, None, -1
    for i, (path_, h) in enumerate(opened):
        h.seek(0)
        data = h.read(lengths[i])            # one file at a time
        lines = data.split(b"\n")
        if not data:
            if live and path_ == active:
                continue
            return f"{path_}: empty segment file", report
        if lines[-1] and not (live and path_ == active):
            return f"{path_}:{len(lines)}: incomplete last line: truncated mid-record", report
        for no, line in enumerate(lines[:-1], 1):
            def bad(why):
                return f"{path_}:{no} (seq {seq}): {why}", report
            try:
                r = json.loads(line)
            except ValueError as e:
                return bad(f"not JSON: {e}")
            h = hashlib.sha256(line).digest()
            if r.get("seq") != seq:
                return bad(f"found seq {r.get('seq')}: records missing, repeated or reordered")
            if bytes.fromhex(r["prev"]) != prev:
                if last is None:
                    return bad("prev is not the anchor's hash (or 64 zeros for a new log)")
                return (f"{last[0]}:{last[1]} (seq {seq - 1}): its hash does not match "
                        f"prev of the next record"), report
            k = r["kind"]
            if no == 1:
                if k != "start":
                    return bad("file does not begin with a start record")
                if i > 0 and r.get("prev_file") != os.path.basename(files[i - 1]):
                    return bad("prev_file does not name the previous file")
                if path_ != active and int(path_[-20:]) != seq:
                    return bad("the segment's name and its first seq differ")
            if k == "start":
                if (r["reason"] == "genesis") != (seq == 0):
                    return bad("genesis is the record at seq 0, and only it")
                if r["reason"] == "rotate" and no != 1:
                    return bad("a rotate record must begin its file")
                if "prior" in r and last is not None and \
                        (r["prior"] == "sealed") != (last[2] == "seal"):
                    return bad("prior does not match how the previous run ended")
            if last and last[2] == "seal" and not (k == "start" and r["reason"] == "restart"):
                return bad("only a restart may follow a seal")
            if k == "checkpoint":
                c = r["covers_seq"]
                if not covered < c < seq:
                    return bad("covers_seq out of order")
                want = bytes.fromhex(r["covers_hash"])
                if c in kept:
                    if kept[c] != want:
                        return bad("covers_hash is not the hash of that record")
                elif not (after and c < after[0]):
                    return bad("covers a record that is not here")
                spki = base64.b64decode(r["spki"], validate=True)
                pub = serialization.load_der_public_key(spki)
                if pinned and pub.public_numbers() != pinned.public_numbers():
                    return bad("checkpoint not signed by the pinned key")
                if not pinned and key is not None and spki != key:
                    return bad("checkpoint key changed")
                key = spki
                msg = DOMAIN + struct.pack(">Q", c) + want + bytes([1 if r["final"] else 0])
                try:
                    pub.verify(base64.b64decode(r["sig"], validate=True), msg,
                               ec.ECDSA(hashes.SHA256()))
                except Exception:
                    return bad("bad checkpoint signature")
                covered = c
                kept = {s: v for s, v in kept.items() if s > c}
                report["checkpoints"] += 1
            if k == "seal":
                canon = json.dumps({"seq": seq, "prev": prev.hex(), "kind": "seal"},
                                   separators=(",", ":")).encode()
                if line != canon or last is None or last[2] != "checkpoint" \
                        or last[3] != (seq - 2, True):
                    return bad("a seal must follow a final checkpoint over the record before it")
            if seq in wanted:
                kept[seq] = h
            last = (path_, no, k, (r.get("covers_seq"), r.get("final")))
            report["records"] += 1
            seq, prev = seq + 1, h
    if last is None:
        return "the log has no records", report
    report["head"] = f"{seq - 1}:{prev.hex()}"
    report["sealed"] = last[2] == "seal"
    if not report["sealed"] and not (live or prefix):
        return f"log ends at seq {seq - 1} without a seal; covered up to {covered}", report
    return None, report


def anchor(text):
    s, _, h = text.partition(":")
    if not s.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", h):
        raise argparse.ArgumentTypeError("SEQ:HASH, the hash as 64 lower-case hex digits")
    return int(s), bytes.fromhex(h)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--public-key", metavar="PEM")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", action="store_true")
    mode.add_argument("--prefix", action="store_true")
    p.add_argument("--after", type=anchor, metavar="SEQ:HASH")
    a = p.parse_args()
    pem = open(a.public_key, "rb").read() if a.public_key else None
    err, report = verify(a.file, pem, a.live, a.prefix, a.after)
    if err:
        print(f"FAILED: {err}")
        return 1
    print(f"OK: {report['records']} records, {report['checkpoints']} checkpoints, "
          f"head {report['head']}{', sealed' if report['sealed'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
