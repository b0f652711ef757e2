//! Names: the PKCS#11 v2.40 functions (in `CK_FUNCTION_LIST` order, which is also the index used
//! for per-function counters) and the `CKR_*` return codes, both ways.

use cryptoki_sys::*;

/// The functions of a v2.40 `CK_FUNCTION_LIST`, in its order.
pub const FUNCTIONS: [&str; 68] = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
];

/// Number of functions in [`FUNCTIONS`].
pub const FUNCTION_COUNT: usize = FUNCTIONS.len();

/// The index of a function name in [`FUNCTIONS`], at compile time. A name that is not there
/// fails the build (const evaluation), so a typo in the forwarders cannot reach run time.
pub const fn fid(name: &str) -> usize {
    let mut i = 0;
    while i < FUNCTION_COUNT {
        if const_eq(FUNCTIONS[i], name) {
            return i;
        }
        i += 1;
    }
    panic!("not a PKCS#11 v2.40 function name")
}

/// The index of a function name in [`FUNCTIONS`], at run time (config parsing).
pub fn function_index(name: &str) -> Option<usize> {
    FUNCTIONS.iter().position(|f| *f == name)
}

/// Parses a return code: a `CKR_*` name (the `CKR_` prefix may be left off, case-insensitive), a
/// decimal number or a `0x` hexadecimal number.
pub fn parse_rv(text: &str) -> Option<CK_RV> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return CK_RV::from_str_radix(hex, 16).ok();
    }
    if let Ok(n) = t.parse::<CK_RV>() {
        return Some(n);
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("CKR_") {
        upper
    } else {
        format!("CKR_{upper}")
    };
    RVS.iter().find(|(n, _)| *n == full).map(|(_, v)| *v)
}

/// The `CKR_*` name of a return code, if it has one.
pub fn rv_name(rv: CK_RV) -> Option<&'static str> {
    RVS.iter().find(|(_, v)| *v == rv).map(|(n, _)| *n)
}

