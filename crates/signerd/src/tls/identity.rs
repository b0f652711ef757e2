//! The caller's identity, read from its verified end-entity certificate.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentitySource, TlsError};

/// The caller's identity from its (already verified) end-entity certificate, DER-encoded: the
/// first SAN URI, the first SAN DNS name, or the subject commonName, per `source`.
///
/// A certificate without that field is an error: there is no fallback to another field. An
/// empty value, or (for [`IdentitySource::CommonName`]) more than one commonName, is an error too.
/// This function does not verify the certificate; call it only on the peer certificate of a
/// completed handshake.
pub fn identity_of(cert_der: &[u8], source: IdentitySource) -> Result<String, TlsError> {
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| TlsError::Identity(format!("unparsable certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(TlsError::Identity(
            "trailing bytes after the certificate".into(),
        ));
    }
    let value = match source {
        IdentitySource::SanUri => first_san(&cert, "URI", |name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })?,
        IdentitySource::SanDns => first_san(&cert, "DNS name", |name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })?,
        IdentitySource::CommonName => common_name(&cert)?,
    };
    if value.is_empty() {
        return Err(TlsError::Identity(format!(
            "the certificate's {source:?} is empty"
        )));
    }
    Ok(value.to_owned())
}

fn first_san<'a>(
    cert: &'a X509Certificate<'_>,
    what: &str,
    pick: impl Fn(&GeneralName<'a>) -> Option<&'a str>,
) -> Result<&'a str, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Identity(format!("invalid subjectAltName: {e}")))?
        .ok_or_else(|| {
            TlsError::Identity(format!(
                "the certificate has no subjectAltName (a SAN {what} names the caller)"
            ))
        })?;
    san.value
        .general_names
        .iter()
        .find_map(pick)
        .ok_or_else(|| {
            TlsError::Identity(format!(
                "the certificate has no SAN {what} (it names the caller)"
            ))
        })
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
