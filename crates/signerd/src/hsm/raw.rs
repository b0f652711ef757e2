//! The PKCS#11 calls that cryptoki 0.12 cannot make:
//!
//! - `C_CreateObject` and `C_GetAttributeValue` with attributes whose value is itself a template
//!   (`CKA_WRAP_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`, PKCS#11 v2.40 §4.9, §10.1: an array of
//!   `CK_ATTRIBUTE`). cryptoki's `Attribute` has no variant for them, so the key-encryption key
//!   ceremony ([`crate::dev`]) and the tests that check it call the module's own function list
//!   here.
//! - `C_GetTokenInfo` read without parsing every field ([`RawCalls::token_info`]): cryptoki's
//!   `get_token_info` fails as a whole when one field does not parse (a `utcTime` that is not
//!   digits, as kryoptic's), so token discovery reads only the fields it needs here.
//! - `C_GetMechanismList` with every number kept ([`RawCalls::mechanism_list`]): cryptoki's
//!   `get_mechanism_list` drops, and logs an error for, each mechanism it has no name for.
//!
//! `unsafe` is allowed in this module only (the workspace denies it elsewhere): it is the FFI
//! to the same module cryptoki already loaded, for these four functions and nothing else. The
//! function list comes from that module's `C_GetFunctionList` (the dynamic loader hands back the
//! loaded copy for the same path); sessions and object handles are cryptoki's, so the calls run
//! in the context cryptoki initialized. Every buffer handed to the module lives on this side for
//! the whole call.
#![allow(unsafe_code)]

use std::ptr;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki_sys::{
    CKA_UNWRAP_TEMPLATE, CKA_WRAP_TEMPLATE, CKF_TOKEN_INITIALIZED, CKF_USER_PIN_LOCKED,
    CKF_USER_PIN_TO_BE_CHANGED, CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_FLAGS, CK_FUNCTION_LIST,
    CK_OBJECT_HANDLE, CK_RV, CK_TOKEN_INFO, CK_ULONG, CK_UNAVAILABLE_INFORMATION,
};

use super::error::{HsmError, HsmResult};
use super::Module;

/// An attribute whose value is a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateAttribute {
    /// `CKA_WRAP_TEMPLATE`: a key wrapped under this key must carry these attributes, with these
    /// values (else `CKR_KEY_NOT_WRAPPABLE`).
    Wrap,
    /// `CKA_UNWRAP_TEMPLATE`: a key unwrapped under this key gets these attributes; a template
    /// that contradicts them is refused (`CKR_TEMPLATE_INCONSISTENT`).
    Unwrap,
}

impl TemplateAttribute {
    fn ck(self) -> CK_ATTRIBUTE_TYPE {
        match self {
            TemplateAttribute::Wrap => CKA_WRAP_TEMPLATE,
            TemplateAttribute::Unwrap => CKA_UNWRAP_TEMPLATE,
        }
    }
}

