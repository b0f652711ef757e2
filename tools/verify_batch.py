#!/usr/bin/env python3
"""Independent verifier of signerd Merkle batch signatures (docs/BATCH.md, construction v1).

Written from docs/BATCH.md alone; shares no code with the Rust implementation. Needs the
`cryptography` package (python3 -m pip install cryptography).

Usage:
  verify_batch.py vector crates/signer-proto/tests/vectors/batch-v1.json
      recompute every level, the root, every path and the signing input of the test vector,
      and verify every leaf's signature and text blob.
  verify_batch.py blob --public-key k.pem --message-file m --blob b.txt
      verify one exported blob (text form, or binary) against the message.

Exit status 0 when everything verifies, 1 when verification fails, 2 on bad usage or input.
"""

import argparse
import base64
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

TREE_LABEL = b"signerd-batch-v1"
ROOT_CONTEXT = b"signerd batch signature v1\x00"
MAX_TREE = 4096
MAX_ROOT_SIGNATURE = 1024
BLOB_MAGIC = b"SGNDBSIG"
BLOB_VERSION = 1
TEXT_HEADER = "-----BEGIN SIGNERD BATCH SIGNATURE-----"
TEXT_FOOTER = "-----END SIGNERD BATCH SIGNATURE-----"

# scheme code -> (name, hash class, kind)
SCHEMES = {
    1: ("ecdsa-sha256", hashes.SHA256, "ecdsa"),
    2: ("ecdsa-sha384", hashes.SHA384, "ecdsa"),
    3: ("ecdsa-sha512", hashes.SHA512, "ecdsa"),
    4: ("rsa-pkcs1-sha256", hashes.SHA256, "pkcs1"),
    5: ("rsa-pkcs1-sha384", hashes.SHA384, "pkcs1"),
    6: ("rsa-pkcs1-sha512", hashes.SHA512, "pkcs1"),
    7: ("rsa-pss-sha256", hashes.SHA256, "pss"),
    8: ("rsa-pss-sha384", hashes.SHA384, "pss"),
    9: ("rsa-pss-sha512", hashes.SHA512, "pss"),
    10: ("ed25519", None, "ed25519"),
}
HASHLIB = {hashes.SHA256: hashlib.sha256, hashes.SHA384: hashlib.sha384, hashes.SHA512: hashlib.sha512}


class Invalid(Exception):
    """The signature or the input does not verify / is malformed."""


def sha256(data):
    return hashlib.sha256(data).digest()


def u32(x):
    return struct.pack(">I", x)


def leaf_hash(n, i, blinding, payload):
    return sha256(TREE_LABEL + b"\x00" + u32(n) + u32(i) + blinding + payload)


def node_hash(n, level, index, left, right):
    return sha256(TREE_LABEL + b"\x01" + u32(n) + bytes([level]) + u32(index) + left + right)


def empty_hash(n, level, index):
    return sha256(TREE_LABEL + b"\x02" + u32(n) + bytes([level]) + u32(index))


def depth(n):
    return (n - 1).bit_length()


