//! Key objects in the token: generation, discovery, public-key export, replication by wrapping
//! under the trusted KEK, retirement and destruction.
//!
//! All key metadata lives in the token: a key version is a private/public key pair with
//! `CKA_LABEL = "signerd:{name}:v{version}"` (`"signerd-audit:..."` for audit keys) and a random
//! 16-byte `CKA_ID` shared by its copies on every partition; its type comes from `CKA_KEY_TYPE`
//! and the curve or modulus; its state is `CKA_SIGN` on the private key (false = retired,
//! enforced by the HSM itself).

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::der::{self, OID_ED25519, OID_P256, OID_P384};
use super::error::{ErrorClass, HsmError, HsmResult};
use signer_proto::keys::{KeyName, KeyType, Version};

/// Prefix of the labels of our key objects.
pub const LABEL_PREFIX: &str = "signerd:";
/// Prefix of the labels of audit keys: the mark, kept in the token itself, that a key signs
/// audit checkpoints and nothing else. Clients never reach a key so labelled (only its public
/// key), whatever the config says, and a key without it is never adopted as an audit key.
pub const AUDIT_LABEL_PREFIX: &str = "signerd-audit:";

/// What a key is for, as its label in the token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    /// Signs for clients.
    Client,
    /// Signs the daemon's audit checkpoints, nothing else.
    Audit,
}

impl KeyRole {
    fn prefix(self) -> &'static str {
        match self {
            KeyRole::Client => LABEL_PREFIX,
            KeyRole::Audit => AUDIT_LABEL_PREFIX,
        }
    }
}
/// Label of the trusted key-encryption key used to replicate keys between partitions.
pub const KEK_LABEL: &str = "signerd-kek";
/// Length of key version ids (`CKA_ID`).
pub const ID_LEN: usize = 16;

/// A key version found in a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundKey {
    /// Key name (from the label).
    pub name: KeyName,
    /// Version (from the label).
    pub version: Version,
    /// `CKA_ID`, shared by all copies of this version.
    pub id: Vec<u8>,
    /// Key type.
    pub key_type: KeyType,
    /// `CKA_SIGN` of the private key: false once retired.
    pub can_sign: bool,
    /// SubjectPublicKeyInfo DER from the public key object.
    pub spki: Vec<u8>,
    /// What the label says the key is for.
    pub role: KeyRole,
}

/// The label of a key version's objects.
pub fn key_label(name: &KeyName, version: Version, role: KeyRole) -> String {
    format!("{}{name}:v{version}", role.prefix())
}

/// Parses a label written by [`key_label`]; `None` for labels that are not ours.
pub fn parse_label(label: &str) -> Option<(KeyName, Version, KeyRole)> {
    let (role, rest) = [KeyRole::Audit, KeyRole::Client]
        .into_iter()
        .find_map(|r| Some((r, label.strip_prefix(r.prefix())?)))?;
    let (name, v) = rest.rsplit_once(":v")?;
    let version: Version = v.parse().ok().filter(|v| *v >= 1)?;
    Some((KeyName::new(name).ok()?, version, role))
}

