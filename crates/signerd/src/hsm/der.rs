//! Minimal, strict DER writer turning PKCS#11 key attributes and C_Sign output into standard
//! encodings: SubjectPublicKeyInfo, ECDSA Ecdsa-Sig-Value, RSA DigestInfo prefixes and PEM.

/// Errors from building standard encodings out of PKCS#11 attribute or signature bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DerError {
    /// The raw ECDSA signature (r||s) was empty.
    #[error("ECDSA signature is empty")]
    EmptySignature,
    /// The raw ECDSA signature (r||s) has an odd length, so it cannot split into equal halves.
    #[error("ECDSA signature has odd length {0}; expected r||s with equal halves")]
    OddSignatureLength(usize),
    /// CKA_EC_POINT is neither a well-formed DER OCTET STRING nor a plausible bare point.
    #[error("bad EC point: {0}")]
    BadEcPoint(String),
    /// CKA_EC_PARAMS is not a single well-formed DER OBJECT IDENTIFIER.
    #[error("bad EC parameters (expected a DER OBJECT IDENTIFIER): {0}")]
    BadEcParams(String),
    /// CKA_MODULUS was empty or all zero bytes.
    #[error("RSA modulus is empty or zero")]
    EmptyModulus,
    /// CKA_PUBLIC_EXPONENT was empty or all zero bytes.
    #[error("RSA public exponent is empty or zero")]
    EmptyPublicExponent,
    /// A DER ECDSA signature could not be parsed.
    #[error("bad ECDSA signature encoding: {0}")]
    BadSignature(String),
    /// The Ed25519 public key (after removing any OCTET STRING wrapper) is not 32 bytes; the
    /// value is the length that was found.
    #[error("Ed25519 public key must be 32 bytes, got {0}")]
    BadEd25519Key(usize),
}

/// Hash algorithms used with RSA PKCS#1 v1.5 DigestInfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlg {
    /// SHA-256 (2.16.840.1.101.3.4.2.1), 32-byte digest.
    Sha256,
    /// SHA-384 (2.16.840.1.101.3.4.2.2), 48-byte digest.
    Sha384,
    /// SHA-512 (2.16.840.1.101.3.4.2.3), 64-byte digest.
    Sha512,
}

/// DER of OBJECT IDENTIFIER prime256v1 (1.2.840.10045.3.1.7), usable as CKA_EC_PARAMS.
pub const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// DER of OBJECT IDENTIFIER secp384r1 (1.3.132.0.34), usable as CKA_EC_PARAMS.
pub const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
/// DER of OBJECT IDENTIFIER id-Ed25519 (1.3.101.112, RFC 8410), usable as CKA_EC_PARAMS.
pub const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];

/// The inverse of [`ecdsa_raw_to_der`]: parses a DER Ecdsa-Sig-Value into r||s, each half
/// left-padded to `half_len` bytes (the curve's field size: 32 for P-256, 48 for P-384). Strict:
/// trailing bytes, negative or oversized integers are errors.
pub fn ecdsa_der_to_raw(der: &[u8], half_len: usize) -> Result<Vec<u8>, DerError> {
    let bad = |m: String| DerError::BadSignature(m);
    let (seq, trailing) = take_tlv(der, 0x30).map_err(bad)?;
    if !trailing.is_empty() {
        return Err(bad("trailing bytes after the signature".into()));
    }
    let (r, rest) = take_tlv(seq, 0x02).map_err(bad)?;
    let (s, rest) = take_tlv(rest, 0x02).map_err(bad)?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes inside the signature".into()));
    }
    let mut out = Vec::with_capacity(2 * half_len);
    for int in [r, s] {
        if int.first().is_none_or(|b| b & 0x80 != 0) {
            return Err(bad("empty or negative integer".into()));
        }
        let digits: &[u8] = match int {
            [0, rest @ ..] if !rest.is_empty() => rest,
            other => other,
        };
        if digits.len() > half_len {
            return Err(bad(format!("integer longer than {half_len} bytes")));
        }
        out.extend(std::iter::repeat_n(0u8, half_len - digits.len()));
        out.extend_from_slice(digits);
    }
    Ok(out)
}

