//! Tests of the dev PKI: idempotence, file modes, certificate contents, refusals.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use x509_parser::extensions::GeneralName;

use super::*;

/// Every file in `dir`: name → (contents, mode).
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            #[cfg(unix)]
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                entry.metadata().unwrap().permissions().mode() & 0o777
            };
            #[cfg(not(unix))]
            let mode = 0;
            let name = entry.file_name().into_string().unwrap();
            (name, (std::fs::read(entry.path()).unwrap(), mode))
        })
        .collect()
}

fn cert_der(path: &Path) -> Vec<u8> {
    pem::load_certs(path).unwrap()[0].to_vec()
}

#[test]
fn second_run_changes_nothing_and_keys_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let first = generate_dev_pki(&dir).unwrap();
    let before = snapshot(&dir);
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "ca.key",
            "ca.pem",
            "client-admin.key",
            "client-admin.pem",
            "client-app.key",
            "client-app.pem",
            "server.key",
            "server.pem"
        ]
    );
    #[cfg(unix)]
    for (name, (_, mode)) in &before {
        let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(*mode, want, "{name}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    let second = generate_dev_pki(&dir).unwrap();
    assert_eq!(first, second);
    assert_eq!(before, snapshot(&dir));
}

#[test]
fn certificate_contents() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path()).unwrap();
    let year = 365 * 24 * 60 * 60;
    let load = |path: &Path| cert_der(path);
    let (ca_der, server_der, app_der) = (
        load(&pki.ca_cert),
        load(&pki.server_cert),
        load(&pki.app_cert),
    );
    let ca = X509Certificate::from_der(&ca_der).unwrap().1;
    let server = X509Certificate::from_der(&server_der).unwrap().1;
    let app = X509Certificate::from_der(&app_der).unwrap().1;
    let lifetime = |c: &X509Certificate<'_>| {
        c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
    };

    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && !ku.digital_signature());
    assert_eq!(ca.subject().as_raw(), ca.issuer().as_raw());
    assert!((10 * year..11 * year).contains(&lifetime(&ca)));
    assert_eq!(
        ca.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );

    for leaf in [&server, &app] {
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        assert!((2 * year..3 * year).contains(&lifetime(leaf)));
        assert!(leaf.validity().is_valid());
        assert!(leaf.key_usage().unwrap().unwrap().value.digital_signature());
    }
    let eku = server.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let eku = app.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    let sans = server.subject_alternative_name().unwrap().unwrap().value;
    let sans: Vec<String> = sans
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:02x?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans.len(), 3, "{sans:?}");
    assert_eq!(sans[0], "dns:localhost");
    assert_eq!(sans[1], format!("ip:{:02x?}", [127u8, 0, 0, 1]));
    assert_eq!(sans[2], format!("ip:{:02x?}", Ipv6Addr::LOCALHOST.octets()));
}

#[test]
fn half_pairs_and_orphans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path()).unwrap();

    std::fs::remove_file(&pki.server_cert).unwrap();
    let err = generate_dev_pki(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::Generate(_)), "{err}");
    assert!(err.to_string().contains("only one of"), "{err}");
    assert!(
        !pki.server_cert.exists(),
        "nothing written over half a pair"
    );
    // ... also for the CA.
    std::fs::remove_file(&pki.server_key).unwrap();
    std::fs::remove_file(&pki.ca_key).unwrap();
    let err = generate_dev_pki(dir.path()).unwrap_err();
    assert!(err.to_string().contains("only one of"), "{err}");

    std::fs::remove_file(&pki.ca_cert).unwrap();
    let err = generate_dev_pki(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::Generate(_)), "{err}");
    assert!(err.to_string().contains("client-admin.pem"), "{err}");
    assert!(!pki.ca_cert.exists());
}

#[test]
fn a_ca_key_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path()).unwrap();
    std::fs::remove_file(&pki.ca_key).unwrap();
    std::fs::copy(&pki.server_key, &pki.ca_key).unwrap();
    std::fs::remove_file(&pki.app_cert).unwrap();
    std::fs::remove_file(&pki.app_key).unwrap();
    let err = generate_dev_pki(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::Generate(_)), "{err}");
    assert!(!pki.app_cert.exists() && !pki.app_key.exists());
}

#[test]
fn foreign_client_is_another_ca_with_the_same_claimed_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path()).unwrap();
    let (cert, key) = generate_foreign_client(dir.path()).unwrap();
    assert_eq!(cert, dir.path().join("other-client.pem"));
    assert_eq!(key, dir.path().join("other-client.key"));
    let other_ca = dir.path().join("other-ca.pem");
    let before = snapshot(dir.path());
    #[cfg(unix)]
    assert_eq!(before["other-client.key"].1, 0o600);

    let foreign = cert_der(&cert);
    let foreign = X509Certificate::from_der(&foreign).unwrap().1;
    let dev_ca = cert_der(&pki.ca_cert);
    let dev_ca = X509Certificate::from_der(&dev_ca).unwrap().1;
    let other = cert_der(&other_ca);
    let other = X509Certificate::from_der(&other).unwrap().1;
    assert_ne!(foreign.issuer().as_raw(), dev_ca.subject().as_raw());
    assert_eq!(foreign.issuer().as_raw(), other.subject().as_raw());
    assert_eq!(
        crate::tls::identity_of(&cert_der(&cert), crate::tls::IdentitySource::SanUri).unwrap(),
        "signerd://dev/app"
    );

    assert_eq!(generate_foreign_client(dir.path()).unwrap(), (cert, key));
    assert_eq!(before, snapshot(dir.path()));
}
