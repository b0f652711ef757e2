//! RFC 7512 `pkcs11:` URIs: parsing, canonical printing and token matching.
//!
//! The signer selects a PKCS#11 token by what the URI says about it (label, manufacturer,
//! model, serial), never by slot id, and later selects objects on that token with the
//! object attributes. Parsing is strict about structure (separators, attribute names,
//! duplicates, percent-encoding, value syntax) and lenient about which literal characters
//! appear in a value: any character other than the separators is taken as itself.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use super::raw::trim_padding;

/// Longest URI, in bytes, that [`Pkcs11Uri::from_str`] accepts.
pub const MAX_URI_LEN: usize = 4096;

/// A parsed RFC 7512 PKCS#11 URI.
///
/// `Display` prints the canonical form, which parses back to an equal value. That form
/// includes `pin-value` verbatim, so never log it: log the `Debug` form, which redacts it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token label.
    pub token: Option<String>,
    /// `manufacturer`: the token manufacturer.
    pub manufacturer: Option<String>,
    /// `serial`: the token serial number.
    pub serial: Option<String>,
    /// `model`: the token model.
    pub model: Option<String>,
    /// `library-manufacturer`: the PKCS#11 library manufacturer.
    pub library_manufacturer: Option<String>,
    /// `library-description`: the PKCS#11 library description.
    pub library_description: Option<String>,
    /// `library-version`: `(major, minor)`; `M` alone means minor 0.
    pub library_version: Option<(u8, u8)>,
    /// `slot-description`: the slot description.
    pub slot_description: Option<String>,
    /// `slot-manufacturer`: the slot manufacturer.
    pub slot_manufacturer: Option<String>,
    /// `slot-id`: the slot id (parsed for completeness; the signer never selects by it).
    pub slot_id: Option<u64>,
    /// `object`: the object label.
    pub object: Option<String>,
    /// `type`: the object class.
    pub object_type: Option<ObjectType>,
    /// `id`: the object id as raw bytes (percent-decoded).
    pub id: Option<Vec<u8>>,
    /// `pin-source` (query): where to read the PIN from.
    pub pin_source: Option<String>,
    /// `pin-value` (query): the PIN itself.
    pub pin_value: Option<String>,
    /// `module-name` (query): the PKCS#11 module name.
    pub module_name: Option<String>,
    /// `module-path` (query): the PKCS#11 module path.
    pub module_path: Option<String>,
    /// Vendor attributes (`x-` + letters, digits, `-`, `_`; path or query), in order of
    /// appearance, values decoded. The canonical form prints them last in the path.
    pub vendor: Vec<(String, String)>,
}

/// Object class named by the `type` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// `cert`: a certificate.
    Cert,
    /// `data`: a data object.
    Data,
    /// `private`: a private key.
    Private,
    /// `public`: a public key.
    Public,
    /// `secret-key`: a secret (symmetric) key.
    SecretKey,
}

impl ObjectType {
    /// The attribute value naming this class in a URI (`cert`, `secret-key`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cert => "cert",
            Self::Data => "data",
            Self::Private => "private",
            Self::Public => "public",
            Self::SecretKey => "secret-key",
        }
    }
}