/// PKCS#11 CKM_ECDSA returns r||s (two equal halves). Encode as ASN.1 DER
/// `SEQUENCE { INTEGER r, INTEGER s }` (RFC 3279 Ecdsa-Sig-Value).
///
/// Each half is read as an unsigned big-endian integer: leading zeros are stripped and a
/// 0x00 is prepended where the high bit is set. The values are not range-checked.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, DerError> {
    if raw.is_empty() {
        return Err(DerError::EmptySignature);
    }
    if raw.len() % 2 == 1 {
        return Err(DerError::OddSignatureLength(raw.len()));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(sequence(&[&integer(r), &integer(s)]))
}

/// Unwrap CKA_EC_POINT: PKCS#11 says it is a DER OCTET STRING containing the point; some
/// modules return the bare point. Accept both and return the bare point bytes (for EC,
/// 0x04||X||Y when uncompressed). The point itself is not validated.
///
/// The OCTET STRING tag and the uncompressed prefix are both 0x04: input that parses as one
/// OCTET STRING is unwrapped unless it looks more like a bare SEC1 point than its content does
/// (an X starting with a matching length byte); input that does not parse is kept only if it
/// looks like a bare point. Not for Ed25519 (any first byte): use [`spki_ed25519`].
pub fn unwrap_ec_point(ec_point: &[u8]) -> Result<Vec<u8>, DerError> {
    let Some(&first) = ec_point.first() else {
        return Err(DerError::BadEcPoint("empty CKA_EC_POINT".into()));
    };
    if first != TAG_OCTET_STRING {
        return Ok(ec_point.to_vec());
    }
    match parse_single(ec_point, TAG_OCTET_STRING) {
        Ok([]) => Err(DerError::BadEcPoint("empty OCTET STRING".into())),
        Ok(inner) if sec1_score(ec_point) > sec1_score(inner) => Ok(ec_point.to_vec()),
        Ok(inner) => Ok(inner.to_vec()),
        Err(_) if sec1_score(ec_point) > 0 => Ok(ec_point.to_vec()),
        Err(why) => Err(DerError::BadEcPoint(format!("malformed wrapper: {why}"))),
    }
}

/// SubjectPublicKeyInfo for an EC key: AlgorithmIdentifier{ id-ecPublicKey 1.2.840.10045.2.1,
/// parameters = `ec_params` verbatim }, subjectPublicKey BIT STRING (0 unused bits) of the bare
/// point.
///
/// `ec_params` (CKA_EC_PARAMS) must be one well-formed DER OBJECT IDENTIFIER such as
/// [`OID_P256`] or [`OID_P384`]. `ec_point` (CKA_EC_POINT) goes through [`unwrap_ec_point`],
/// and the resulting point must start with a SEC1 prefix (0x02, 0x03 or 0x04).
pub fn spki_ec(ec_params: &[u8], ec_point: &[u8]) -> Result<Vec<u8>, DerError> {
    check_oid(ec_params).map_err(DerError::BadEcParams)?;
    let point = unwrap_ec_point(ec_point)?;
    if !matches!(point.first(), Some(0x02..=0x04)) {
        let why = format!("no SEC1 prefix 02/03/04: {:02x?}", point.first());
        return Err(DerError::BadEcPoint(why));
    }
    let alg = sequence(&[OID_EC_PUBLIC_KEY, ec_params]);
    Ok(sequence(&[&alg, &bit_string(&point)]))
}

