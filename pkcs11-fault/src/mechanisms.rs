//! `kind = "hide_mechanism"`: a module that lacks a mechanism the wrapped one has (a vendor
//! token without EdDSA, an HSM without RSA-PSS). The hidden mechanisms are removed from
//! `C_GetMechanismList`'s answer (the count too, also for the size query) and
//! `C_GetMechanismInfo` answers `CKR_MECHANISM_INVALID` for them.

use cryptoki_sys::*;

/// The `CKM_*` names a rule may use (others by number).
const NAMES: [(&str, CK_MECHANISM_TYPE); 22] = [
    ("CKM_RSA_PKCS_KEY_PAIR_GEN", CKM_RSA_PKCS_KEY_PAIR_GEN),
    ("CKM_RSA_PKCS", CKM_RSA_PKCS),
    ("CKM_RSA_PKCS_PSS", CKM_RSA_PKCS_PSS),
    ("CKM_SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS),
    ("CKM_SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS),
    ("CKM_RSA_PKCS_OAEP", CKM_RSA_PKCS_OAEP),
    ("CKM_EC_KEY_PAIR_GEN", CKM_EC_KEY_PAIR_GEN),
    ("CKM_ECDSA", CKM_ECDSA),
    ("CKM_ECDSA_SHA256", CKM_ECDSA_SHA256),
    ("CKM_ECDSA_SHA384", CKM_ECDSA_SHA384),
    ("CKM_EC_EDWARDS_KEY_PAIR_GEN", CKM_EC_EDWARDS_KEY_PAIR_GEN),
    ("CKM_EDDSA", CKM_EDDSA),
    ("CKM_AES_KEY_GEN", CKM_AES_KEY_GEN),
    ("CKM_AES_KEY_WRAP", CKM_AES_KEY_WRAP),
    ("CKM_AES_KEY_WRAP_PAD", CKM_AES_KEY_WRAP_PAD),
    ("CKM_AES_KEY_WRAP_KWP", 0x210B),
    ("CKM_AES_GCM", CKM_AES_GCM),
    ("CKM_AES_CBC_PAD", CKM_AES_CBC_PAD),
    ("CKM_SHA256", CKM_SHA256),
    ("CKM_SHA384", CKM_SHA384),
    ("CKM_SHA512", CKM_SHA512),
    ("CKM_GENERIC_SECRET_KEY_GEN", CKM_GENERIC_SECRET_KEY_GEN),
];

/// A mechanism: a `CKM_*` name (with or without the prefix, any case) or a number (decimal, or
/// hexadecimal with `0x`).
pub fn parse_mechanism(text: &str) -> Option<CK_MECHANISM_TYPE> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return CK_MECHANISM_TYPE::from_str_radix(hex, 16).ok();
    }
    if let Ok(n) = t.parse::<CK_MECHANISM_TYPE>() {
        return Some(n);
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("CKM_") {
        upper
    } else {
        format!("CKM_{upper}")
    };
    NAMES.iter().find(|(n, _)| *n == full).map(|(_, v)| *v)
}

/// Removes the mechanisms `hidden` says are hidden from `list`; returns the ones it removed.
pub fn filter(
    list: &mut Vec<CK_MECHANISM_TYPE>,
    hidden: impl Fn(CK_MECHANISM_TYPE) -> bool,
) -> Vec<CK_MECHANISM_TYPE> {
    let removed: Vec<_> = list.iter().copied().filter(|m| hidden(*m)).collect();
    list.retain(|m| !hidden(*m));
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(
            parse_mechanism("CKM_EC_EDWARDS_KEY_PAIR_GEN"),
            Some(CKM_EC_EDWARDS_KEY_PAIR_GEN)
        );
        assert_eq!(parse_mechanism("eddsa"), Some(CKM_EDDSA));
        assert_eq!(parse_mechanism("0x1057"), Some(0x1057));
        assert_eq!(parse_mechanism("4161"), Some(4161));
        assert_eq!(parse_mechanism("CKM_NOPE"), None);
    }

    #[test]
    fn filtering_removes_only_the_hidden() {
        let mut l = vec![CKM_EC_KEY_PAIR_GEN, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_ECDSA];
        let removed = filter(&mut l, |m| m == CKM_EC_EDWARDS_KEY_PAIR_GEN);
        assert_eq!(l, vec![CKM_EC_KEY_PAIR_GEN, CKM_ECDSA]);
        assert_eq!(removed, vec![CKM_EC_EDWARDS_KEY_PAIR_GEN]);
    }
}