/// Generates a key pair inside the token: private key sensitive and a token object.
///
/// With `for_replication` the private key starts extractable but only under trusted keys
/// (`CKA_WRAP_WITH_TRUSTED`), because PKCS#11 refuses to wrap a key whose `CKA_EXTRACTABLE` is
/// false; the caller copies it and then [`seal`]s it. Otherwise it is non-extractable from the
/// start.
pub fn generate(
    session: &Session,
    key_type: KeyType,
    name: &KeyName,
    version: Version,
    role: KeyRole,
    id: &[u8],
    for_replication: bool,
) -> HsmResult<(ObjectHandle, ObjectHandle)> {
    let label = key_label(name, version, role).into_bytes();
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Label(label.clone()),
        Attribute::Id(id.to_vec()),
    ];
    let mut private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(for_replication),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::Label(label),
        Attribute::Id(id.to_vec()),
    ];
    if for_replication {
        private.push(Attribute::WrapWithTrusted(true));
    }
    let mechanism = match key_type {
        KeyType::EcP256 | KeyType::EcP384 | KeyType::Ed25519 => {
            public.push(Attribute::EcParams(curve_oid(key_type).to_vec()));
            if key_type == KeyType::Ed25519 {
                Mechanism::EccEdwardsKeyPairGen
            } else {
                Mechanism::EccKeyPairGen
            }
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let bits = u64::from(key_type.rsa_bits().unwrap_or(2048));
            public.push(Attribute::ModulusBits(bits.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    Ok(session.generate_key_pair(&mechanism, &public, &private)?)
}

/// Finds the token private key object of a key version by its id.
pub fn find_private(session: &Session, id: &[u8]) -> HsmResult<Option<ObjectHandle>> {
    find_one(session, ObjectClass::PRIVATE_KEY, id)
}

/// Finds the token public key object of a key version by its id.
pub fn find_public(session: &Session, id: &[u8]) -> HsmResult<Option<ObjectHandle>> {
    find_one(session, ObjectClass::PUBLIC_KEY, id)
}

/// Makes a session-object copy of a private key (stays in the token, sensitive, non-extractable).
pub fn session_copy(session: &Session, key: ObjectHandle) -> HsmResult<ObjectHandle> {
    Ok(session.copy_object(key, &[Attribute::Token(false)])?)
}

/// Lists every key version in the token, with its type, state and public key. A private key
/// found extractable is sealed first, or left out (logged as an error) if it cannot be.
pub fn scan(session: &Session) -> HsmResult<Vec<FoundKey>> {
    let handles = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Token(true),
    ])?;
    let mut out = Vec::new();
    for h in handles {
        // Another process may destroy objects while we look: skip what vanished.
        let attrs = match session.get_attributes(
            h,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::Sign,
                AttributeType::Extractable,
            ],
        ) {
            Ok(a) => a,
            Err(e) => match HsmError::from(e) {
                e if e.class() == ErrorClass::StaleHandle => continue,
                e => return Err(e),
            },
        };
        let (mut label, mut id, mut can_sign) = (None, None, false);
        // A token that does not say counts as extractable: sealing is idempotent.
        let mut extractable = true;
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8(l).ok(),
                Attribute::Id(i) => id = Some(i),
                Attribute::Sign(s) => can_sign = s,
                Attribute::Extractable(e) => extractable = e,
                _ => {}
            }
        }
        let (Some((name, version, role)), Some(id)) = (label.as_deref().and_then(parse_label), id)
        else {
            continue;
        };
        if extractable {
            // Left extractable by a create or replication that never reached its seal (a crash,
            // a failed rollback). Never served that way: sealed now, or not served at all.
            match seal(session, h) {
                Ok(()) => tracing::warn!(
                    key = %name,
                    version,
                    "private key was extractable (an interrupted create or replication); sealed it (CKA_EXTRACTABLE=false)"
                ),
                Err(e) if e.class() == ErrorClass::StaleHandle => continue,
                Err(e) => {
                    tracing::error!(
                        key = %name,
                        version,
                        "private key is extractable and could not be sealed ({e}); refusing to serve it until it is"
                    );
                    continue;
                }
            }
        }
        let Some(public) = find_public(session, &id)? else {
            tracing::warn!(key = %name, version, "private key without public key object; skipped");
            continue;
        };
        let (key_type, spki) = match public_key(session, public) {
            Ok(k) => k,
            Err(e) if e.class() == ErrorClass::StaleHandle => continue,
            Err(e) => return Err(e),
        };
        out.push(FoundKey {
            name,
            version,
            id,
            key_type,
            can_sign,
            spki,
            role,
        });
    }
    Ok(out)
}

