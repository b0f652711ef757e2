//! What a partition's token can do, probed once at start (`C_GetMechanismList`, then
//! `C_GetMechanismInfo` for every mechanism signerd uses), and kept: which key types it can
//! generate, which schemes it can sign with. `key create` refuses a type a partition cannot do
//! before any object is made, naming the partition and the missing mechanism; `signerd check`
//! prints the table.
//!
//! Key sizes: RSA moduli are checked against the mechanism's `[ulMinKeySize, ulMaxKeySize]` in
//! bits. For EC key-pair generation the sizes are the curve's field size in bits per PKCS#11, but
//! some vendor modules report bytes; a curve is accepted when either fits. Ed25519's size is not
//! checked (modules report 255, 256 or 32). A size range of `0..0` means "not given" and is not
//! checked. A module whose mechanism list cannot be read at all is treated as able to do
//! everything (the token is asked at `C_GenerateKeyPair`, as before), with a warning.

use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::slot::Slot;
use serde::Serialize;

use super::mechanism::mechanism;
use super::module::Module;
use super::raw::RawCalls;
use signer_proto::keys::{KeyType, Scheme};

/// One probed mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MechInfo {
    /// `ulMinKeySize`.
    pub min_key_size: u64,
    /// `ulMaxKeySize`.
    pub max_key_size: u64,
    /// `CKF_SIGN`.
    pub sign: bool,
    /// `CKF_GENERATE_KEY_PAIR`.
    pub generate_key_pair: bool,
}

impl From<&MechanismInfo> for MechInfo {
    fn from(i: &MechanismInfo) -> Self {
        MechInfo {
            min_key_size: i.min_key_size() as u64,
            max_key_size: i.max_key_size() as u64,
            sign: i.sign(),
            generate_key_pair: i.generate_key_pair(),
        }
    }
}

/// What one token can do, as its module answered at start.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// `None`: the mechanism list could not be read (the reason); everything is assumed.
    unknown: Option<String>,
    /// The mechanisms signerd uses that `C_GetMechanismList` named.
    listed: Vec<MechanismType>,
    /// How many mechanisms it named in all.
    count: usize,
    /// `C_GetMechanismInfo` of the listed mechanisms signerd uses (absent: the info call failed).
    info: Vec<(MechanismType, MechInfo)>,
}

/// The key-pair generation mechanism of `key_type`.
pub fn keygen_mechanism(key_type: KeyType) -> MechanismType {
    match key_type {
        KeyType::EcP256 | KeyType::EcP384 => MechanismType::ECC_KEY_PAIR_GEN,
        KeyType::Ed25519 => MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            MechanismType::RSA_PKCS_KEY_PAIR_GEN
        }
    }
}

/// The key size `key_type` needs of its generation mechanism, in bits (`None`: not checked).
fn key_bits(key_type: KeyType) -> Option<u64> {
    match key_type {
        KeyType::EcP256 => Some(256),
        KeyType::EcP384 => Some(384),
        KeyType::Ed25519 => None,
        t => t.rsa_bits().map(u64::from),
    }
}

/// The schemes of `key_type`.
fn schemes_of(key_type: KeyType) -> impl Iterator<Item = Scheme> {
    Scheme::ALL
        .into_iter()
        .filter(move |s| key_type.supports(*s))
}

