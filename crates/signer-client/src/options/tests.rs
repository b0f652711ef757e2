use super::*;
use crate::test_pki::{self, Pki};

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

/// A builder that builds: one endpoint, the CA and the identity from memory.
fn memory(pki: &Pki) -> ClientOptionsBuilder {
    ClientOptions::builder()
        .endpoint(addr())
        .ca_pem(pki.cert_pem.as_bytes())
        .identity_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
}

fn config_err(b: ClientOptionsBuilder) -> String {
    match b.build() {
        Err(ClientError::Config(m)) => m,
        Err(e) => panic!("expected a config error, got {e:?}"),
        Ok(o) => panic!("expected a config error, got {o:?}"),
    }
}

/// A client file in a directory with the test PKI next to it (`key_mode` for the key file).
fn file(extra: &str, key_mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    test_pki::write(&test_pki::pki(), dir.path(), key_mode);
    let path = dir.path().join("client.toml");
    std::fs::write(
        &path,
        format!(
            "endpoints = [\"127.0.0.1:7443\"]\nca = \"ca.pem\"\ncert = \"c.pem\"\n\
             key = \"c.key\"\n{extra}"
        ),
    )
    .unwrap();
    (dir, path)
}

fn read(extra: &str) -> Result<ClientOptions, ClientError> {
    let (_dir, path) = file(extra, 0o600);
    ClientOptions::from_file(&path)
}

#[test]
fn the_builder_has_the_documented_defaults() {
    let pki = test_pki::pki();
    let o = memory(&pki).build().unwrap();
    assert_eq!(o.endpoints(), [addr()]);
    assert_eq!(o.server_name(), "localhost");
    assert_eq!(o.timeout(), Duration::from_secs(5));
    assert_eq!(o.max_retries(), 2);
    assert_eq!(o.coalesce(), 16);
    assert_eq!(
        (o.server_name(), o.timeout(), o.max_retries(), o.coalesce()),
        (
            ClientOptions::DEFAULT_SERVER_NAME,
            ClientOptions::DEFAULT_TIMEOUT,
            ClientOptions::DEFAULT_MAX_RETRIES,
            ClientOptions::DEFAULT_COALESCE
        )
    );
    let o = memory(&pki)
        .endpoints([SocketAddr::from(([127, 0, 0, 2], 1))])
        .server_name("signer.example")
        .timeout(Duration::from_millis(250))
        .max_retries(0)
        .coalesce(MAX_BATCH)
        .build()
        .unwrap();
    assert_eq!(o.endpoints().len(), 2, "endpoints are added in order");
    assert_eq!(o.endpoints()[1], SocketAddr::from(([127, 0, 0, 2], 1)));
    assert_eq!(
        (o.server_name(), o.timeout(), o.max_retries(), o.coalesce()),
        ("signer.example", Duration::from_millis(250), 0, MAX_BATCH)
    );
}

#[test]
fn build_checks_every_value_with_a_message_that_says_what_to_fix() {
    let pki = test_pki::pki();
    let no_endpoint = ClientOptions::builder()
        .ca_pem(pki.cert_pem.as_bytes())
        .identity_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes());
    assert!(config_err(no_endpoint).contains("no endpoints"));
    assert!(
        config_err(memory(&pki).timeout(Duration::ZERO)).contains("timeout must be more than 0")
    );
    assert!(config_err(memory(&pki).timeout(Duration::MAX)).contains("at most 4294967295 ms"));
    memory(&pki)
        .timeout(ClientOptions::MAX_TIMEOUT)
        .build()
        .unwrap();
    for bad in [0, MAX_BATCH + 1] {
        let e = config_err(memory(&pki).coalesce(bad));
        assert!(e.contains("coalesce must be 1 to 1024"), "{bad}: {e}");
    }
    let e = config_err(memory(&pki).server_name("not a name"));
    assert!(e.contains("server_name \"not a name\""), "{e}");
    memory(&pki).server_name("127.0.0.1").build().unwrap();

    let no_ca = ClientOptions::builder()
        .endpoint(addr())
        .identity_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes());
    assert!(config_err(no_ca).contains("no CA certificates"));
    let no_identity = ClientOptions::builder()
        .endpoint(addr())
        .ca_pem(pki.cert_pem.as_bytes());
    assert!(config_err(no_identity).contains("no client identity"));
}