/// Reads a public key object: its key type and SubjectPublicKeyInfo DER.
pub fn public_key(session: &Session, public: ObjectHandle) -> HsmResult<(KeyType, Vec<u8>)> {
    let attrs = session.get_attributes(
        public,
        &[
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::EcPoint,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ],
    )?;
    let mut kt = None;
    let (mut params, mut point, mut modulus, mut exponent) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => kt = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    let bad = |m: &str| HsmError::Unexpected(format!("public key object: {m}"));
    let der_err = |e: der::DerError| bad(&e.to_string());
    match (kt, params, point, modulus, exponent) {
        (Some(k), Some(params), Some(point), _, _) if k == CkKeyType::EC => {
            let key_type = if params == OID_P256 {
                KeyType::EcP256
            } else if params == OID_P384 {
                KeyType::EcP384
            } else {
                return Err(bad("unsupported curve"));
            };
            Ok((key_type, der::spki_ec(&params, &point).map_err(der_err)?))
        }
        (Some(k), Some(_), Some(point), _, _) if k == CkKeyType::EC_EDWARDS => Ok((
            KeyType::Ed25519,
            der::spki_ed25519(&point).map_err(der_err)?,
        )),
        (Some(k), _, _, Some(n), Some(e)) if k == CkKeyType::RSA => {
            let significant = n.iter().skip_while(|b| **b == 0).count();
            let key_type = match significant * 8 {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                bits => return Err(bad(&format!("unsupported RSA size {bits}"))),
            };
            Ok((key_type, der::spki_rsa(&n, &e).map_err(der_err)?))
        }
        _ => Err(bad("unsupported key type or missing attributes")),
    }
}

/// Finds the trusted key-encryption key established at `init`.
pub fn find_kek(session: &Session) -> HsmResult<Option<ObjectHandle>> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
    ])?;
    Ok(found.first().copied())
}

/// Wraps a private key under the KEK (`CKM_AES_KEY_WRAP_PAD`). The result is ciphertext; the
/// private key never exists in the clear outside the token.
pub fn wrap_private(session: &Session, kek: ObjectHandle, key: ObjectHandle) -> HsmResult<Vec<u8>> {
    Ok(session.wrap_key(&Mechanism::AesKeyWrapPad, kek, key)?)
}

/// The template of a private key copy unwrapped by [`unwrap_copy`] (without its label and id): a
/// sensitive, non-extractable token object that signs and does nothing else, wrappable again
/// only under a trusted key. It names every attribute of the KEK's `CKA_UNWRAP_TEMPLATE`
/// (`crate::dev::kek_unwrap_template`) with the same value: tokens refuse an unwrap that
/// contradicts it (SoftHSM2 also one that lacks any of them).
pub fn unwrap_template(key_type: KeyType) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(ck_key_type(key_type)),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::WrapWithTrusted(true),
    ]
}

/// Unwraps a private key into this token as a sensitive, non-extractable token object and creates
/// the matching public key object from `source_public` (attributes read from the source token).
#[allow(clippy::too_many_arguments)]
pub fn unwrap_copy(
    session: &Session,
    kek: ObjectHandle,
    wrapped: &[u8],
    key_type: KeyType,
    name: &KeyName,
    version: Version,
    role: KeyRole,
    id: &[u8],
    source_public: Vec<Attribute>,
) -> HsmResult<(ObjectHandle, ObjectHandle)> {
    let label = key_label(name, version, role).into_bytes();
    let ck_type = ck_key_type(key_type);
    let mut template = unwrap_template(key_type);
    template.extend([Attribute::Label(label.clone()), Attribute::Id(id.to_vec())]);
    let private = session.unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &template)?;
    let mut public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(ck_type),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Label(label),
        Attribute::Id(id.to_vec()),
    ];
    public.extend(source_public);
    match session.create_object(&public) {
        Ok(h) => Ok((private, h)),
        Err(e) => {
            let _ = session.destroy_object(private);
            Err(e.into())
        }
    }
}