/// The mechanisms signerd uses: key-pair generation and signing.
fn used_mechanisms() -> Vec<MechanismType> {
    let mut out: Vec<MechanismType> = Vec::new();
    let all = KeyType::ALL.into_iter().map(keygen_mechanism).chain(
        Scheme::ALL
            .into_iter()
            .map(|s| mechanism(s).mechanism_type()),
    );
    for m in all {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

impl Capabilities {
    /// Asks the token in `slot`: the mechanism list, then the info of each mechanism signerd
    /// uses. Never fails: a list that cannot be read leaves everything assumed (logged by the
    /// caller through [`Capabilities::unknown`]).
    pub fn probe(module: &Module, slot: Slot) -> Capabilities {
        // The list is read raw (every number kept: cryptoki's drops, and logs, the ones it has
        // no name for); the infos through cryptoki, for the mechanisms signerd uses only.
        let all = match RawCalls::open(module).and_then(|raw| raw.mechanism_list(slot)) {
            Ok(l) => l,
            Err(e) => {
                return Capabilities {
                    unknown: Some(format!("C_GetMechanismList failed: {e}")),
                    ..Capabilities::default()
                }
            }
        };
        let listed: Vec<MechanismType> = used_mechanisms()
            .into_iter()
            .filter(|m| all.contains(&**m))
            .collect();
        let mut info = Vec::new();
        for m in &listed {
            match module.ctx().get_mechanism_info(slot, *m) {
                Ok(i) => info.push((*m, MechInfo::from(&i))),
                Err(e) => tracing::debug!(mechanism = %m, "C_GetMechanismInfo failed: {e}"),
            }
        }
        let mut c = Capabilities::from_parts(listed, info);
        c.count = all.len();
        c
    }

    /// Capabilities from a mechanism list and infos (tests; [`Capabilities::probe`]).
    pub fn from_parts(listed: Vec<MechanismType>, info: Vec<(MechanismType, MechInfo)>) -> Self {
        Capabilities {
            unknown: None,
            count: listed.len(),
            listed,
            info,
        }
    }

    /// Why nothing is known (the mechanism list could not be read), if so.
    pub fn unknown(&self) -> Option<&str> {
        self.unknown.as_deref()
    }

    /// How many mechanisms the module listed.
    pub fn listed(&self) -> usize {
        self.count
    }

    /// Whether `m` is listed and, where its info was read, passes `ok`.
    fn has(&self, m: MechanismType, ok: impl Fn(&MechInfo) -> bool) -> bool {
        if self.unknown.is_some() {
            return true;
        }
        if !self.listed.contains(&m) {
            return false;
        }
        match self.info.iter().find(|(n, _)| *n == m) {
            Some((_, i)) => ok(i),
            None => true,
        }
    }

    /// Why a key of `key_type` cannot be created here (`None`: it can): its generation
    /// mechanism is missing, does not generate key pairs, or not of this size; or the module
    /// lists no mechanism to sign with it. The text completes "partition P cannot create T keys: ".
    pub fn cannot_create(&self, key_type: KeyType) -> Option<String> {
        if self.unknown.is_some() {
            return None;
        }
        let gen = keygen_mechanism(key_type);
        if !self.listed.contains(&gen) {
            return Some(format!("its module lacks {gen}"));
        }
        if let Some((_, i)) = self.info.iter().find(|(n, _)| *n == gen) {
            if !i.generate_key_pair {
                return Some(format!(
                    "its module's {gen} does not generate key pairs (no CKF_GENERATE_KEY_PAIR)"
                ));
            }
            if let Some(bits) = key_bits(key_type) {
                let (lo, hi) = (i.min_key_size, i.max_key_size);
                let fits = |n: u64| lo <= n && n <= hi;
                let ec = matches!(key_type, KeyType::EcP256 | KeyType::EcP384);
                if hi != 0 && !fits(bits) && !(ec && fits(bits / 8)) {
                    return Some(format!(
                        "its module's {gen} supports key sizes {lo}-{hi}, not {bits} bits"
                    ));
                }
            }
        }
        if !schemes_of(key_type).any(|s| self.can_sign(s)) {
            let mut names: Vec<String> = Vec::new();
            for s in schemes_of(key_type) {
                let n = mechanism(s).mechanism_type().to_string();
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            return Some(format!(
                "its module lacks every mechanism to sign with them ({})",
                names.join(", ")
            ));
        }
        None
    }

    /// Whether the module can sign with `scheme` (its mechanism is listed with `CKF_SIGN`).
    pub fn can_sign(&self, scheme: Scheme) -> bool {
        self.has(mechanism(scheme).mechanism_type(), |i| i.sign)
    }

    /// The key types this token can create.
    pub fn key_types(&self) -> Vec<KeyType> {
        KeyType::ALL
            .into_iter()
            .filter(|t| self.cannot_create(*t).is_none())
            .collect()
    }

    /// The schemes this token can sign with.
    pub fn schemes(&self) -> Vec<Scheme> {
        Scheme::ALL
            .into_iter()
            .filter(|s| self.can_sign(*s))
            .collect()
    }

    /// The table `signerd check` prints (and `--json`).
    pub fn report(&self, partition: &str) -> CapabilityReport {
        CapabilityReport {
            partition: partition.to_owned(),
            probed: self.unknown.is_none(),
            error: self.unknown.clone(),
            mechanisms: self.count,
            key_types: self.key_types().iter().map(|t| t.as_str().into()).collect(),
            cannot_create: KeyType::ALL
                .into_iter()
                .filter_map(|t| {
                    self.cannot_create(t).map(|why| Missing {
                        key_type: t.as_str().into(),
                        reason: why,
                    })
                })
                .collect(),
            schemes: self.schemes().iter().map(|s| s.as_str().into()).collect(),
        }
    }
}

/// One partition's row of `signerd check`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CapabilityReport {
    /// Partition name.
    pub partition: String,
    /// Whether the mechanism list was read (false: everything is assumed).
    pub probed: bool,
    /// Why it was not.
    pub error: Option<String>,
    /// How many mechanisms the module listed.
    pub mechanisms: usize,
    /// Key types it can create.
    pub key_types: Vec<String>,
    /// Key types it cannot create, and why.
    pub cannot_create: Vec<Missing>,
    /// Schemes it can sign with.
    pub schemes: Vec<String>,
}

/// A key type a partition cannot create.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Missing {
    /// The key type.
    pub key_type: String,
    /// Why (completes "cannot create KEY_TYPE keys: ").
    pub reason: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(min: u64, max: u64, sign: bool, gen: bool) -> MechInfo {
        MechInfo {
            min_key_size: min,
            max_key_size: max,
            sign,
            generate_key_pair: gen,
        }
    }

    /// What SoftHSM2 2.6 answers for the mechanisms signerd uses.
    fn softhsm_like() -> Capabilities {
        let s = info(0, 0, true, false);
        Capabilities::from_parts(
            used_mechanisms(),
            vec![
                (MechanismType::ECC_KEY_PAIR_GEN, info(256, 521, false, true)),
                (
                    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                    info(255, 255, false, true),
                ),
                (
                    MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                    info(512, 16384, false, true),
                ),
                (MechanismType::ECDSA, s),
                (MechanismType::RSA_PKCS, s),
                (MechanismType::RSA_PKCS_PSS, s),
                (MechanismType::EDDSA, s),
            ],
        )
    }

    #[test]
    fn a_full_module_does_everything() {
        let c = softhsm_like();
        assert_eq!(c.key_types(), KeyType::ALL.to_vec());
        assert_eq!(c.schemes(), Scheme::ALL.to_vec());
    }

    #[test]
    fn a_missing_keygen_mechanism_is_named() {
        let mut c = softhsm_like();
        c.listed
            .retain(|m| *m != MechanismType::ECC_EDWARDS_KEY_PAIR_GEN);
        assert_eq!(
            c.cannot_create(KeyType::Ed25519).unwrap(),
            "its module lacks CKM_EC_EDWARDS_KEY_PAIR_GEN"
        );
        assert!(c.cannot_create(KeyType::EcP256).is_none());
        assert!(!c.key_types().contains(&KeyType::Ed25519));
        assert!(c.can_sign(Scheme::Ed25519), "signing is another mechanism");
    }

    #[test]
    fn rsa_sizes_outside_the_range_are_refused() {
        let mut c = softhsm_like();
        c.info[2].1 = info(1024, 3072, false, true);
        assert!(c.cannot_create(KeyType::Rsa3072).is_none());
        assert_eq!(
            c.cannot_create(KeyType::Rsa4096).unwrap(),
            "its module's CKM_RSA_PKCS_KEY_PAIR_GEN supports key sizes 1024-3072, not 4096 bits"
        );
    }

    #[test]
    fn ec_sizes_in_bytes_are_accepted() {
        let mut c = softhsm_like();
        c.info[0].1 = info(32, 48, false, true);
        assert!(c.cannot_create(KeyType::EcP256).is_none());
        assert!(c.cannot_create(KeyType::EcP384).is_none());
        c.info[0].1 = info(256, 256, false, true);
        assert!(c
            .cannot_create(KeyType::EcP384)
            .unwrap()
            .contains("not 384 bits"));
    }

    #[test]
    fn no_signing_mechanism_means_no_key_type() {
        let mut c = softhsm_like();
        c.listed
            .retain(|m| *m != MechanismType::RSA_PKCS && *m != MechanismType::RSA_PKCS_PSS);
        let why = c.cannot_create(KeyType::Rsa2048).unwrap();
        assert!(why.contains("CKM_RSA_PKCS, CKM_RSA_PKCS_PSS"), "{why}");
        assert!(!c.can_sign(Scheme::RsaPssSha256));
        // One of them is enough.
        c.listed.push(MechanismType::RSA_PKCS_PSS);
        assert!(c.cannot_create(KeyType::Rsa2048).is_none());
    }

    #[test]
    fn flags_are_respected() {
        let mut c = softhsm_like();
        c.info[1].1 = info(255, 255, false, false);
        assert!(c
            .cannot_create(KeyType::Ed25519)
            .unwrap()
            .contains("CKF_GENERATE_KEY_PAIR"));
        c.info[6].1 = info(0, 0, false, false);
        assert!(!c.can_sign(Scheme::Ed25519));
    }

    #[test]
    fn an_unreadable_list_assumes_everything() {
        let c = Capabilities {
            unknown: Some("C_GetMechanismList failed".into()),
            ..Capabilities::default()
        };
        assert_eq!(c.key_types().len(), KeyType::ALL.len());
        let r = c.report("p0");
        assert!(!r.probed);
        assert!(r.cannot_create.is_empty());
    }

    #[test]
    fn the_report_lists_what_is_missing() {
        let mut c = softhsm_like();
        c.listed
            .retain(|m| *m != MechanismType::ECC_EDWARDS_KEY_PAIR_GEN);
        let r = c.report("p1");
        assert_eq!(r.partition, "p1");
        assert!(!r.key_types.contains(&"ed25519".to_owned()));
        assert_eq!(r.cannot_create.len(), 1);
        assert_eq!(r.cannot_create[0].key_type, "ed25519");
        assert!(r.schemes.contains(&"ed25519".to_owned()));
    }
}
