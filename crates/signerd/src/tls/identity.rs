//! The caller's identity, read from its verified end-entity certificate, and the rules every
//! identity obeys.
//!
//! **One field, exactly once.** The identity is the certificate's one SAN URI, one SAN DNS name
//! or one subject commonName, per [`IdentitySource`]. A certificate without that field, or with
//! more than one of it, has no identity and is refused (the server closes the connection and
//! audits an authentication failure with this module's message): the daemon never picks one of
//! several names.
//!
//! **Validation** (the same for every source, [`check_identity`]): an identity is not empty, has
//! no control character ([`char::is_control`]), no leading or trailing whitespace, and none of
//! `*`, `?` (the policy's wildcards, [`crate::policy::glob`]) or `[`, `]` (reserved: the policy
//! has no character classes, and a reader who expects them must not be misled). So an identity
//! never looks like a pattern: a policy entry with `*` or `?` can only be a glob, and one
//! without is one identity, compared for equality.
//!
//! **Normalization**: SAN DNS names are lowercased (ASCII; DNS names are case-insensitive and a
//! SAN dNSName is IA5, i.e. ASCII), so `App.Example.COM` and `app.example.com` are one
//! identity; write them in lowercase in a policy. URIs and commonNames are taken as written and
//! compared byte for byte: no case folding, no percent-decoding, no Unicode normalization.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentitySource, TlsError};
use crate::policy::glob::WILDCARDS;

/// Characters no identity and no identity pattern may hold: reserved, as the policy's globs
/// have no character classes.
pub const RESERVED: [char; 2] = ['[', ']'];

/// The caller's identity from its (already verified) end-entity certificate, DER-encoded: its
/// only SAN URI, its only SAN DNS name (lowercased), or its only subject commonName, per
/// `source` (see the module documentation for the rules).
///
/// A certificate without that field, or with more than one of it, is an error: there is no
/// fallback to another field and no choice among several. A value that fails
/// [`check_identity`] is an error too. This function does not verify the certificate; call it
/// only on the peer certificate of a completed handshake.
pub fn identity_of(cert_der: &[u8], source: IdentitySource) -> Result<String, TlsError> {
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| TlsError::Identity(format!("unparsable certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(TlsError::Identity(
            "trailing bytes after the certificate".into(),
        ));
    }
    let value = match source {
        IdentitySource::SanUri => only_san(&cert, source, |name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })?
        .to_owned(),
        IdentitySource::SanDns => only_san(&cert, source, |name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })?
        .to_ascii_lowercase(),
        IdentitySource::CommonName => common_name(&cert)?.to_owned(),
    };
    check_identity(&value).map_err(|reason| {
        TlsError::Identity(format!(
            "the certificate's {} {value:?} {reason}",
            field(source)
        ))
    })?;
    Ok(value)
}

/// Checks that `text` can be an identity: not empty, no control character, no leading or
/// trailing whitespace, none of `*`, `?`, `[`, `]`. `Err` says what is wrong, as a phrase to
/// follow the identity (`"contains the control character U+000A"`).
pub fn check_identity(text: &str) -> Result<(), String> {
    check_text(text, false)
}

/// Checks that `text` can be an identity pattern in a policy: the rules of [`check_identity`],
/// except that the wildcards `*` and `?` are allowed. `Err` as for [`check_identity`].
pub fn check_identity_pattern(text: &str) -> Result<(), String> {
    check_text(text, true)
}

/// The one definition of what an identity (or, with `wildcards`, an identity pattern) may hold.
fn check_text(text: &str, wildcards: bool) -> Result<(), String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character U+{:04X}",
            u32::from(c)
        ));
    }
    if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return Err("begins or ends with whitespace".into());
    }
    if let Some(c) = text.chars().find(|c| RESERVED.contains(c)) {
        return Err(format!(
            "contains {c:?}, which is reserved (identities never contain * ? [ ], and policy \
             patterns have no character classes)"
        ));
    }
    if !wildcards {
        if let Some(c) = text.chars().find(|c| WILDCARDS.contains(c)) {
            return Err(format!(
                "contains {c:?}, a policy wildcard (identities never contain * ? [ ], so that \
                 no identity listed in a policy can act as a pattern)"
            ));
        }
    }
    Ok(())
}

/// How messages name the field `source` reads.
fn field(source: IdentitySource) -> &'static str {
    match source {
        IdentitySource::SanUri => "SAN URI",
        IdentitySource::SanDns => "SAN DNS name",
        IdentitySource::CommonName => "commonName",
    }
}