/// SubjectPublicKeyInfo for RSA: AlgorithmIdentifier{ rsaEncryption 1.2.840.113549.1.1.1, NULL },
/// BIT STRING containing RSAPublicKey `SEQUENCE { INTEGER n, INTEGER e }` (PKCS#1).
///
/// Inputs are unsigned big-endian CKA_MODULUS / CKA_PUBLIC_EXPONENT; leading zero bytes are
/// allowed. Either being empty (or zero) is an error.
pub fn spki_rsa(modulus: &[u8], public_exponent: &[u8]) -> Result<Vec<u8>, DerError> {
    if modulus.iter().all(|&b| b == 0) {
        return Err(DerError::EmptyModulus);
    }
    if public_exponent.iter().all(|&b| b == 0) {
        return Err(DerError::EmptyPublicExponent);
    }
    let alg = sequence(&[OID_RSA_ENCRYPTION, NULL]);
    let key = sequence(&[&integer(modulus), &integer(public_exponent)]);
    Ok(sequence(&[&alg, &bit_string(&key)]))
}

/// SubjectPublicKeyInfo for Ed25519 (RFC 8410): AlgorithmIdentifier{ 1.3.101.112 } (no
/// parameters), BIT STRING of the 32-byte key.
///
/// Input is CKA_EC_POINT: either the 32 raw bytes or a DER OCTET STRING of 32 bytes.
pub fn spki_ed25519(ec_point: &[u8]) -> Result<Vec<u8>, DerError> {
    let key = match ec_point.len() {
        32 => ec_point,
        n => match parse_single(ec_point, TAG_OCTET_STRING) {
            Ok(inner) if inner.len() == 32 => inner,
            Ok(inner) => return Err(DerError::BadEd25519Key(inner.len())),
            Err(_) => return Err(DerError::BadEd25519Key(n)),
        },
    };
    let alg = sequence(&[OID_ED25519]);
    Ok(sequence(&[&alg, &bit_string(key)]))
}

/// The DER DigestInfo prefix (RFC 8017 §9.2 note 1) to prepend to a digest for CKM_RSA_PKCS
/// signing.
pub fn digest_info_prefix(alg: DigestAlg) -> &'static [u8] {
    match alg {
        DigestAlg::Sha256 => &DIGEST_INFO_SHA256,
        DigestAlg::Sha384 => &DIGEST_INFO_SHA384,
        DigestAlg::Sha512 => &DIGEST_INFO_SHA512,
    }
}

pub use signer_proto::pem_encode;

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const NULL: &[u8] = &[0x05, 0x00];
/// id-ecPublicKey 1.2.840.10045.2.1
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// rsaEncryption 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
];
const DIGEST_INFO_SHA256: [u8; 19] = digest_info(0x31, 0x01, 0x20);
const DIGEST_INFO_SHA384: [u8; 19] = digest_info(0x41, 0x02, 0x30);
const DIGEST_INFO_SHA512: [u8; 19] = digest_info(0x51, 0x03, 0x40);

/// `SEQUENCE { SEQUENCE { OID 2.16.840.1.101.3.4.2.<arc>, NULL }, OCTET STRING (len) }` header.
const fn digest_info(total: u8, arc: u8, len: u8) -> [u8; 19] {
    [
        0x30, total, 0x30, 0x0D, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, arc,
        0x05, 0x00, 0x04, len,
    ]
}

/// Tag, definite length (short form below 128, else minimal long form), value.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &parts.concat())
}

/// Non-negative INTEGER from unsigned big-endian bytes (empty or all-zero input encodes 0).
fn integer(unsigned_be: &[u8]) -> Vec<u8> {
    let zeros = unsigned_be.iter().take_while(|&&b| b == 0).count();
    let digits = &unsigned_be[zeros..];
    match digits.first() {
        None => tlv(TAG_INTEGER, &[0]),
        Some(&b) if b & 0x80 != 0 => tlv(TAG_INTEGER, &[&[0u8][..], digits].concat()),
        Some(_) => tlv(TAG_INTEGER, digits),
    }
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(TAG_BIT_STRING, &[&[0u8][..], bytes].concat())
}

/// Field-element sizes in bytes of common prime curves (P-192 .. P-521, secp256k1, brainpool).
const FIELD_SIZES: &[usize] = &[24, 28, 32, 40, 48, 64, 66];