#[test]
fn build_parses_the_pems_and_matches_the_key_to_the_certificate() {
    let pki = test_pki::pki();
    let e = config_err(memory(&pki).ca_pem("no pem here"));
    assert_eq!(
        e,
        "CA certificates (in-memory PEM): no PEM certificate found"
    );
    let e = config_err(memory(&pki).ca_pem("-----BEGIN CERTIFICATE-----\n!!\n"));
    assert!(
        e.starts_with("CA certificates (in-memory PEM): invalid PEM"),
        "{e}"
    );
    let e = config_err(memory(&pki).identity_pem("", pki.key_pem.as_bytes()));
    assert_eq!(
        e,
        "client certificate chain (in-memory PEM): no PEM certificate found"
    );
    let e = config_err(memory(&pki).identity_pem(pki.cert_pem.as_bytes(), pki.cert_pem.as_bytes()));
    assert_eq!(
        e,
        "client private key (in-memory PEM): no PEM private key found"
    );
    // A key that is not the certificate's.
    let other = test_pki::pki();
    let e =
        config_err(memory(&pki).identity_pem(pki.cert_pem.as_bytes(), other.key_pem.as_bytes()));
    assert!(
        e.starts_with(
            "TLS configuration: client certificate chain (in-memory PEM) with client private key \
             (in-memory PEM): "
        ),
        "{e}"
    );
    // The later CA / identity call wins.
    memory(&pki)
        .ca_pem("garbage")
        .ca_pem(pki.cert_pem.as_bytes())
        .build()
        .unwrap();
}

#[test]
fn a_broken_private_key_pem_is_not_quoted_in_the_error() {
    let pki = test_pki::pki();
    // A key whose base64 is cut and spoiled in the middle: the PEM parser's own error would
    // quote the offending byte and position.
    let body: Vec<&str> = pki.key_pem.lines().collect();
    let spoiled = format!("{}\n{}*\n", body[0], body[1]);
    let e = config_err(memory(&pki).identity_pem(pki.cert_pem.as_bytes(), spoiled.as_bytes()));
    assert!(
        e.starts_with("client private key (in-memory PEM): invalid PEM: "),
        "{e}"
    );
    assert!(!e.contains(&body[1][..8]), "{e}");
}

#[test]
fn files_and_memory_mix_and_the_key_file_mode_is_checked() {
    let pki = test_pki::pki();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki::write(&pki, dir.path(), 0o600);
    ClientOptions::builder()
        .endpoint(addr())
        .ca_file(&ca)
        .identity_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .build()
        .unwrap();
    let o = ClientOptions::builder()
        .endpoint(addr())
        .ca_pem(pki.cert_pem.as_bytes())
        .identity_files(&cert, &key)
        .build()
        .unwrap();
    let debug = format!("{o:?}");
    assert!(debug.contains(&format!("{:?}", key)), "{debug}");

    let missing = dir.path().join("missing.pem");
    let e = config_err(memory(&pki).ca_file(&missing));
    assert!(
        e.starts_with(&format!("cannot read {}", missing.display())),
        "{e}"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = config_err(memory(&pki).identity_files(&cert, &key));
        assert!(e.contains(&format!("chmod 600 {}", key.display())), "{e}");
    }
}

#[test]
fn debug_output_never_shows_the_private_key() {
    let pki = test_pki::pki();
    let builder = memory(&pki);
    let options = builder.clone().build().unwrap();
    // The key's base64 lines, and its DER bytes as `Debug` would print them.
    let secrets: Vec<String> = pki
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .chain([format!("{:?}", &pki.key_der[..16])
            .trim_end_matches(']')
            .to_owned()])
        .collect();
    assert!(secrets.len() >= 2);
    for debug in [
        format!("{builder:?}"),
        format!("{builder:#?}"),
        format!("{options:?}"),
        format!("{options:#?}"),
    ] {
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        for secret in &secrets {
            assert!(!debug.contains(secret.as_str()), "{debug} shows {secret}");
        }
        assert!(debug.contains("<in-memory PEM>"), "{debug}");
        assert!(debug.contains("127.0.0.1:7443"), "{debug}");
    }
}

