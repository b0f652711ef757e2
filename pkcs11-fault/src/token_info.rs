//! `kind = "token_info"`: what vendor modules put in a `CK_TOKEN_INFO` that SoftHSM2 never does,
//! applied to the wrapped module's answer to `C_GetTokenInfo` (after the slot's label was
//! learned from the real answer, so `token = ...` keeps matching).
//!
//! Each field reproduces one quirk seen in the wild: a `utcTime` that is not 16 ASCII digits
//! (kryoptic), version and counter fields that make no sense, a label padded with NULs instead
//! of blanks, an empty serial number, PIN state flags (`CKF_USER_PIN_LOCKED`,
//! `CKF_USER_PIN_TO_BE_CHANGED`, ...).

use cryptoki_sys::*;

/// How a `token_info` rule rewrites a `CK_TOKEN_INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenEdit {
    /// New `utcTime` (16 bytes, blank-padded); also sets `CKF_CLOCK_ON_TOKEN`, which is what
    /// makes applications read the field.
    pub utc_time: Option<[u8; 16]>,
    /// Replace the label's trailing blanks with NULs.
    pub label_nul_padded: bool,
    /// New serial number (16 bytes, blank-padded; all blanks for `""`).
    pub serial: Option<[u8; 16]>,
    /// Flags to set.
    pub set_flags: CK_FLAGS,
    /// Version and counter fields that make no sense (see [`TokenEdit::apply`]).
    pub garbage_numbers: bool,
}

/// The `CKF_*` token flags a rule may name (others by number).
const FLAGS: [(&str, CK_FLAGS); 12] = [
    ("CKF_RNG", CKF_RNG),
    ("CKF_WRITE_PROTECTED", CKF_WRITE_PROTECTED),
    ("CKF_LOGIN_REQUIRED", CKF_LOGIN_REQUIRED),
    ("CKF_USER_PIN_INITIALIZED", CKF_USER_PIN_INITIALIZED),
    ("CKF_CLOCK_ON_TOKEN", CKF_CLOCK_ON_TOKEN),
    ("CKF_TOKEN_INITIALIZED", CKF_TOKEN_INITIALIZED),
    ("CKF_USER_PIN_COUNT_LOW", CKF_USER_PIN_COUNT_LOW),
    ("CKF_USER_PIN_FINAL_TRY", CKF_USER_PIN_FINAL_TRY),
    ("CKF_USER_PIN_LOCKED", CKF_USER_PIN_LOCKED),
    ("CKF_USER_PIN_TO_BE_CHANGED", CKF_USER_PIN_TO_BE_CHANGED),
    ("CKF_SO_PIN_LOCKED", CKF_SO_PIN_LOCKED),
    ("CKF_SO_PIN_TO_BE_CHANGED", CKF_SO_PIN_TO_BE_CHANGED),
];

/// A token flag: a `CKF_*` name (with or without the prefix, any case) or a number.
pub fn parse_flag(text: &str) -> Option<CK_FLAGS> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return CK_FLAGS::from_str_radix(hex, 16).ok();
    }
    if let Ok(n) = t.parse::<CK_FLAGS>() {
        return Some(n);
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("CKF_") {
        upper
    } else {
        format!("CKF_{upper}")
    };
    FLAGS.iter().find(|(n, _)| *n == full).map(|(_, v)| *v)
}

/// `text` as a blank-padded 16-byte field; `None` when longer.
pub fn padded16(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() > 16 {
        return None;
    }
    let mut out = [b' '; 16];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

impl TokenEdit {
    /// Rewrites `info` in place.
    ///
    /// `garbage_numbers`: hardware and firmware versions 255.255 (the minor part is meant to be
    /// 0-99), the session counts `CK_UNAVAILABLE_INFORMATION`, more sessions open than allowed,
    /// a minimum PIN length above the maximum, more free memory than there is.
    pub fn apply(&self, info: &mut CK_TOKEN_INFO) {
        if let Some(t) = self.utc_time {
            info.utcTime = t;
            info.flags |= CKF_CLOCK_ON_TOKEN;
        }
        if self.label_nul_padded {
            for b in info.label.iter_mut().rev() {
                if *b != b' ' {
                    break;
                }
                *b = 0;
            }
        }
        if let Some(s) = self.serial {
            info.serialNumber = s;
        }
        info.flags |= self.set_flags;
        if self.garbage_numbers {
            let odd = CK_VERSION {
                major: 0xff,
                minor: 0xff,
            };
            info.hardwareVersion = odd;
            info.firmwareVersion = odd;
            info.ulSessionCount = CK_UNAVAILABLE_INFORMATION;
            info.ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
            info.ulMaxSessionCount = 1;
            info.ulMaxRwSessionCount = 0;
            info.ulMinPinLen = 0xffff;
            info.ulMaxPinLen = 1;
            info.ulTotalPublicMemory = 1;
            info.ulFreePublicMemory = CK_ULONG::MAX - 1;
            info.ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
            info.ulFreePrivateMemory = 7;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn info() -> CK_TOKEN_INFO {
        let mut label = [b' '; 32];
        label[..9].copy_from_slice(b"signerd-0");
        CK_TOKEN_INFO {
            label,
            serialNumber: padded16("abc123").unwrap(),
            utcTime: padded16("2026120805102300").unwrap(),
            flags: CKF_TOKEN_INITIALIZED,
            ..Default::default()
        }
    }

    #[test]
    fn flags_by_name_or_number() {
        assert_eq!(parse_flag("CKF_USER_PIN_LOCKED"), Some(CKF_USER_PIN_LOCKED));
        assert_eq!(
            parse_flag("user_pin_to_be_changed"),
            Some(CKF_USER_PIN_TO_BE_CHANGED)
        );
        assert_eq!(parse_flag("0x40000"), Some(CKF_USER_PIN_LOCKED));
        assert_eq!(parse_flag("4"), Some(4));
        assert_eq!(parse_flag("CKF_NOPE"), None);
    }

    #[test]
    fn edits_apply() {
        let mut i = info();
        TokenEdit {
            utc_time: padded16("kryoptic"),
            label_nul_padded: true,
            serial: padded16(""),
            set_flags: CKF_USER_PIN_LOCKED,
            garbage_numbers: true,
        }
        .apply(&mut i);
        assert_eq!(&i.utcTime, b"kryoptic        ");
        assert_ne!(i.flags & CKF_CLOCK_ON_TOKEN, 0);
        assert_ne!(i.flags & CKF_USER_PIN_LOCKED, 0);
        assert_ne!(i.flags & CKF_TOKEN_INITIALIZED, 0, "kept");
        assert_eq!(&i.label[..9], b"signerd-0");
        assert!(i.label[9..].iter().all(|b| *b == 0));
        assert_eq!(i.serialNumber, [b' '; 16]);
        assert_eq!(i.hardwareVersion.minor, 0xff);
        assert!(i.ulMinPinLen > i.ulMaxPinLen);
    }

    #[test]
    fn an_empty_edit_changes_nothing() {
        let before = info();
        let mut after = info();
        TokenEdit::default().apply(&mut after);
        assert_eq!(before.label, after.label);
        assert_eq!(before.serialNumber, after.serialNumber);
        assert_eq!(before.utcTime, after.utcTime);
        assert_eq!(before.flags, after.flags);
    }
}