/// The public-key attributes needed to recreate a public key object elsewhere.
pub fn public_attributes(
    session: &Session,
    public: ObjectHandle,
    key_type: KeyType,
) -> HsmResult<Vec<Attribute>> {
    let wanted: &[AttributeType] = match key_type {
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            &[AttributeType::Modulus, AttributeType::PublicExponent]
        }
        _ => &[AttributeType::EcParams, AttributeType::EcPoint],
    };
    let attrs = session.get_attributes(public, wanted)?;
    if attrs.len() != wanted.len() {
        return Err(HsmError::Unexpected(
            "public key object lacks key attributes".into(),
        ));
    }
    Ok(attrs)
}

/// Makes a private key non-extractable for good (`CKA_EXTRACTABLE` can only go from true to
/// false) and checks that the token says so.
pub fn seal(session: &Session, private: ObjectHandle) -> HsmResult<()> {
    session.update_attributes(private, &[Attribute::Extractable(false)])?;
    let attrs = session.get_attributes(
        private,
        &[AttributeType::Extractable, AttributeType::Sensitive],
    )?;
    if attrs.contains(&Attribute::Extractable(false)) && attrs.contains(&Attribute::Sensitive(true))
    {
        Ok(())
    } else {
        let flag = |wanted: fn(&Attribute) -> Option<bool>| {
            attrs
                .iter()
                .find_map(wanted)
                .map_or("unknown", |b| if b { "true" } else { "false" })
        };
        let extractable = flag(|a| match a {
            Attribute::Extractable(b) => Some(*b),
            _ => None,
        });
        let sensitive = flag(|a| match a {
            Attribute::Sensitive(b) => Some(*b),
            _ => None,
        });
        Err(HsmError::Unexpected(format!(
            "key did not seal: the token reports CKA_EXTRACTABLE {extractable}, CKA_SENSITIVE \
             {sensitive}"
        )))
    }
}

/// Label prefix of the token data objects that hold each key name's version high-water mark.
pub const HIGH_WATER_PREFIX: &str = "signerd-versions:";

fn high_water_template(name: &KeyName) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(format!("{HIGH_WATER_PREFIX}{name}").into_bytes()),
    ]
}

/// The highest version number of `name` destroyed in this token while it was the highest, kept
/// in a data object that outlives the versions themselves, so a number is never handed out
/// twice.
/// `None`: no mark (a key made before marks existed, or never made here).
pub fn high_water(session: &Session, name: &KeyName) -> HsmResult<Option<Version>> {
    let found = session.find_objects(&high_water_template(name))?;
    let mut highest = None;
    for h in found {
        let attrs = session.get_attributes(h, &[AttributeType::Value])?;
        let value = attrs.into_iter().find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        });
        let v = value
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| {
                HsmError::Unexpected(format!(
                    "the version mark of {name} in this token is not a 4-byte number"
                ))
            })?;
        highest = highest.max(Some(v));
    }
    Ok(highest)
}