/// What token discovery needs of a `CK_TOKEN_INFO`: the identifying texts, trimmed of their
/// padding ([`trim_padding`]), and the flags. The time, versions and counters are not read, so a
/// module that fills them oddly is still usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// `label`.
    pub label: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber` (empty on some modules, e.g. kryoptic).
    pub serial: String,
    /// `flags` (`CKF_*`).
    pub flags: CK_FLAGS,
}

impl TokenInfo {
    /// The fields of `info` that discovery uses.
    pub fn from_ck(info: &CK_TOKEN_INFO) -> TokenInfo {
        TokenInfo {
            label: padded_text(&info.label),
            manufacturer: padded_text(&info.manufacturerID),
            model: padded_text(&info.model),
            serial: padded_text(&info.serialNumber),
            flags: info.flags,
        }
    }

    /// `CKF_TOKEN_INITIALIZED`.
    pub fn initialized(&self) -> bool {
        self.flags & CKF_TOKEN_INITIALIZED != 0
    }

    /// `CKF_USER_PIN_LOCKED`: a login with the user PIN can only fail.
    pub fn user_pin_locked(&self) -> bool {
        self.flags & CKF_USER_PIN_LOCKED != 0
    }

    /// `CKF_USER_PIN_TO_BE_CHANGED`: the user PIN must be changed before the token serves.
    pub fn user_pin_to_be_changed(&self) -> bool {
        self.flags & CKF_USER_PIN_TO_BE_CHANGED != 0
    }
}

/// A PKCS#11 fixed-length text field as text: the standard pads with blanks, some modules with
/// NULs (or a mix); both are removed from the end. Bytes that are not UTF-8 are replaced.
pub fn padded_text(field: &[u8]) -> String {
    trim_padding(&String::from_utf8_lossy(field)).to_owned()
}

/// `s` without trailing blanks and NULs (the padding of PKCS#11 text fields).
pub fn trim_padding(s: &str) -> &str {
    s.trim_end_matches([' ', '\0'])
}

/// The function list of a loaded module, for the calls cryptoki cannot make.
pub struct RawCalls {
    /// Keeps the module loaded while `list` is used (another reference to cryptoki's copy).
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

impl std::fmt::Debug for RawCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCalls").finish_non_exhaustive()
    }
}

type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

fn check(rv: CK_RV, function: Function) -> HsmResult<()> {
    Rv::from(rv).into_result(function).map_err(HsmError::from)
}

impl RawCalls {
    /// The function list of `module` (already loaded and initialized by cryptoki).
    pub fn open(module: &Module) -> HsmResult<RawCalls> {
        let path = module.path();
        let unexpected = |what: String| HsmError::Unexpected(format!("{}: {what}", path.display()));
        // SAFETY: the path cryptoki loaded the module from: the loader returns that loaded copy
        // (its initializers ran already) and takes one more reference to it.
        let lib =
            unsafe { libloading::Library::new(path) }.map_err(|e| unexpected(e.to_string()))?;
        // SAFETY: `C_GetFunctionList` has this signature in every PKCS#11 module.
        let get: libloading::Symbol<'_, GetFunctionList> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| unexpected(e.to_string()))?;
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer for the call.
        check(unsafe { get(&mut list) }, Function::GetFunctionList)?;
        if list.is_null() {
            return Err(unexpected("C_GetFunctionList returned no list".into()));
        }
        // SAFETY: non-null, and valid while the library is loaded (`_lib` keeps it so); copied.
        let list = unsafe { *list };
        Ok(RawCalls { _lib: lib, list })
    }

    /// `C_GetTokenInfo` for `slot`, keeping only [`TokenInfo`]'s fields: nothing else of the
    /// answer is parsed, so a field cryptoki would reject (a `utcTime` that is not digits, odd
    /// versions or counters) does not hide the token.
    pub fn token_info(&self, slot: Slot) -> HsmResult<TokenInfo> {
        let f = self.list.C_GetTokenInfo.ok_or_else(|| {
            HsmError::from(CkError::Pkcs11(
                cryptoki::error::RvError::FunctionNotSupported,
                Function::GetTokenInfo,
            ))
        })?;
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: a function of the module's list; `info` is a valid, writable `CK_TOKEN_INFO`
        // that lives until the call returns; the slot id is one the module listed.
        let rv = unsafe { f(slot.id() as cryptoki_sys::CK_SLOT_ID, &mut info) };
        check(rv, Function::GetTokenInfo)?;
        Ok(TokenInfo::from_ck(&info))
    }

    /// `C_GetMechanismList` as the module answers it, every number kept. cryptoki's
    /// `get_mechanism_list` drops the mechanisms it has no name for and logs an error for each
    /// (SoftHSM2 lists about 30 such), which would be noise at every start and a wrong count.
    pub fn mechanism_list(&self, slot: Slot) -> HsmResult<Vec<cryptoki_sys::CK_MECHANISM_TYPE>> {
        let f = self.list.C_GetMechanismList.ok_or_else(|| {
            HsmError::from(CkError::Pkcs11(
                cryptoki::error::RvError::FunctionNotSupported,
                Function::GetMechanismList,
            ))
        })?;
        let id = slot.id() as cryptoki_sys::CK_SLOT_ID;
        let mut n: cryptoki_sys::CK_ULONG = 0;
        // SAFETY: a function of the module's list; a size query (NULL list) into our counter.
        let rv = unsafe { f(id, std::ptr::null_mut(), &mut n) };
        check(rv, Function::GetMechanismList)?;
        let mut list: Vec<cryptoki_sys::CK_MECHANISM_TYPE> = vec![0; n as usize];
        // SAFETY: `list` holds `n` writable entries and `n` says so; both live across the call.
        let rv = unsafe { f(id, list.as_mut_ptr(), &mut n) };
        check(rv, Function::GetMechanismList)?;
        list.truncate(n as usize);
        Ok(list)
    }

    /// `C_CreateObject` with `attributes` plus the template-valued `templates`.
    pub fn create_object(
        &self,
        session: &Session,
        attributes: &[Attribute],
        templates: &[(TemplateAttribute, &[Attribute])],
    ) -> HsmResult<ObjectHandle> {
        let f = self.list.C_CreateObject.ok_or_else(|| {
            HsmError::from(CkError::Pkcs11(
                cryptoki::error::RvError::FunctionNotSupported,
                Function::CreateObject,
            ))
        })?;
        // The nested arrays point into the `Attribute`s, which outlive the call; the outer
        // template points into `nested`, which does too.
        let nested: Vec<Vec<CK_ATTRIBUTE>> = templates
            .iter()
            .map(|(_, t)| t.iter().map(CK_ATTRIBUTE::from).collect())
            .collect();
        let mut template: Vec<CK_ATTRIBUTE> = attributes.iter().map(CK_ATTRIBUTE::from).collect();
        for ((which, _), inner) in templates.iter().zip(&nested) {
            template.push(CK_ATTRIBUTE {
                type_: which.ck(),
                pValue: inner.as_ptr().cast_mut().cast(),
                ulValueLen: array_len(inner.len()),
            });
        }
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: a function of the module's list; `template` holds `template.len()` attributes
        // whose values (and nested arrays) live until the call returns; `handle` is a valid
        // out-pointer. The module only reads the template.
        let rv = unsafe {
            f(
                session.handle(),
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
                &mut handle,
            )
        };
        check(rv, Function::CreateObject)?;
        // SAFETY: the handle the module just returned for the new object, in this session's
        // token (what cryptoki's own `create_object` wraps the same way).
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }

    /// The template-valued attribute `which` of `object`, read with `C_GetAttributeValue` (the
    /// array's size, then each attribute's type and size, then the values). Empty when the
    /// object has none.
    pub fn template(
        &self,
        session: &Session,
        object: ObjectHandle,
        which: TemplateAttribute,
    ) -> HsmResult<Vec<Attribute>> {
        let f = self.list.C_GetAttributeValue.ok_or_else(|| {
            HsmError::from(CkError::Pkcs11(
                cryptoki::error::RvError::FunctionNotSupported,
                Function::GetAttributeValue,
            ))
        })?;
        let call = |outer: &mut CK_ATTRIBUTE| -> HsmResult<()> {
            // SAFETY: a function of the module's list; `outer` is one attribute whose value
            // (null, or an array of as many attributes as its length says, each with a null or
            // a caller-owned buffer of its length) lives until the call returns.
            let rv = unsafe { f(session.handle(), object.handle(), outer, 1) };
            check(rv, Function::GetAttributeValue)
        };
        let mut outer = CK_ATTRIBUTE {
            type_: which.ck(),
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        call(&mut outer)?;
        if outer.ulValueLen == CK_UNAVAILABLE_INFORMATION || outer.ulValueLen == 0 {
            return Ok(Vec::new());
        }
        let n = outer.ulValueLen as usize / std::mem::size_of::<CK_ATTRIBUTE>();
        let empty = CK_ATTRIBUTE {
            type_: 0,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let mut inner = vec![empty; n];
        outer.pValue = inner.as_mut_ptr().cast();
        call(&mut outer)?; // types and sizes
        let mut values: Vec<Vec<u8>> = inner
            .iter()
            .map(|a| vec![0u8; a.ulValueLen as usize])
            .collect();
        for (a, v) in inner.iter_mut().zip(values.iter_mut()) {
            a.pValue = v.as_mut_ptr().cast();
        }
        outer.pValue = inner.as_mut_ptr().cast();
        call(&mut outer)?; // values
        inner
            .into_iter()
            .map(|a| Attribute::try_from(a).map_err(HsmError::from))
            .collect()
    }
}

fn array_len(n: usize) -> CK_ULONG {
    (n * std::mem::size_of::<CK_ATTRIBUTE>()) as CK_ULONG
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn field<const N: usize>(text: &[u8], pad: u8) -> [u8; N] {
        let mut f = [pad; N];
        f[..text.len()].copy_from_slice(text);
        f
    }

    #[test]
    fn padding_is_blanks_or_nuls() {
        assert_eq!(padded_text(&field::<32>(b"signerd-0", b' ')), "signerd-0");
        assert_eq!(padded_text(&field::<32>(b"signerd-0", 0)), "signerd-0");
        let mut mixed = field::<32>(b"signerd-0", b' ');
        mixed[20..].fill(0);
        assert_eq!(padded_text(&mixed), "signerd-0");
        assert_eq!(padded_text(&[b' '; 16]), "");
        assert_eq!(padded_text(&[0; 16]), "");
        // Inner blanks stay; only the end is padding.
        assert_eq!(
            padded_text(&field::<32>(b"my token  x", b' ')),
            "my token  x"
        );
        assert_eq!(trim_padding("a \0 \0"), "a");
        assert_eq!(trim_padding(" a"), " a");
    }

    #[test]
    fn token_info_ignores_time_versions_and_counters() {
        let mut ck = CK_TOKEN_INFO {
            label: field(b"kryoptic token", 0),
            manufacturerID: field(b"Kryoptic", b' '),
            model: field(b"v1", b' '),
            serialNumber: [b' '; 16],
            flags: CKF_TOKEN_INITIALIZED | CKF_USER_PIN_LOCKED,
            ..Default::default()
        };
        ck.utcTime = *b"not a time at al";
        ck.hardwareVersion.minor = 0xff;
        ck.ulMinPinLen = 99;
        ck.ulMaxPinLen = 1;
        let t = TokenInfo::from_ck(&ck);
        assert_eq!(t.label, "kryoptic token");
        assert_eq!(t.manufacturer, "Kryoptic");
        assert_eq!(t.model, "v1");
        assert_eq!(t.serial, "");
        assert!(t.initialized() && t.user_pin_locked() && !t.user_pin_to_be_changed());
    }
}