/// Why a string is not an acceptable `pkcs11:` URI. Messages name attributes, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// The input is longer than [`MAX_URI_LEN`] bytes.
    #[error("PKCS#11 URI is {0} bytes long; at most {max} are accepted", max = MAX_URI_LEN)]
    TooLong(usize),
    /// The input fits, but its canonical form (with the percent-encoding it needs) is longer
    /// than [`MAX_URI_LEN`] bytes, so it would not parse back.
    #[error(
        "PKCS#11 URI's canonical form is {0} bytes long; at most {max} are accepted",
        max = MAX_URI_LEN
    )]
    CanonicalTooLong(usize),
    /// The input does not start with `pkcs11:` (any case).
    #[error("not a PKCS#11 URI: it must start with `pkcs11:`")]
    MissingScheme,
    /// An empty attribute: a doubled, leading or trailing separator, or a lone `?`.
    #[error("empty attribute in the {0} component (doubled, leading or trailing separator)")]
    EmptySegment(&'static str),
    /// An attribute without `=`.
    #[error("attribute `{0}` has no `=` and value")]
    MissingEquals(String),
    /// A name that is neither an RFC 7512 attribute nor an `x-` vendor attribute.
    #[error("unknown attribute `{0}` (names are lower-case; vendor attributes start with `x-`)")]
    UnknownAttribute(String),
    /// A vendor attribute name that is not `x-` followed by letters, digits, `-` or `_`.
    #[error("vendor attribute name `{0}` must be `x-` followed by letters, digits, `-` or `_`")]
    InvalidVendorName(String),
    /// A path attribute found in the query component, or a query attribute in the path.
    #[error("attribute `{attribute}` belongs in the {expected} component")]
    MisplacedAttribute {
        /// The attribute name.
        attribute: String,
        /// The component it belongs in: `path` or `query`.
        expected: &'static str,
    },
    /// The same attribute appears more than once.
    #[error("attribute `{0}` appears more than once")]
    DuplicateAttribute(String),
    /// A `%` not followed by two hex digits.
    #[error("attribute `{attribute}`: stray `%` at byte {offset} of the value (expected `%XX`)")]
    BadPercentEncoding {
        /// The attribute name.
        attribute: String,
        /// Byte offset of the stray `%` within the raw (undecoded) value.
        offset: usize,
    },
    /// A text attribute that is not valid UTF-8 once percent-decoded.
    #[error("attribute `{0}` is not valid UTF-8 after percent-decoding")]
    InvalidUtf8(String),
    /// A value that does not follow its attribute's syntax.
    #[error("attribute `{attribute}` has an invalid value: {reason}")]
    InvalidValue {
        /// The attribute name.
        attribute: String,
        /// What was expected.
        reason: &'static str,
    },
}

impl FromStr for Pkcs11Uri {
    type Err = UriError;

    /// Parses a `pkcs11:` URI following RFC 7512 §2.3 (see the module docs for leniency).
    fn from_str(s: &str) -> Result<Self, UriError> {
        if s.len() > MAX_URI_LEN {
            return Err(UriError::TooLong(s.len()));
        }
        let rest = match (s.get(..SCHEME.len()), s.get(SCHEME.len()..)) {
            (Some(scheme), Some(rest)) if scheme.eq_ignore_ascii_case(SCHEME) => rest,
            _ => return Err(UriError::MissingScheme),
        };
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let mut uri = Self::default();
        if !path.is_empty() {
            for segment in path.split(';') {
                uri.apply(segment, PATH)?;
            }
        }
        if let Some(query) = query {
            for segment in query.split('&') {
                uri.apply(segment, QUERY)?;
            }
        }
        // The canonical form percent-encodes what the input may have written literally (up to
        // three bytes for one): it must stay within the limit, or `Display` would print a URI
        // that does not parse back (found by fuzz/fuzz_targets/pkcs11_uri.rs).
        let canonical = uri.to_string().len();
        if canonical > MAX_URI_LEN {
            return Err(UriError::CanonicalTooLong(canonical));
        }
        Ok(uri)
    }
}

impl fmt::Display for Pkcs11Uri {
    /// Canonical form: `pkcs11:`, path attributes joined by `;` in a fixed order (vendor
    /// attributes last), then `?` and the query attributes joined by `&` if there are any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self
            .library_version
            .map(|(major, minor)| format!("{major}.{minor}"));
        let slot_id = self.slot_id.map(|id| id.to_string());
        let object_type = self.object_type.map(|t| t.as_str().to_owned());
        let path = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("serial", &self.serial),
            ("model", &self.model),
            ("library-manufacturer", &self.library_manufacturer),
            ("library-description", &self.library_description),
            ("library-version", &version),
            ("slot-description", &self.slot_description),
            ("slot-manufacturer", &self.slot_manufacturer),
            ("slot-id", &slot_id),
            ("object", &self.object),
            ("type", &object_type),
        ];
        f.write_str(SCHEME)?;
        let mut out = AttrWriter {
            f,
            sep: "",
            next: ";",
        };
        for (name, value) in path {
            out.put(name, value.as_deref().map(str::as_bytes), keep_in_path)?;
        }
        out.put("id", self.id.as_deref(), |_| false)?;
        for (name, value) in &self.vendor {
            out.put(name, Some(value.as_bytes()), keep_in_path)?;
        }
        let query = [
            ("pin-source", &self.pin_source),
            ("pin-value", &self.pin_value),
            ("module-name", &self.module_name),
            ("module-path", &self.module_path),
        ];
        (out.sep, out.next) = ("?", "&");
        for (name, value) in query {
            out.put(name, value.as_deref().map(str::as_bytes), keep_in_query)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pkcs11Uri {
    /// The canonical form, with any `pin-value` replaced by `REDACTED`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.clone();
        shown.pin_value = self.pin_value.as_ref().map(|_| "REDACTED".to_owned());
        write!(f, "Pkcs11Uri({shown})")
    }
}