def build_levels(payloads, blindings):
    """All levels, leaves first, each level below the root padded to an even count."""
    n = len(payloads)
    levels = [[leaf_hash(n, i, blindings[i], p) for i, p in enumerate(payloads)]]
    for level in range(depth(n)):
        cur = levels[-1]
        if len(cur) % 2:
            cur.append(empty_hash(n, level, len(cur)))
        levels.append([node_hash(n, level + 1, j, cur[2 * j], cur[2 * j + 1]) for j in range(len(cur) // 2)])
    return levels


def root_from_path(n, index, blinding, payload, path):
    if not 1 <= n <= MAX_TREE or not 0 <= index < n or len(path) != depth(n):
        raise Invalid("bad tree position or path length")
    h = leaf_hash(n, index, blinding, payload)
    idx, count = index, n
    for level, sibling in enumerate(path):
        if idx % 2 == 0 and idx + 1 >= count and sibling != empty_hash(n, level, idx + 1):
            raise Invalid(f"path hash {level} should be the padding hash")
        if idx % 2 == 0:
            h = node_hash(n, level + 1, idx // 2, h, sibling)
        else:
            h = node_hash(n, level + 1, idx // 2, sibling, h)
        idx //= 2
        count = (count + 1) // 2
    return h


def signing_message(scheme_code, key, version, n, root):
    name = key.encode("ascii")
    return ROOT_CONTEXT + bytes([scheme_code, len(name)]) + name + u32(version) + u32(n) + root


def payload_for_message(scheme_code, message):
    hash_cls = SCHEMES[scheme_code][1]
    return message if hash_cls is None else HASHLIB[hash_cls](message).digest()


def verify_signature(public_key, scheme_code, message, signature):
    """Verifies an ordinary signature over `message` (the library hashes it)."""
    _, hash_cls, kind = SCHEMES[scheme_code]
    try:
        if kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hash_cls()))
        elif kind == "pkcs1" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), hash_cls())
        elif kind == "pss" and isinstance(public_key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls.digest_size)
            public_key.verify(signature, message, pss, hash_cls())
        elif kind == "ed25519" and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            raise Invalid(f"public key type does not fit scheme {SCHEMES[scheme_code][0]}")
    except InvalidSignature:
        raise Invalid("root signature does not verify") from None


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n, what):
        if self.pos + n > len(self.data):
            raise Invalid(f"truncated at {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, size, what):
        return int.from_bytes(self.take(size, what), "big")

    def end(self):
        if self.pos != len(self.data):
            raise Invalid(f"{len(self.data) - self.pos} trailing bytes")


def decode_batch_signature(data):
    r = Reader(data)
    n = r.uint(4, "tree_size")
    index = r.uint(4, "leaf_index")
    blinding = r.take(32, "blinding")
    d = r.uint(1, "depth")
    if not 1 <= n <= MAX_TREE or index >= n or d != depth(n):
        raise Invalid("tree_size, leaf_index or depth out of range")
    path = [r.take(32, "path") for _ in range(d)]
    sig_len = r.uint(2, "root_signature length")
    if not 1 <= sig_len <= MAX_ROOT_SIGNATURE:
        raise Invalid("root_signature length out of range")
    sig = r.take(sig_len, "root_signature")
    r.end()
    return {"tree_size": n, "leaf_index": index, "blinding": blinding, "path": path, "root_signature": sig}


def decode_blob(data):
    r = Reader(data)
    if r.take(8, "magic") != BLOB_MAGIC:
        raise Invalid("not a signerd batch signature blob")
    if r.uint(1, "format") != BLOB_VERSION:
        raise Invalid("unsupported blob format")
    scheme = r.uint(1, "scheme")
    if scheme not in SCHEMES:
        raise Invalid(f"unknown scheme code {scheme}")
    try:
        key = r.take(r.uint(1, "key length"), "key").decode("ascii")
    except UnicodeDecodeError:
        raise Invalid("key name is not ASCII") from None
    version = r.uint(4, "key version")
    if version == 0:
        raise Invalid("key version 0")
    sig_len = r.uint(2, "signature length")
    sig = decode_batch_signature(r.take(sig_len, "signature"))
    r.end()
    return {"scheme": scheme, "key": key, "version": version, "signature": sig}


def blob_from_text(text):
    lines = [line.rstrip("\r") for line in text.strip().splitlines()]
    if len(lines) < 2 or lines[0] != TEXT_HEADER or lines[-1] != TEXT_FOOTER:
        raise Invalid("missing header or footer line")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError as e:
        raise Invalid(f"invalid base64: {e}") from None


def verify_batch(public_key, scheme, key, version, payload, sig):
    root = root_from_path(sig["tree_size"], sig["leaf_index"], sig["blinding"], payload, sig["path"])
    message = signing_message(scheme, key, version, sig["tree_size"], root)
    verify_signature(public_key, scheme, message, sig["root_signature"])
    return root, message


def check(cond, what):
    if not cond:
        raise Invalid(what)


def cmd_vector(path):
    v = json.load(open(path))
    h = bytes.fromhex
    scheme, key, version, n = v["scheme_code"], v["key"], v["key_version"], v["tree_size"]
    check(SCHEMES[scheme][0] == v["scheme"], "scheme code and name disagree")
    public_key = serialization.load_der_public_key(h(v["public_key_spki_der"]))
    pem_key = serialization.load_pem_public_key(v["public_key_pem"].encode())
    check(pem_key.public_numbers() == public_key.public_numbers(), "PEM and SPKI keys differ")
    if "p256_private_scalar" in v:
        private = ec.derive_private_key(int(v["p256_private_scalar"], 16), ec.SECP256R1())
        check(private.public_key().public_numbers() == public_key.public_numbers(), "scalar does not match key")
    items = v["items"]
    check(len(items) == n, "one item per leaf")
    payloads = [h(it["payload"]) for it in items]
    blindings = [h(it["blinding"]) for it in items]
    for it, p in zip(items, payloads):
        check(payload_for_message(scheme, it["message"].encode()) == p, f"payload {it['index']} is not the scheme hash of its message")
    levels = build_levels(payloads, blindings)
    check([[x.hex() for x in lvl] for lvl in levels] == v["levels"], "levels differ")
    check(v["depth"] == depth(n), "depth differs")
    root = levels[-1][0]
    check(root.hex() == v["root"], "root differs")
    message = signing_message(scheme, key, version, n, root)
    check(message.hex() == v["signing_message"], "signing message differs")
    check(payload_for_message(scheme, message).hex() == v["to_be_signed"], "to-be-signed payload differs")
    root_sig = h(v["root_signature"])
    verify_signature(public_key, scheme, message, root_sig)
    for i, it in enumerate(items):
        check(it["index"] == i, "items in order")
        expected_path = [levels[lvl][(i >> lvl) ^ 1].hex() for lvl in range(depth(n))]
        check(it["path"] == expected_path, f"path {i} differs")
        sig = decode_batch_signature(h(it["encoding"]))
        check(sig["tree_size"] == n and sig["leaf_index"] == i, f"encoding {i}: position")
        check(sig["blinding"] == blindings[i] and sig["root_signature"] == root_sig, f"encoding {i}: fields")
        check([p.hex() for p in sig["path"]] == expected_path, f"encoding {i}: path")
        got_root, _ = verify_batch(public_key, scheme, key, version, payloads[i], sig)
        check(got_root == root, f"leaf {i}: root")
        blob = decode_blob(blob_from_text(it["blob_text"]))
        check((blob["scheme"], blob["key"], blob["version"]) == (scheme, key, version), f"blob {i}: identity")
        check(blob["signature"] == sig, f"blob {i}: signature")
        verify_batch(public_key, scheme, key, version, payload_for_message(scheme, it["message"].encode()), blob["signature"])
        # Every other leaf's payload must fail with this leaf's signature.
        for j, other in enumerate(payloads):
            if j != i:
                try:
                    verify_batch(public_key, scheme, key, version, other, sig)
                except Invalid:
                    continue
                raise Invalid(f"leaf {i}'s signature verifies payload {j}")
    print(f"OK: {path}: {n} leaves, root {root.hex()}, every level, path and signature verified")


def cmd_blob(public_key_path, message_path, blob_path):
    public_key = serialization.load_pem_public_key(open(public_key_path, "rb").read())
    message = open(message_path, "rb").read()
    raw = open(blob_path, "rb").read()
    data = raw if raw.startswith(BLOB_MAGIC) else blob_from_text(raw.decode("ascii", "strict"))
    blob = decode_blob(data)
    payload = payload_for_message(blob["scheme"], message)
    verify_batch(public_key, blob["scheme"], blob["key"], blob["version"], payload, blob["signature"])
    sig = blob["signature"]
    print(f"OK: {SCHEMES[blob['scheme']][0]} key {blob['key']} v{blob['version']}, leaf {sig['leaf_index']} of {sig['tree_size']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    vec = sub.add_parser("vector", help="check a test vector file")
    vec.add_argument("file")
    blob = sub.add_parser("blob", help="verify an exported blob against a message")
    blob.add_argument("--public-key", required=True, help="PEM SubjectPublicKeyInfo")
    blob.add_argument("--message-file", required=True, help="the message (not its digest)")
    blob.add_argument("--blob", required=True, help="the blob, text or binary form")
    args = parser.parse_args()
    try:
        if args.cmd == "vector":
            cmd_vector(args.file)
        else:
            cmd_blob(args.public_key, args.message_file, args.blob)
    except Invalid as e:
        print(f"INVALID: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError, UnicodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