/// How much `bytes` looks like a bare SEC1 point: 0 = no; 1 = a 0x02/0x03/0x04 prefix and odd
/// length (field sizes are even); 2 = that, with the length of a point on a common curve.
fn sec1_score(bytes: &[u8]) -> u8 {
    let coords = match bytes.first() {
        Some(0x02 | 0x03) => 1,
        Some(0x04) => 2,
        _ => return 0,
    };
    let odd = bytes.len() % 2 == 1;
    u8::from(odd) + u8::from(odd && FIELD_SIZES.contains(&((bytes.len() - 1) / coords)))
}

/// Parse exactly one DER element with tag `tag` spanning all of `input`; return its value.
fn parse_single(input: &[u8], tag: u8) -> Result<&[u8], String> {
    let (&got, rest) = input.split_first().ok_or("empty input")?;
    if got != tag {
        return Err(format!("tag 0x{got:02x}, expected 0x{tag:02x}"));
    }
    let (&first, rest) = rest.split_first().ok_or("missing length")?;
    let (len, value) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > std::mem::size_of::<usize>() {
            return Err(format!("unsupported length form 0x{first:02x}"));
        }
        let (len_bytes, value) = rest.split_at_checked(n).ok_or("truncated length")?;
        if len_bytes[0] == 0 {
            return Err("non-minimal long-form length".into());
        }
        let len = len_bytes
            .iter()
            .fold(0, |acc, &b| (acc << 8) | usize::from(b));
        if len < 0x80 {
            return Err("long-form length below 128".into());
        }
        (len, value)
    };
    if value.len() == len {
        Ok(value)
    } else {
        Err(format!("length {len} but {} bytes follow", value.len()))
    }
}

/// Splits one TLV with tag `tag` off the front of `input`: returns (value, rest).
fn take_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (&got, rest) = input.split_first().ok_or("empty input")?;
    if got != tag {
        return Err(format!("tag 0x{got:02x}, expected 0x{tag:02x}"));
    }
    let (&first, rest) = rest.split_first().ok_or("missing length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else if first == 0x81 {
        let (&len, rest) = rest.split_first().ok_or("truncated length")?;
        if len < 0x80 {
            return Err("long-form length below 128".into());
        }
        (usize::from(len), rest)
    } else {
        return Err(format!("unsupported length form 0x{first:02x}"));
    };
    rest.split_at_checked(len)
        .ok_or_else(|| format!("length {len} but {} bytes follow", rest.len()))
}