impl Pkcs11Uri {
    /// True when every token-identifying attribute present (token, manufacturer, serial,
    /// model) equals the given token info field. Fields from PKCS#11 token info are
    /// space-padded (some modules pad with NULs): compare after trimming trailing blanks and
    /// NULs on both sides. A URI with none of these attributes matches every token.
    pub fn matches_token(
        &self,
        label: &str,
        manufacturer: &str,
        model: &str,
        serial: &str,
    ) -> bool {
        [
            (&self.token, label),
            (&self.manufacturer, manufacturer),
            (&self.model, model),
            (&self.serial, serial),
        ]
        .into_iter()
        .all(|(want, have)| {
            want.as_deref()
                .is_none_or(|w| trim_padding(w) == trim_padding(have))
        })
    }

    /// True when the URI names at least one of token/serial (so it can select a token).
    pub fn selects_token(&self) -> bool {
        self.token.is_some() || self.serial.is_some()
    }

    /// Applies one `name=value` segment found in `component` ([`PATH`] or [`QUERY`]).
    fn apply(&mut self, segment: &str, component: &'static str) -> Result<(), UriError> {
        if segment.is_empty() {
            return Err(UriError::EmptySegment(component));
        }
        let (name, raw) = segment
            .split_once('=')
            .ok_or_else(|| UriError::MissingEquals(segment.to_owned()))?;
        if let Some(suffix) = name.strip_prefix("x-") {
            let valid = !suffix.is_empty()
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(UriError::InvalidVendorName(name.to_owned()));
            }
            if self.vendor.iter().any(|(n, _)| n == name) {
                return Err(UriError::DuplicateAttribute(name.to_owned()));
            }
            self.vendor.push((name.to_owned(), decode_text(name, raw)?));
            return Ok(());
        }
        let expected = if QUERY_ATTRS.contains(&name) {
            QUERY
        } else if PATH_ATTRS.contains(&name) {
            PATH
        } else {
            return Err(UriError::UnknownAttribute(name.to_owned()));
        };
        if expected != component {
            return Err(UriError::MisplacedAttribute {
                attribute: name.to_owned(),
                expected,
            });
        }
        let text = || decode_text(name, raw);
        match name {
            "token" => set(&mut self.token, name, text),
            "manufacturer" => set(&mut self.manufacturer, name, text),
            "serial" => set(&mut self.serial, name, text),
            "model" => set(&mut self.model, name, text),
            "library-manufacturer" => set(&mut self.library_manufacturer, name, text),
            "library-description" => set(&mut self.library_description, name, text),
            "library-version" => set(&mut self.library_version, name, || parse_version(raw)),
            "slot-description" => set(&mut self.slot_description, name, text),
            "slot-manufacturer" => set(&mut self.slot_manufacturer, name, text),
            "slot-id" => set(&mut self.slot_id, name, || parse_slot_id(raw)),
            "object" => set(&mut self.object, name, text),
            "type" => set(&mut self.object_type, name, || parse_type(raw)),
            "id" => set(&mut self.id, name, || percent_decode(name, raw)),
            "pin-source" => set(&mut self.pin_source, name, text),
            "pin-value" => set(&mut self.pin_value, name, text),
            "module-name" => set(&mut self.module_name, name, text),
            "module-path" => set(&mut self.module_path, name, text),
            _ => Err(UriError::UnknownAttribute(name.to_owned())),
        }
    }
}

