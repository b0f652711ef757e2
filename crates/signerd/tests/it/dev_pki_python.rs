//! The dev certificates written by `init --dev` parse in a strict X.509 parser (pyca/cryptography,
//! which every Python QUIC client uses): DER forbids encoding a DEFAULT value, so an end-entity
//! certificate must not carry `cA=FALSE` explicitly in BasicConstraints.

use std::process::Command;

use crate::batch_python::{describe, python_available};

/// Loads each certificate with `cryptography`, reads every extension (parsing is lazy there; the
/// strict DER checks run when the extensions are read) and prints `path ca=<bool>` per file.
const STRICT_PARSE: &str = r#"
import sys
from cryptography import x509
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    exts = list(cert.extensions)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    print(path, "ca=%s" % bc.ca, "extensions=%d" % len(exts))
"#;

#[test]
fn dev_certificates_parse_in_a_strict_parser() {
    if python_available().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = signerd::tls::generate_dev_pki(dir.path()).unwrap();
    let certs = [
        (&pki.ca_cert, true),
        (&pki.server_cert, false),
        (&pki.admin_cert, false),
        (&pki.app_cert, false),
    ];
    let out = Command::new("python3")
        .arg("-c")
        .arg(STRICT_PARSE)
        .args(certs.iter().map(|(p, _)| p.as_os_str()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), certs.len(), "{stdout}");
    for ((path, ca), line) in certs.iter().zip(&lines) {
        let expected = format!(
            "{} ca={}",
            path.display(),
            if *ca { "True" } else { "False" }
        );
        assert!(line.starts_with(&expected), "{line} (wanted {expected})");
    }
}