/// A return code as text: its name, or hexadecimal.
pub fn rv_text(rv: CK_RV) -> String {
    match rv_name(rv) {
        Some(n) => n.to_owned(),
        None => format!("0x{rv:x}"),
    }
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const RVS: [(&str, CK_RV); 105] = [
    ("CKR_OK", CKR_OK),
    ("CKR_CANCEL", CKR_CANCEL),
    ("CKR_HOST_MEMORY", CKR_HOST_MEMORY),
    ("CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID),
    ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
    ("CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD),
    ("CKR_NO_EVENT", CKR_NO_EVENT),
    ("CKR_NEED_TO_CREATE_THREADS", CKR_NEED_TO_CREATE_THREADS),
    ("CKR_CANT_LOCK", CKR_CANT_LOCK),
    ("CKR_ATTRIBUTE_READ_ONLY", CKR_ATTRIBUTE_READ_ONLY),
    ("CKR_ATTRIBUTE_SENSITIVE", CKR_ATTRIBUTE_SENSITIVE),
    ("CKR_ATTRIBUTE_TYPE_INVALID", CKR_ATTRIBUTE_TYPE_INVALID),
    ("CKR_ATTRIBUTE_VALUE_INVALID", CKR_ATTRIBUTE_VALUE_INVALID),
    ("CKR_ACTION_PROHIBITED", CKR_ACTION_PROHIBITED),
    ("CKR_DATA_INVALID", CKR_DATA_INVALID),
    ("CKR_DATA_LEN_RANGE", CKR_DATA_LEN_RANGE),
    ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
    ("CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID),
    ("CKR_ENCRYPTED_DATA_LEN_RANGE", CKR_ENCRYPTED_DATA_LEN_RANGE),
    ("CKR_AEAD_DECRYPT_FAILED", CKR_AEAD_DECRYPT_FAILED),
    ("CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED),
    ("CKR_FUNCTION_NOT_PARALLEL", CKR_FUNCTION_NOT_PARALLEL),
    ("CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED),
    ("CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID),
    ("CKR_KEY_SIZE_RANGE", CKR_KEY_SIZE_RANGE),
    ("CKR_KEY_TYPE_INCONSISTENT", CKR_KEY_TYPE_INCONSISTENT),
    ("CKR_KEY_NOT_NEEDED", CKR_KEY_NOT_NEEDED),
    ("CKR_KEY_CHANGED", CKR_KEY_CHANGED),
    ("CKR_KEY_NEEDED", CKR_KEY_NEEDED),
    ("CKR_KEY_INDIGESTIBLE", CKR_KEY_INDIGESTIBLE),
    (
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_KEY_FUNCTION_NOT_PERMITTED,
    ),
    ("CKR_KEY_NOT_WRAPPABLE", CKR_KEY_NOT_WRAPPABLE),
    ("CKR_KEY_UNEXTRACTABLE", CKR_KEY_UNEXTRACTABLE),
    ("CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID),
    ("CKR_MECHANISM_PARAM_INVALID", CKR_MECHANISM_PARAM_INVALID),
    ("CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID),
    ("CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        CKR_OPERATION_NOT_INITIALIZED,
    ),
    ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
    ("CKR_PIN_INVALID", CKR_PIN_INVALID),
    ("CKR_PIN_LEN_RANGE", CKR_PIN_LEN_RANGE),
    ("CKR_PIN_EXPIRED", CKR_PIN_EXPIRED),
    ("CKR_PIN_LOCKED", CKR_PIN_LOCKED),
    ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
    ("CKR_SESSION_COUNT", CKR_SESSION_COUNT),
    ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
    (
        "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    ),
    ("CKR_SESSION_READ_ONLY", CKR_SESSION_READ_ONLY),
    ("CKR_SESSION_EXISTS", CKR_SESSION_EXISTS),
    ("CKR_SESSION_READ_ONLY_EXISTS", CKR_SESSION_READ_ONLY_EXISTS),
    (
        "CKR_SESSION_READ_WRITE_SO_EXISTS",
        CKR_SESSION_READ_WRITE_SO_EXISTS,
    ),
    ("CKR_SIGNATURE_INVALID", CKR_SIGNATURE_INVALID),
    ("CKR_SIGNATURE_LEN_RANGE", CKR_SIGNATURE_LEN_RANGE),
    ("CKR_TEMPLATE_INCOMPLETE", CKR_TEMPLATE_INCOMPLETE),
    ("CKR_TEMPLATE_INCONSISTENT", CKR_TEMPLATE_INCONSISTENT),
    ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
    ("CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED),
    ("CKR_TOKEN_WRITE_PROTECTED", CKR_TOKEN_WRITE_PROTECTED),
    (
        "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    ),
    (
        "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        CKR_UNWRAPPING_KEY_SIZE_RANGE,
    ),
    (
        "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    ("CKR_USER_ALREADY_LOGGED_IN", CKR_USER_ALREADY_LOGGED_IN),
    ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
    ("CKR_USER_PIN_NOT_INITIALIZED", CKR_USER_PIN_NOT_INITIALIZED),
    ("CKR_USER_TYPE_INVALID", CKR_USER_TYPE_INVALID),
    (
        "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    ),
    ("CKR_USER_TOO_MANY_TYPES", CKR_USER_TOO_MANY_TYPES),
    ("CKR_WRAPPED_KEY_INVALID", CKR_WRAPPED_KEY_INVALID),
    ("CKR_WRAPPED_KEY_LEN_RANGE", CKR_WRAPPED_KEY_LEN_RANGE),
    (
        "CKR_WRAPPING_KEY_HANDLE_INVALID",
        CKR_WRAPPING_KEY_HANDLE_INVALID,
    ),
    ("CKR_WRAPPING_KEY_SIZE_RANGE", CKR_WRAPPING_KEY_SIZE_RANGE),
    (
        "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    (
        "CKR_RANDOM_SEED_NOT_SUPPORTED",
        CKR_RANDOM_SEED_NOT_SUPPORTED,
    ),
    ("CKR_RANDOM_NO_RNG", CKR_RANDOM_NO_RNG),
    ("CKR_DOMAIN_PARAMS_INVALID", CKR_DOMAIN_PARAMS_INVALID),
    ("CKR_CURVE_NOT_SUPPORTED", CKR_CURVE_NOT_SUPPORTED),
    ("CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL),
    ("CKR_SAVED_STATE_INVALID", CKR_SAVED_STATE_INVALID),
    ("CKR_INFORMATION_SENSITIVE", CKR_INFORMATION_SENSITIVE),
    ("CKR_STATE_UNSAVEABLE", CKR_STATE_UNSAVEABLE),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    (
        "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
    ),
    ("CKR_MUTEX_BAD", CKR_MUTEX_BAD),
    ("CKR_MUTEX_NOT_LOCKED", CKR_MUTEX_NOT_LOCKED),
    ("CKR_NEW_PIN_MODE", CKR_NEW_PIN_MODE),
    ("CKR_NEXT_OTP", CKR_NEXT_OTP),
    ("CKR_EXCEEDED_MAX_ITERATIONS", CKR_EXCEEDED_MAX_ITERATIONS),
    ("CKR_FIPS_SELF_TEST_FAILED", CKR_FIPS_SELF_TEST_FAILED),
    ("CKR_LIBRARY_LOAD_FAILED", CKR_LIBRARY_LOAD_FAILED),
    ("CKR_PIN_TOO_WEAK", CKR_PIN_TOO_WEAK),
    ("CKR_PUBLIC_KEY_INVALID", CKR_PUBLIC_KEY_INVALID),
    ("CKR_FUNCTION_REJECTED", CKR_FUNCTION_REJECTED),
    ("CKR_TOKEN_RESOURCE_EXCEEDED", CKR_TOKEN_RESOURCE_EXCEEDED),
    ("CKR_OPERATION_CANCEL_FAILED", CKR_OPERATION_CANCEL_FAILED),
    ("CKR_KEY_EXHAUSTED", CKR_KEY_EXHAUSTED),
    ("CKR_PENDING", CKR_PENDING),
    (
        "CKR_SESSION_ASYNC_NOT_SUPPORTED",
        CKR_SESSION_ASYNC_NOT_SUPPORTED,
    ),
    ("CKR_SEED_RANDOM_REQUIRED", CKR_SEED_RANDOM_REQUIRED),
    ("CKR_OPERATION_NOT_VALIDATED", CKR_OPERATION_NOT_VALIDATED),
    ("CKR_TOKEN_NOT_INITIALIZED", CKR_TOKEN_NOT_INITIALIZED),
    (
        "CKR_PARAMETER_SET_NOT_SUPPORTED",
        CKR_PARAMETER_SET_NOT_SUPPORTED,
    ),
    ("CKR_VENDOR_DEFINED", CKR_VENDOR_DEFINED),
];

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn function_ids() {
        assert_eq!(FUNCTION_COUNT, 68);
        assert_eq!(fid("C_Initialize"), 0);
        assert_eq!(fid("C_WaitForSlotEvent"), 67);
        assert_eq!(function_index("C_Sign"), Some(fid("C_Sign")));
        assert_eq!(function_index("C_Nope"), None);
    }

    #[test]
    fn rv_names_and_numbers() {
        assert_eq!(parse_rv("CKR_DEVICE_ERROR"), Some(CKR_DEVICE_ERROR));
        assert_eq!(parse_rv("device_removed"), Some(CKR_DEVICE_REMOVED));
        assert_eq!(parse_rv("0x30"), Some(0x30));
        assert_eq!(parse_rv("48"), Some(48));
        assert_eq!(parse_rv("CKR_NOPE"), None);
        assert_eq!(rv_text(CKR_FUNCTION_FAILED), "CKR_FUNCTION_FAILED");
        assert_eq!(rv_text(0x8000_1234), "0x80001234");
    }
}