#[test]
fn a_private_key_in_memory_is_held_zeroizing() {
    let pki = test_pki::pki();
    let builder = memory(&pki);
    // The type is the guarantee: `Zeroizing` wipes the bytes when the builder (or a clone of
    // it) is dropped.
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
    match &builder.identity {
        Some((_, Key::Pem(key))) => {
            zeroized_on_drop(key);
            assert_eq!(key.as_slice(), pki.key_pem.as_bytes());
        }
        _ => panic!("the identity is held in memory"),
    }
    // The options keep no key bytes of their own: only the TLS config built from them.
    let options = builder.build().unwrap();
    assert!(matches!(options.key, Origin::Memory));
}

#[test]
fn the_tls_config_is_tls13_with_alpn_and_no_early_data() {
    let options = memory(&test_pki::pki()).build().unwrap();
    let tls = options.tls_config();
    assert_eq!(tls.alpn_protocols, vec![tls::ALPN.to_vec()]);
    assert!(!tls.enable_early_data);
    assert!(tls.client_auth_cert_resolver.has_certs());
}

#[test]
fn a_file_keeps_its_keys_and_defaults_and_goes_through_the_builder() {
    let o = read("").unwrap();
    assert_eq!(
        (o.coalesce(), o.max_retries(), o.timeout(), o.server_name()),
        (16, 2, Duration::from_secs(5), "localhost")
    );
    assert!(
        matches!(&o.ca, Origin::File(p) if p.is_absolute()),
        "relative paths resolve against the file: {o:?}"
    );
    let o = read("server_name = \"signer\"\ntimeout = \"750ms\"\nmax_retries = 7").unwrap();
    assert_eq!(
        (o.server_name(), o.timeout(), o.max_retries()),
        ("signer", Duration::from_millis(750), 7)
    );
    assert_eq!(
        read("timeout = \"1m 30s\"").unwrap().timeout(),
        Duration::from_secs(90)
    );
    assert_eq!(read("coalesce = 16").unwrap().coalesce(), 16);
    assert_eq!(read("coalesce = 1024").unwrap().coalesce(), 1024);
    for bad in ["coalesce = 0", "coalesce = 1025", "timeout = \"0s\""] {
        let (_dir, path) = file(bad, 0o600);
        let e = ClientOptions::from_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config: {}: ", path.display())),
            "{bad}: {e}"
        );
        assert!(e.contains("must be"), "{bad}: {e}");
    }
    let e = read("colaesce = 2").unwrap_err().to_string();
    assert!(e.contains("unknown field `colaesce`"), "{e}");

    // A builder from a file can be changed before it is built.
    let (_dir, path) = file("coalesce = 4", 0o600);
    let o = ClientOptionsBuilder::from_file(&path)
        .unwrap()
        .max_retries(0)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!((o.coalesce(), o.max_retries()), (4, 0));

    #[cfg(unix)]
    {
        let (_dir, path) = file("", 0o640);
        let e = ClientOptions::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("mode 640") && e.contains("chmod 600"), "{e}");
    }
}

#[test]
fn a_file_timeout_needs_its_unit_and_the_old_key_names_the_new_one() {
    // A unit humantime does not know, or none: refused, the line quoted with its key.
    for (line, why) in [
        ("timeout = \"5 parsecs\"", "unknown time unit \"parsecs\""),
        ("timeout = \"5\"", "time unit needed"),
        ("timeout = 5000", "5000 has no unit"),
    ] {
        let (_dir, path) = file(line, 0o600);
        let e = ClientOptions::from_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config: {}: ", path.display())),
            "{line}: {e}"
        );
        assert!(e.contains(line), "{line}: {e}");
        assert!(e.contains(why), "{line}: {e}");
        assert!(e.contains("a duration with its unit"), "{line}: {e}");
    }
    // The old key is refused by name, with its replacement and the same value.
    let (_dir, path) = file("timeout_ms = 750", 0o600);
    let e = ClientOptions::from_file(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "config: {}: `timeout_ms` is now `timeout = \"750ms\"` (a duration with its unit)",
            path.display()
        )
    );
    let e = read("timeout_ms = \"5s\"").unwrap_err().to_string();
    assert!(
        e.contains("`timeout_ms` is now `timeout` (a duration with its unit"),
        "{e}"
    );
}