const SCHEME: &str = "pkcs11:";
const PATH: &str = "path";
const QUERY: &str = "query";
const PATH_ATTRS: [&str; 13] = [
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
    "object",
    "type",
    "id",
];
const QUERY_ATTRS: [&str; 4] = ["pin-source", "pin-value", "module-name", "module-path"];

/// Stores a value in an empty slot; a filled slot means the attribute was repeated.
fn set<T>(
    slot: &mut Option<T>,
    name: &str,
    value: impl FnOnce() -> Result<T, UriError>,
) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError::DuplicateAttribute(name.to_owned()));
    }
    *slot = Some(value()?);
    Ok(())
}

fn hex_digit(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn percent_decode(attribute: &str, raw: &str) -> Result<Vec<u8>, UriError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_digit);
        let lo = bytes.get(i + 2).copied().and_then(hex_digit);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => {
                let attribute = attribute.to_owned();
                return Err(UriError::BadPercentEncoding {
                    attribute,
                    offset: i,
                });
            }
        }
        i += 3;
    }
    Ok(out)
}

fn decode_text(attribute: &str, raw: &str) -> Result<String, UriError> {
    String::from_utf8(percent_decode(attribute, raw)?)
        .map_err(|_| UriError::InvalidUtf8(attribute.to_owned()))
}

const VERSION_REASON: &str = "expected `M` or `M.N`, decimal numbers from 0 to 255";
const SLOT_ID_REASON: &str = "expected a decimal number from 0 to 2^64-1";
const TYPE_REASON: &str = "expected cert, data, private, public or secret-key";

fn invalid(attribute: &str, reason: &'static str) -> UriError {
    UriError::InvalidValue {
        attribute: attribute.to_owned(),
        reason,
    }
}

/// Parses a non-empty run of ASCII digits (no sign) into `T`.
fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_version(raw: &str) -> Result<(u8, u8), UriError> {
    let text = decode_text("library-version", raw)?;
    let (major, minor) = text.split_once('.').unwrap_or((&text, "0"));
    match (parse_digits(major), parse_digits(minor)) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(invalid("library-version", VERSION_REASON)),
    }
}

fn parse_slot_id(raw: &str) -> Result<u64, UriError> {
    let text = decode_text("slot-id", raw)?;
    parse_digits(&text).ok_or_else(|| invalid("slot-id", SLOT_ID_REASON))
}

fn parse_type(raw: &str) -> Result<ObjectType, UriError> {
    match decode_text("type", raw)?.as_str() {
        "cert" => Ok(ObjectType::Cert),
        "data" => Ok(ObjectType::Data),
        "private" => Ok(ObjectType::Private),
        "public" => Ok(ObjectType::Public),
        "secret-key" => Ok(ObjectType::SecretKey),
        _ => Err(invalid("type", TYPE_REASON)),
    }
}

/// Characters left literal in path values: RFC 3986 unreserved plus a few RFC 7512 allows.
fn keep_in_path(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:@,".contains(&b)
}

/// Characters left literal in query values: as in the path, plus `/` (for file paths).
fn keep_in_query(b: u8) -> bool {
    keep_in_path(b) || b == b'/'
}

/// Writes `name=value` attributes, each after a separator (`sep` first, then `next`).
struct AttrWriter<'f, 'a> {
    f: &'f mut fmt::Formatter<'a>,
    sep: &'static str,
    next: &'static str,
}