/// The one subjectAltName entry `pick` accepts; none or several are an error.
fn only_san<'a>(
    cert: &'a X509Certificate<'_>,
    source: IdentitySource,
    pick: impl Fn(&GeneralName<'a>) -> Option<&'a str>,
) -> Result<&'a str, TlsError> {
    let what = field(source);
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Identity(format!("invalid subjectAltName: {e}")))?
        .ok_or_else(|| {
            TlsError::Identity(format!(
                "the certificate has no subjectAltName (a {what} names the caller)"
            ))
        })?;
    let mut found = san.value.general_names.iter().filter_map(pick);
    let first = found.next().ok_or_else(|| {
        TlsError::Identity(format!(
            "the certificate has no {what} (it names the caller)"
        ))
    })?;
    let others = found.count();
    if others > 0 {
        return Err(TlsError::Identity(format!(
            "the certificate has {} {what}s; exactly one must name the caller",
            others + 1
        )));
    }
    Ok(first)
}

fn common_name<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, TlsError> {
    let mut names = cert.subject().iter_common_name();
    let first = names.next().ok_or_else(|| {
        TlsError::Identity("the certificate subject has no commonName (it names the caller)".into())
    })?;
    if names.next().is_some() {
        return Err(TlsError::Identity(
            "the certificate subject has more than one commonName".into(),
        ));
    }
    first
        .as_str()
        .map_err(|e| TlsError::Identity(format!("the commonName is not a string: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::{generate_dev_pki, pem::load_certs};

    fn der(path: &std::path::Path) -> Vec<u8> {
        load_certs(path).unwrap()[0].to_vec()
    }

    #[test]
    fn dev_identities_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(dir.path()).unwrap();
        let admin = der(&pki.admin_cert);
        let app = der(&pki.app_cert);
        let server = der(&pki.server_cert);

        assert_eq!(
            identity_of(&admin, IdentitySource::SanUri).unwrap(),
            "signerd://dev/admin"
        );
        assert_eq!(
            identity_of(&admin, IdentitySource::CommonName).unwrap(),
            "admin"
        );
        assert_eq!(
            identity_of(&app, IdentitySource::SanUri).unwrap(),
            "signerd://dev/app"
        );
        assert_eq!(
            identity_of(&app, IdentitySource::CommonName).unwrap(),
            "app"
        );
        // Client certificates carry no DNS name: no fallback to the URI or the CN.
        for client in [&admin, &app] {
            let err = identity_of(client, IdentitySource::SanDns).unwrap_err();
            assert!(matches!(err, TlsError::Identity(_)), "{err}");
            assert_eq!(err.status(), crate::Status::Unauthenticated);
        }
        // The server certificate has SAN DNS and IPs, but no SAN URI.
        assert_eq!(
            identity_of(&server, IdentitySource::SanDns).unwrap(),
            "localhost"
        );
        let err = identity_of(&server, IdentitySource::SanUri).unwrap_err();
        assert!(err.to_string().contains("no SAN URI"), "{err}");
    }

    #[test]
    fn missing_fields_and_garbage() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let bare = params.self_signed(&key).unwrap();
        for source in [
            IdentitySource::SanUri,
            IdentitySource::SanDns,
            IdentitySource::CommonName,
        ] {
            assert!(matches!(
                identity_of(bare.der(), source),
                Err(TlsError::Identity(_))
            ));
        }

        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "");
        let empty_cn = params.self_signed(&key).unwrap();
        assert!(identity_of(empty_cn.der(), IdentitySource::CommonName)
            .unwrap_err()
            .to_string()
            .contains("empty"));

        assert!(matches!(
            identity_of(b"not a certificate", IdentitySource::SanUri),
            Err(TlsError::Identity(_))
        ));
        let mut trailing = bare.der().to_vec();
        trailing.push(0);
        assert!(matches!(
            identity_of(&trailing, IdentitySource::SanUri),
            Err(TlsError::Identity(_))
        ));
    }

    /// A self-signed certificate with these SAN entries and commonName.
    fn cert_with(sans: Vec<rcgen::SanType>, cn: Option<&str>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(text: &str) -> rcgen::SanType {
        rcgen::SanType::URI(rcgen::Ia5String::try_from(text.to_owned()).unwrap())
    }

    fn dns(text: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(rcgen::Ia5String::try_from(text.to_owned()).unwrap())
    }

    fn refusal(der: &[u8], source: IdentitySource) -> String {
        let err = identity_of(der, source).unwrap_err();
        assert!(matches!(err, TlsError::Identity(_)), "{err}");
        assert_eq!(err.status(), crate::Status::Unauthenticated);
        err.to_string()
    }

    #[test]
    fn several_sans_of_the_configured_type_are_refused() {
        let two_uris = cert_with(
            vec![uri("signerd://dev/app"), uri("signerd://dev/admin")],
            None,
        );
        let err = refusal(&two_uris, IdentitySource::SanUri);
        assert!(
            err.contains("has 2 SAN URIs; exactly one must name the caller"),
            "{err}"
        );
        let three_dns = cert_with(vec![dns("a.test"), dns("b.test"), dns("c.test")], None);
        let err = refusal(&three_dns, IdentitySource::SanDns);
        assert!(err.contains("has 3 SAN DNS names"), "{err}");

        // Only entries of the configured type count: one URI beside DNS names is the identity.
        let mixed = cert_with(
            vec![dns("a.test"), uri("signerd://dev/app"), dns("b.test")],
            None,
        );
        assert_eq!(
            identity_of(&mixed, IdentitySource::SanUri).unwrap(),
            "signerd://dev/app"
        );
        assert!(refusal(&mixed, IdentitySource::SanDns).contains("has 2 SAN DNS names"));
    }

    #[test]
    fn identities_with_wildcards_controls_or_padding_are_refused() {
        for (text, want) in [
            ("signerd://dev/*", "contains '*', a policy wildcard"),
            ("signerd://dev/ap?", "contains '?', a policy wildcard"),
            ("signerd://dev/[ab]", "contains '[', which is reserved"),
            (
                "signerd://dev/app\n",
                "contains the control character U+000A",
            ),
            (
                "signerd://dev/\u{7f}app",
                "contains the control character U+007F",
            ),
            (" signerd://dev/app", "begins or ends with whitespace"),
        ] {
            let err = refusal(&cert_with(vec![uri(text)], None), IdentitySource::SanUri);
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("the certificate's SAN URI"), "{err}");
        }
        // The same rules for every source.
        let err = refusal(
            &cert_with(vec![], Some("ops-*")),
            IdentitySource::CommonName,
        );
        assert!(err.contains("a policy wildcard"), "{err}");
        let err = refusal(
            &cert_with(vec![], Some("ali\tce")),
            IdentitySource::CommonName,
        );
        assert!(err.contains("U+0009"), "{err}");
        let err = refusal(
            &cert_with(vec![dns("*.test")], None),
            IdentitySource::SanDns,
        );
        assert!(err.contains("a policy wildcard"), "{err}");
        // An inner space is fine in a commonName.
        assert_eq!(
            identity_of(
                &cert_with(vec![], Some("Alice Smith")),
                IdentitySource::CommonName
            )
            .unwrap(),
            "Alice Smith"
        );
    }

    #[test]
    fn dns_identities_are_lowercased_others_kept_as_written() {
        let der = cert_with(
            vec![dns("App.Example.COM"), uri("Signerd://Dev/App")],
            Some("App"),
        );
        for (source, want) in [
            (IdentitySource::SanDns, "app.example.com"),
            (IdentitySource::SanUri, "Signerd://Dev/App"),
            (IdentitySource::CommonName, "App"),
        ] {
            assert_eq!(identity_of(&der, source).unwrap(), want, "{source:?}");
        }
    }

    #[test]
    fn identity_and_pattern_checks() {
        assert!(check_identity("spiffe://ex.org/ops/alice").is_ok());
        assert!(check_identity("").unwrap_err().contains("empty"));
        assert!(check_identity("a*").is_err());
        assert!(check_identity_pattern("spiffe://ex.org/ops/*").is_ok());
        assert!(check_identity_pattern("spiffe://ex.org/ops/?").is_ok());
        for bad in ["", "a\u{0}b", "a]", "a ", "\u{85}x"] {
            assert!(check_identity_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_names_in_config() {
        #[derive(serde::Deserialize)]
        struct T {
            s: IdentitySource,
        }
        for (text, want) in [
            ("san-uri", IdentitySource::SanUri),
            ("san-dns", IdentitySource::SanDns),
            ("common-name", IdentitySource::CommonName),
        ] {
            let t: T = toml::from_str(&format!("s = \"{text}\"")).unwrap();
            assert_eq!(t.s, want);
        }
        assert!(toml::from_str::<T>("s = \"cn\"").is_err());
    }
}