/// Check that `der` is one well-formed OBJECT IDENTIFIER (minimally encoded arcs).
fn check_oid(der: &[u8]) -> Result<(), String> {
    let value = parse_single(der, TAG_OID)?;
    match value.last() {
        None => return Err("empty OBJECT IDENTIFIER".into()),
        Some(&b) if b & 0x80 != 0 => return Err("last arc is unterminated".into()),
        Some(_) => {}
    }
    // An arc may not start with 0x80 (a leading zero group): the first byte, and any byte
    // following a terminating byte.
    let mut starts = std::iter::once(value[0])
        .chain(value.windows(2).filter(|w| w[0] & 0x80 == 0).map(|w| w[1]));
    if starts.any(|b| b == 0x80) {
        return Err("non-minimal arc encoding".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use sha2::{Digest, Sha256, Sha384, Sha512};

    #[test]
    fn length_forms_integers_and_exact_signature_bytes() {
        for (len, header) in [
            (0usize, &[0x04, 0x00][..]),
            (127, &[0x04, 0x7F]),
            (128, &[0x04, 0x81, 0x80]),
            (255, &[0x04, 0x81, 0xFF]),
            (256, &[0x04, 0x82, 0x01, 0x00]),
            (65_536, &[0x04, 0x83, 0x01, 0x00, 0x00]),
        ] {
            let out = tlv(TAG_OCTET_STRING, &vec![0xAB; len]);
            assert_eq!(&out[..header.len()], header, "len {len}");
            assert_eq!(parse_single(&out, TAG_OCTET_STRING).unwrap().len(), len);
        }
        for (input, want) in [
            (&[][..], &[0x02, 0x01, 0x00][..]),
            (&[0, 0], &[0x02, 0x01, 0x00]),
            (&[0x7F], &[0x02, 0x01, 0x7F]),
            (&[0x80], &[0x02, 0x02, 0x00, 0x80]),
            (&[0, 0, 0xFF, 0x01], &[0x02, 0x03, 0x00, 0xFF, 0x01]),
            (&[0, 1, 2], &[0x02, 0x02, 0x01, 0x02]),
        ] {
            assert_eq!(integer(input), want, "input {input:02x?}");
        }
        // r = 1 after leading zeros, s with the high bit set.
        let mut raw = [0u8; 64];
        (raw[31], raw[32], raw[63]) = (0x01, 0x80, 0x01);
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(
            der[..9],
            [0x30, 0x26, 0x02, 0x01, 0x01, 0x02, 0x21, 0x00, 0x80]
        );
        assert_eq!(der.len(), 0x28);
        // P-521-sized halves: SEQUENCE body 2 * (2 + 67) = 138 needs the long form.
        let der = ecdsa_raw_to_der(&[0xFF; 132]).unwrap();
        assert_eq!(
            (&der[..6], der.len()),
            (&[0x30, 0x81, 0x8A, 0x02, 0x43, 0x00][..], 141)
        );
    }

    macro_rules! ec_curve_test {
        ($name:ident, $curve:ident, $oid:expr, $hash:ty) => {
            #[test]
            fn $name() {
                use $curve::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
                use $curve::ecdsa::{Signature, SigningKey};
                use $curve::pkcs8::{DecodePublicKey, EncodePublicKey};
                use $curve::PublicKey;
                let mut high_bit_seen = false;
                for i in 0..24u32 {
                    let sk = SigningKey::random(&mut OsRng);
                    let (vk, public) = (sk.verifying_key(), PublicKey::from(sk.verifying_key()));
                    let want = public.to_public_key_der().unwrap();
                    let point = vk.to_encoded_point(false);
                    let wrapped = tlv(TAG_OCTET_STRING, point.as_bytes());
                    for input in [&wrapped[..], point.as_bytes()] {
                        assert_eq!(unwrap_ec_point(input).unwrap(), point.as_bytes());
                        let spki = spki_ec($oid, input).unwrap();
                        assert_eq!(spki, want.as_bytes());
                        assert_eq!(PublicKey::from_public_key_der(&spki), Ok(public));
                    }
                    let compressed = tlv(TAG_OCTET_STRING, vk.to_encoded_point(true).as_bytes());
                    let spki = spki_ec($oid, &compressed).unwrap();
                    assert_eq!(PublicKey::from_public_key_der(&spki), Ok(public));

                    let digest = <$hash>::digest(i.to_be_bytes());
                    let sig: Signature = sk.sign_prehash(&digest).unwrap();
                    let raw = sig.to_bytes();
                    high_bit_seen |= raw[0] & 0x80 != 0 || raw[raw.len() / 2] & 0x80 != 0;
                    let der = ecdsa_raw_to_der(&raw).unwrap();
                    assert_eq!(der, sig.to_der().as_bytes());
                    let parsed = Signature::from_der(&der).unwrap();
                    assert_eq!(parsed, sig);
                    vk.verify_prehash(&digest, &parsed).unwrap();
                }
                assert!(
                    high_bit_seen,
                    "48 random halves, none with the high bit set"
                );
                // Hand-made r||s: leading zeros, high bit set, both.
                let n = <$hash>::output_size();
                for (r0, s0) in [(0x00, 0x80), (0x80, 0x00), (0x00, 0x00), (0x7F, 0xC3)] {
                    let mut raw = vec![0x11u8; 2 * n];
                    (raw[0], raw[1], raw[n], raw[n + 1]) = (r0, r0, s0, 0x80);
                    let der = ecdsa_raw_to_der(&raw).unwrap();
                    let want = Signature::from_slice(&raw).unwrap().to_der();
                    assert_eq!(der, want.as_bytes(), "raw {raw:02x?}");
                    assert_eq!(Signature::from_der(&der).unwrap().to_vec(), raw);
                }
            }
        };
    }
    ec_curve_test!(p256_spki_and_ecdsa, p256, OID_P256, Sha256);
    ec_curve_test!(p384_spki_and_ecdsa, p384, OID_P384, Sha384);

    #[test]
    fn rsa_spki_and_digest_info() {
        use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
        use rsa::signature::{SignatureEncoding, Signer};
        use rsa::{pkcs1v15::SigningKey, traits::PublicKeyParts};
        use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};

        let sk = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let pk = sk.to_public_key();
        let (n, e) = (pk.n().to_bytes_be(), pk.e().to_bytes_be());
        let spki = spki_rsa(&n, &e).unwrap();
        assert_eq!(spki, pk.to_public_key_der().unwrap().as_bytes());
        assert_eq!(RsaPublicKey::from_public_key_der(&spki).unwrap(), pk);
        // Some modules zero-pad CKA_MODULUS / CKA_PUBLIC_EXPONENT.
        let (padded_n, padded_e) = ([&[0u8][..], &n].concat(), [&[0u8, 0][..], &e].concat());
        assert_eq!(spki_rsa(&padded_n, &padded_e).unwrap(), spki);

        let msg = b"certnode digest info";
        macro_rules! case {
            ($alg:ident) => {
                (
                    DigestAlg::$alg,
                    $alg::digest(msg).to_vec(),
                    Pkcs1v15Sign::new::<$alg>().prefix,
                    SigningKey::<$alg>::new(sk.clone()).sign(msg).to_vec(),
                )
            };
        }
        for (alg, digest, rsa_prefix, want) in [case!(Sha256), case!(Sha384), case!(Sha512)] {
            let prefix = digest_info_prefix(alg);
            assert_eq!(prefix, &*rsa_prefix, "{alg:?}");
            assert_eq!(usize::from(prefix[18]), digest.len());
            let info = [prefix, &digest].concat();
            assert_eq!(usize::from(info[1]) + 2, info.len(), "{alg:?} outer length");
            let raw = sk.sign(Pkcs1v15Sign::new_unprefixed(), &info).unwrap();
            assert_eq!(raw, want, "{alg:?}");
        }
    }

    #[test]
    fn ed25519_spki() {
        use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
        use ed25519_dalek::{SigningKey, VerifyingKey};
        for _ in 0..8 {
            let vk = SigningKey::from_bytes(&rand::random()).verifying_key();
            let want = vk.to_public_key_der().unwrap();
            let raw = vk.to_bytes();
            for input in [raw.to_vec(), tlv(TAG_OCTET_STRING, &raw)] {
                let spki = spki_ed25519(&input).unwrap();
                assert_eq!(spki, want.as_bytes());
                assert_eq!(VerifyingKey::from_public_key_der(&spki).unwrap(), vk);
            }
        }
        // 32 raw bytes that happen to start like an OCTET STRING header stay raw.
        let mut tricky = [0x5Au8; 32];
        (tricky[0], tricky[1]) = (0x04, 0x1E);
        assert!(spki_ed25519(&tricky).unwrap().ends_with(&tricky));
    }

    #[test]
    fn ec_point_unwrapping_edge_cases() {
        // Bare P-256 point whose X starts with 0x3F: also a valid 63-byte OCTET STRING.
        let mut bare = [0x04u8; 65];
        bare[1] = 0x3F;
        assert_eq!(unwrap_ec_point(&bare).unwrap(), bare);
        // A P-521-sized point needs a long-form wrapper.
        let point = [&[0x04u8][..], &[0x01; 132]].concat();
        let wrapped = tlv(TAG_OCTET_STRING, &point);
        assert_eq!(wrapped[..3], [0x04, 0x81, 0x85]);
        assert_eq!(unwrap_ec_point(&wrapped).unwrap(), point);
        // Not starting with the OCTET STRING tag: returned as is.
        assert_eq!(
            unwrap_ec_point(&[0x02, 0xAA, 0xBB]).unwrap(),
            [0x02, 0xAA, 0xBB]
        );
    }

    #[test]
    fn error_cases() {
        let bad_point = |r| matches!(r, Err(DerError::BadEcPoint(_)));
        assert_eq!(ecdsa_raw_to_der(&[]), Err(DerError::EmptySignature));
        assert_eq!(
            ecdsa_raw_to_der(&[1, 2, 3]),
            Err(DerError::OddSignatureLength(3))
        );
        for bad in [
            &[][..],
            &[0x04, 0x00],                         // empty OCTET STRING
            &[0x04, 0x05, 0x01, 0x02],             // length overruns input
            &[0x04, 0x02, 0xAA, 0xBB, 0xCC, 0xDD], // trailing bytes
            &[0x04, 0x81, 0x03, 0xAA, 0xBB, 0xCC], // long form for a short length
            &[0x04, 0x80, 0x04, 0x01, 0x02, 0x00], // indefinite length
            &[0x04, 0x84, 0xFF, 0xFF, 0xFF, 0xFF], // huge length, truncated
        ] {
            assert!(bad_point(unwrap_ec_point(bad)), "{bad:02x?}");
        }
        for params in [
            &[][..],
            &[0x05, 0x00],                   // NULL
            b"\x13\x0aprime256v1",           // PrintableString
            &OID_P256[..6],                  // truncated
            &[OID_P256, &[0x00]].concat(),   // trailing byte
            &[0x06, 0x00],                   // empty OID
            &[0x06, 0x02, 0x2B, 0x86],       // unterminated arc
            &[0x06, 0x03, 0x2B, 0x80, 0x01], // non-minimal arc
            &[0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70],
        ] {
            let got = spki_ec(params, &[0x04; 65]);
            assert!(
                matches!(got, Err(DerError::BadEcParams(_))),
                "{params:02x?}"
            );
        }
        assert!(bad_point(spki_ec(OID_P256, &[0x05; 65])));
        assert_eq!(spki_rsa(&[], &[1, 0, 1]), Err(DerError::EmptyModulus));
        assert_eq!(spki_rsa(&[0, 0], &[1, 0, 1]), Err(DerError::EmptyModulus));
        assert_eq!(
            spki_rsa(&[0xC5; 128], &[0]),
            Err(DerError::EmptyPublicExponent)
        );
        assert_eq!(
            spki_rsa(&[0xC5; 128], &[]),
            Err(DerError::EmptyPublicExponent)
        );
        for (input, len) in [(vec![], 0), (vec![7; 31], 31), (vec![7; 33], 33)] {
            assert_eq!(spki_ed25519(&input), Err(DerError::BadEd25519Key(len)));
        }
        let short = tlv(TAG_OCTET_STRING, &[7; 31]);
        assert_eq!(spki_ed25519(&short), Err(DerError::BadEd25519Key(31)));
        let lying = [&[0x04u8, 0x21][..], &[7; 32]].concat(); // claims 33 bytes, has 32
        assert_eq!(spki_ed25519(&lying), Err(DerError::BadEd25519Key(34)));
    }

    #[test]
    fn der_signature_round_trips_to_raw() {
        for raw in [
            [[0x80u8; 32], [0x01u8; 32]].concat(),
            [[0u8; 32], [0x7fu8; 32]].concat(),
            [vec![0, 0, 5], vec![0xffu8; 29], vec![9u8; 32]].concat(),
        ] {
            let der = ecdsa_raw_to_der(&raw).unwrap();
            assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
            let mut longer = der.clone();
            longer.push(0);
            assert!(ecdsa_der_to_raw(&longer, 32).is_err());
            assert!(ecdsa_der_to_raw(&der[..der.len() - 1], 32).is_err());
            assert!(ecdsa_der_to_raw(&der, 16).is_err());
        }
        assert!(ecdsa_der_to_raw(&[0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01], 32).is_err());
    }
}