impl AttrWriter<'_, '_> {
    /// Writes the attribute if `value` is present, percent-encoding bytes `keep` rejects.
    fn put(&mut self, name: &str, value: Option<&[u8]>, keep: fn(u8) -> bool) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let Some(value) = value else { return Ok(()) };
        write!(self.f, "{}{name}=", self.sep)?;
        self.sep = self.next;
        for &b in value {
            if keep(b) {
                self.f.write_char(char::from(b))?;
            } else {
                let (hi, lo) = (HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]);
                write!(self.f, "%{}{}", char::from(hi), char::from(lo))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::UriError::*;
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Pkcs11Uri {
        s.parse().unwrap()
    }

    fn err(s: &str) -> UriError {
        s.parse::<Pkcs11Uri>().unwrap_err()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn pct(attribute: &str, offset: usize) -> UriError {
        BadPercentEncoding {
            attribute: attribute.into(),
            offset,
        }
    }

    fn value(attribute: &str, reason: &'static str) -> UriError {
        InvalidValue {
            attribute: attribute.into(),
            reason,
        }
    }

    #[test]
    fn rfc_7512_examples_decode() {
        assert_eq!(ok("pkcs11:"), Pkcs11Uri::default());
        let want = Pkcs11Uri {
            object: s("my-pubkey"),
            object_type: Some(ObjectType::Public),
            ..Default::default()
        };
        assert_eq!(ok("pkcs11:object=my-pubkey;type=public"), want);
        let full = ok("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
            manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;\
            id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin");
        let want = Pkcs11Uri {
            token: s("The Software PKCS#11 Softtoken"),
            manufacturer: s("Snake Oil, Inc."),
            model: s("1.0"),
            serial: s(""),
            object: s("my-certificate"),
            object_type: Some(ObjectType::Cert),
            id: Some(vec![0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91]),
            pin_source: s("file:/etc/token_pin"),
            ..Default::default()
        };
        assert_eq!(full, want);
        let uri = ok("pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;\
            object=my-certificate;type=cert");
        assert_eq!(uri.token, s("A name with a substring %;"));
        assert_eq!(uri.object_type, Some(ObjectType::Cert));
        let uri = ok(
            "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;\
            object=my-certificate;type=cert",
        );
        assert_eq!(uri.token, s("Name with a small A with acute: \u{e1}"));
        assert_eq!(uri.object, s("my-certificate"));
        let uri = ok(
            "pkcs11:library-version=7;library-manufacturer=Snake%20Oil,%20Inc.;\
            library-description=Soft%20Token",
        );
        assert_eq!(uri.library_version, Some((7, 0)));
        assert_eq!(uri.library_manufacturer, s("Snake Oil, Inc."));
        assert_eq!(uri.library_description, s("Soft Token"));
    }

    #[test]
    fn rfc_7512_query_slot_and_mixed_case_hex_examples() {
        let uri = ok(
            "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3.23;\
            id=%01%02%03%Ba%dd%Ef%fe",
        );
        assert_eq!(uri.token, s("My token% created by Joe"));
        assert_eq!(uri.library_version, Some((3, 23)));
        assert_eq!(uri.id, Some(vec![1, 2, 3, 0xba, 0xdd, 0xef, 0xfe]));
        let uri = ok("pkcs11:object=my-sign-key;type=private\
            ?module-path=/mnt/libmypkcs11.so.1&module-name=mypkcs11&pin-value=the-pin");
        assert_eq!(uri.object_type, Some(ObjectType::Private));
        assert_eq!(uri.module_path, s("/mnt/libmypkcs11.so.1"));
        assert_eq!(uri.module_name, s("mypkcs11"));
        assert_eq!(uri.pin_value, s("the-pin"));
        let uri = ok("pkcs11:slot-description=Sun%20Metaslot;slot-manufacturer=Sun;slot-id=7");
        assert_eq!(uri.slot_description, s("Sun Metaslot"));
        assert_eq!((uri.slot_manufacturer, uri.slot_id), (s("Sun"), Some(7)));
    }

    #[test]
    fn scheme_is_case_insensitive_and_required() {
        assert_eq!(ok("PKCS11:token=a").token, s("a"));
        assert_eq!(ok("Pkcs11:"), Pkcs11Uri::default());
        let bad = [
            "",
            "pkcs11",
            "token=a",
            "http://x",
            "pkcs1\u{e9}:",
            " pkcs11:",
        ];
        for bad in bad {
            assert_eq!(err(bad), MissingScheme, "{bad:?}");
        }
    }

    #[test]
    fn structural_errors_are_reported() {
        let cases = [
            ("pkcs11:token=a;;serial=b", EmptySegment("path")),
            ("pkcs11:;token=a", EmptySegment("path")),
            ("pkcs11:token=a;", EmptySegment("path")),
            ("pkcs11:?", EmptySegment("query")),
            ("pkcs11:?pin-source=a&&module-name=b", EmptySegment("query")),
            ("pkcs11:token", MissingEquals("token".into())),
            ("pkcs11:token=a;serial", MissingEquals("serial".into())),
            ("pkcs11:?pin-source", MissingEquals("pin-source".into())),
            ("pkcs11:Token=a", UnknownAttribute("Token".into())),
            ("pkcs11:label=a", UnknownAttribute("label".into())),
            ("pkcs11:=a", UnknownAttribute(String::new())),
            ("pkcs11:?pin=1", UnknownAttribute("pin".into())),
            ("pkcs11:x-=v", InvalidVendorName("x-".into())),
            ("pkcs11:x-a b=v", InvalidVendorName("x-a b".into())),
            ("pkcs11:x-%41=v", InvalidVendorName("x-%41".into())),
        ];
        for (input, want) in cases {
            assert_eq!(err(input), want, "{input}");
        }
        let misplaced = |attribute: &str, expected| MisplacedAttribute {
            attribute: attribute.into(),
            expected,
        };
        assert_eq!(err("pkcs11:pin-value=1"), misplaced("pin-value", "query"));
        assert_eq!(err("pkcs11:?token=a"), misplaced("token", "path"));
    }

    #[test]
    fn duplicate_attributes_are_rejected() {
        let cases = [
            ("pkcs11:token=a;token=a", "token"),
            ("pkcs11:id=%01;object=o;id=%02", "id"),
            ("pkcs11:type=cert;type=data", "type"),
            ("pkcs11:slot-id=1;slot-id=2", "slot-id"),
            ("pkcs11:?pin-value=1&pin-value=2", "pin-value"),
            ("pkcs11:x-a=1;x-a=2", "x-a"),
            ("pkcs11:x-a=1?x-a=2", "x-a"),
        ];
        for (input, name) in cases {
            assert_eq!(err(input), DuplicateAttribute(name.into()), "{input}");
        }
    }

    #[test]
    fn percent_encoding_and_utf8_rules() {
        let cases = [
            ("%", 0),
            ("ab%4", 2),
            ("%zz", 0),
            ("%g0", 0),
            ("%41%", 3),
            ("%%41", 0),
        ];
        for (v, offset) in cases {
            let want = pct("object", offset);
            assert_eq!(err(&format!("pkcs11:object={v}")), want, "{v}");
        }
        assert_eq!(err("pkcs11:id=%0"), pct("id", 0));
        assert_eq!(ok("pkcs11:object=%4a%4A").object, s("JJ"));
        assert_eq!(err("pkcs11:token=%FF"), InvalidUtf8("token".into()));
        assert_eq!(
            err("pkcs11:?pin-value=%C3"),
            InvalidUtf8("pin-value".into())
        );
        assert_eq!(ok("pkcs11:id=%FF%00%C3").id, Some(vec![0xff, 0, 0xc3]));
        assert_eq!(ok("pkcs11:id=").id, Some(Vec::new()));
        assert_eq!(ok("pkcs11:?pin-source=a?b=c").pin_source, s("a?b=c"));
    }

    #[test]
    fn typed_values_are_validated() {
        let versions = [
            ("0", (0, 0)),
            ("7", (7, 0)),
            ("1.23", (1, 23)),
            ("255.255", (255, 255)),
        ];
        for (v, want) in versions {
            let uri = ok(&format!("pkcs11:library-version={v}"));
            assert_eq!(uri.library_version, Some(want), "{v}");
        }
        for v in [
            "", "1.", ".1", "256", "1.256", "+1", "1.+2", "1.2.3", "a", "1 ", "-1",
        ] {
            let got = err(&format!("pkcs11:library-version={v}"));
            assert_eq!(got, value("library-version", VERSION_REASON), "{v}");
        }
        let max = ok("pkcs11:slot-id=18446744073709551615");
        assert_eq!(max.slot_id, Some(u64::MAX));
        for v in ["", "-1", "+1", "0x1", "18446744073709551616", "1.0"] {
            let want = value("slot-id", SLOT_ID_REASON);
            assert_eq!(err(&format!("pkcs11:slot-id={v}")), want, "{v}");
        }
        use ObjectType::*;
        for t in [Cert, Data, Private, Public, SecretKey] {
            let uri = ok(&format!("pkcs11:type={}", t.as_str()));
            assert_eq!(uri.object_type, Some(t));
        }
        for v in ["", "Cert", "key", "secret", "secret_key"] {
            let want = value("type", TYPE_REASON);
            assert_eq!(err(&format!("pkcs11:type={v}")), want, "{v}");
        }
    }

    #[test]
    fn input_length_is_bounded() {
        let longest = format!("pkcs11:object={}", "a".repeat(MAX_URI_LEN - 14));
        assert_eq!(ok(&longest).object.map(|o| o.len()), Some(MAX_URI_LEN - 14));
        let too_long = format!("{longest}a");
        assert_eq!(err(&too_long), TooLong(MAX_URI_LEN + 1));
        // Within the limit, but `=` is percent-encoded in the canonical form (three times as
        // long): refused, so every accepted URI's canonical form parses back (fuzz regression).
        let expands = format!("pkcs11:object={}", "=".repeat(MAX_URI_LEN - 20));
        assert!(expands.len() <= MAX_URI_LEN);
        assert_eq!(err(&expands), CanonicalTooLong(14 + 3 * (MAX_URI_LEN - 20)));
        let fits = format!("pkcs11:object={}", "=".repeat(1000));
        let uri = ok(&fits);
        assert_eq!(ok(&uri.to_string()), uri);
    }

    #[test]
    fn display_is_canonical() {
        let uri = Pkcs11Uri {
            vendor: vec![("x-z".into(), "v;".into())],
            module_path: s("/usr/lib/p11.so"),
            id: Some(vec![0x00, b'a', 0xff]),
            object_type: Some(ObjectType::SecretKey),
            library_version: Some((2, 40)),
            serial: s("S/N 1"),
            token: s("a;b?c&d%e=f"),
            pin_value: s("p&q"),
            slot_id: Some(4),
            ..Default::default()
        };
        let want = "pkcs11:token=a%3Bb%3Fc%26d%25e%3Df;serial=S%2FN%201;library-version=2.40;\
            slot-id=4;type=secret-key;id=%00%61%FF;x-z=v%3B\
            ?pin-value=p%26q&module-path=/usr/lib/p11.so";
        assert_eq!(uri.to_string(), want);
        assert_eq!(ok(want), uri);
        let uri = ok("pkcs11:x-b=2;token=t;x-a=%20one?x-c=3&pin-source=p");
        assert_eq!(uri.vendor[1], ("x-a".to_owned(), " one".to_owned()));
        let want = "pkcs11:token=t;x-b=2;x-a=%20one;x-c=3?pin-source=p";
        assert_eq!(uri.to_string(), want);
        let query_only = ok("pkcs11:?pin-source=file:/run/pin");
        assert_eq!(query_only.to_string(), "pkcs11:?pin-source=file:/run/pin");
    }

    #[test]
    fn token_matching_and_selection() {
        assert!(ok("pkcs11:").matches_token("any", "maker", "model", "123"));
        assert!(!ok("pkcs11:").selects_token());
        let uri = ok("pkcs11:token=signer%20%20;serial=0042");
        assert!(uri.selects_token());
        assert!(uri.matches_token("signer", "anyone", "any model", "0042          "));
        assert!(!uri.matches_token(" signer", "x", "y", "0042"));
        assert!(!uri.matches_token("signer", "x", "y", "0043"));
        let by_maker = ok("pkcs11:manufacturer=ACME;model=M1;object=k;slot-id=3");
        assert!(!by_maker.selects_token());
        assert!(by_maker.matches_token("t", "ACME   ", "M1", "1"));
        assert!(!by_maker.matches_token("t", "ACME", "M2", "1"));
        assert!(ok("pkcs11:serial=").selects_token());
    }

    #[test]
    fn errors_name_the_attribute_and_hide_values() {
        let msg = err("pkcs11:?pin-value=%ZZsecret").to_string();
        assert!(msg.contains("pin-value") && !msg.contains("ZZs"), "{msg}");
        let msg = err("pkcs11:slot-id=99999999999999999999").to_string();
        assert!(msg.contains("slot-id") && !msg.contains("9999"), "{msg}");
        let debug = format!("{:?}", ok("pkcs11:?pin-value=hunter2"));
        assert!(debug.contains("pin-value=REDACTED"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[;?&%/=#+ ,.:@~a-zA-Z0-9\u{e1}\u{1F600}-]{0,16}"
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn any_uri() -> impl Strategy<Value = Pkcs11Uri> {
        use proptest::{collection::vec, option::of};
        use ObjectType::*;
        let kind = prop_oneof![Just(Cert), Just(Data), Just(Private), Just(Public)];
        let kind = prop_oneof![kind, Just(SecretKey)];
        let vendor = vec(("x-[A-Za-z0-9_-]{1,8}", text()), 0..4).prop_map(|mut v| {
            let mut seen = std::collections::HashSet::new();
            v.retain(|(name, _)| seen.insert(name.clone()));
            v
        });
        let typed = (of(any::<(u8, u8)>()), of(any::<u64>()), of(kind));
        let rest = (of(vec(any::<u8>(), 0..24)), vendor);
        (vec(opt_text(), 13), typed, rest).prop_map(|(texts, typed, (id, vendor))| {
            let mut texts = texts.into_iter();
            let mut next = || texts.next().flatten();
            Pkcs11Uri {
                token: next(),
                manufacturer: next(),
                serial: next(),
                model: next(),
                library_manufacturer: next(),
                library_description: next(),
                library_version: typed.0,
                slot_description: next(),
                slot_manufacturer: next(),
                slot_id: typed.1,
                object: next(),
                object_type: typed.2,
                id,
                pin_source: next(),
                pin_value: next(),
                module_name: next(),
                module_path: next(),
                vendor,
            }
        })
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(uri in any_uri()) {
            let printed = uri.to_string();
            prop_assert!(printed.is_ascii(), "canonical form must be ASCII: {}", printed);
            prop_assert_eq!(printed.parse::<Pkcs11Uri>(), Ok(uri));
        }

        #[test]
        fn parsing_arbitrary_input_never_panics(
            input in prop_oneof![any::<String>(), "(?i:pkcs11:)[a-z=;?&%0-9A-Fx. -]{0,64}"]
        ) {
            match input.parse::<Pkcs11Uri>() {
                // Whatever parses has a canonical form that parses back to the same value.
                Ok(uri) => prop_assert_eq!(uri.to_string().parse::<Pkcs11Uri>(), Ok(uri)),
                Err(e) => {
                    let scheme = input.get(..7).is_some_and(|p| p.eq_ignore_ascii_case(SCHEME));
                    prop_assert_eq!(scheme, e != MissingScheme, "{:?}", e);
                }
            }
        }

        #[test]
        fn matches_token_ignores_trailing_spaces(
            fields in proptest::array::uniform4(any::<String>()),
            pads in proptest::array::uniform8(0usize..6),
            other in any::<String>(),
        ) {
            let pad = |i: usize, p: usize| format!("{}{}", fields[i], " ".repeat(pads[p]));
            let uri = Pkcs11Uri {
                token: Some(pad(0, 0)),
                manufacturer: Some(pad(1, 1)),
                model: Some(pad(2, 2)),
                serial: Some(pad(3, 3)),
                ..Default::default()
            };
            prop_assert!(uri.matches_token(&pad(0, 4), &pad(1, 5), &pad(2, 6), &pad(3, 7)));
            let same = trim_padding(&other) == trim_padding(&fields[0]);
            prop_assert_eq!(uri.matches_token(&other, &pad(1, 5), &pad(2, 6), &pad(3, 7)), same);
        }
    }
}