/// Raises `name`'s high-water mark in this token to `version` (never lowering it). Called
/// before the highest version of a name is destroyed, so a crash after leaves the mark at or
/// above every version that existed. A data object's value cannot be changed in place (SoftHSM2 refuses
/// `CKA_VALUE` updates), so the new mark is created first and the older ones destroyed after:
/// a crash in between leaves two marks, and the highest counts.
pub fn raise_high_water(session: &Session, name: &KeyName, version: Version) -> HsmResult<()> {
    if high_water(session, name)?.is_some_and(|v| v >= version) {
        return Ok(());
    }
    let template = high_water_template(name);
    let older = session.find_objects(&template)?;
    let mut t = template;
    t.extend([
        Attribute::Private(true),
        Attribute::Application(b"signerd".to_vec()),
        Attribute::Value(version.to_be_bytes().to_vec()),
    ]);
    session.create_object(&t)?;
    for h in older {
        match session.destroy_object(h).map_err(HsmError::from) {
            Ok(()) => {}
            Err(e) if e.class() == ErrorClass::StaleHandle => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Stops a private key from signing (`CKA_SIGN=false`); the HSM then refuses to sign with it.
pub fn disable_signing(session: &Session, private: ObjectHandle) -> HsmResult<()> {
    Ok(session.update_attributes(private, &[Attribute::Sign(false)])?)
}

/// Destroys every object (private, public, token or session) of a key version: "destroyed" is
/// never reported while any object with the id survives. Returns how many were destroyed.
pub fn destroy_version(session: &Session, id: &[u8]) -> HsmResult<usize> {
    let mut n = 0;
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        n += destroy_all(session, id, &[Attribute::Class(class)])?;
    }
    Ok(n)
}

/// Destroys the session-object copies of a private key that this process's workers made
/// (`session_key_copy`): session objects are visible to every session of the application, so
/// one admin session reaches every worker's copies. Returns how many were destroyed.
pub fn destroy_session_copies(session: &Session, id: &[u8]) -> HsmResult<usize> {
    destroy_all(
        session,
        id,
        &[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(false),
        ],
    )
}

/// Destroys every object with key id `id` that matches `template`, then looks again and fails
/// if any is left. An object that vanished meanwhile (another session destroyed it) is not an
/// error. Returns how many were destroyed.
fn destroy_all(session: &Session, id: &[u8], template: &[Attribute]) -> HsmResult<usize> {
    let mut template = template.to_vec();
    template.push(Attribute::Id(id.to_vec()));
    let mut n = 0;
    for h in session.find_objects(&template)? {
        match session.destroy_object(h).map_err(HsmError::from) {
            Ok(()) => n += 1,
            Err(e) if e.class() == ErrorClass::StaleHandle => {}
            Err(e) => return Err(e),
        }
    }
    let left = session.find_objects(&template)?.len();
    if left > 0 {
        return Err(HsmError::Unexpected(format!(
            "{left} objects of key id {} are still in the token after destroying {n}",
            hex(id)
        )));
    }
    Ok(n)
}

fn find_one(session: &Session, class: ObjectClass, id: &[u8]) -> HsmResult<Option<ObjectHandle>> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Token(true),
        Attribute::Id(id.to_vec()),
    ])?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(Some(found[0])),
        n => Err(HsmError::Unexpected(format!(
            "{n} token objects share the key id {}; refusing to guess which to use",
            hex(id)
        ))),
    }
}

fn curve_oid(key_type: KeyType) -> &'static [u8] {
    match key_type {
        KeyType::EcP384 => OID_P384,
        KeyType::Ed25519 => OID_ED25519,
        _ => OID_P256,
    }
}

fn ck_key_type(key_type: KeyType) -> CkKeyType {
    match key_type {
        KeyType::EcP256 | KeyType::EcP384 => CkKeyType::EC,
        KeyType::Ed25519 => CkKeyType::EC_EDWARDS,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => CkKeyType::RSA,
    }
}

/// Lower-case hex, for ids in messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let name = KeyName::new("pay:ments").ok();
        assert!(
            name.is_none(),
            "':' is not allowed in names, so labels are unambiguous"
        );
        let name = KeyName::new("payments-v2").unwrap();
        let label = key_label(&name, 12, KeyRole::Client);
        assert_eq!(label, "signerd:payments-v2:v12");
        assert_eq!(
            parse_label(&label),
            Some((name.clone(), 12, KeyRole::Client))
        );
        let audit = key_label(&name, 3, KeyRole::Audit);
        assert_eq!(audit, "signerd-audit:payments-v2:v3");
        assert_eq!(parse_label(&audit), Some((name, 3, KeyRole::Audit)));
        for other in [
            "signerd:x",
            "signerd:x:v0",
            "signerd:x:vq",
            "other:x:v1",
            "signerd::v1",
            "signerd-audit::v1",
            "signerd-auditx:v1",
        ] {
            assert_eq!(parse_label(other), None, "{other}");
        }
    }
}
