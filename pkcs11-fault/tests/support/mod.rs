//! Fixtures: a private SoftHSM2 token directory per test process (SoftHSM2 reads SOFTHSM2_CONF
//! once, at C_Initialize), two tokens initialised *through the fault module* with an EC P-256
//! key pair each, and an independent software verifier (`p256`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use certnode_pkcs11_fault::{Control, Stats, MODULE_FILE};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};

pub const TOKENS: [&str; 2] = ["fault-0", "fault-1"];
pub const SO_PIN: &str = "12345678";
pub const USER_PIN: &str = "1234";
const KEY_LABEL: &str = "k";
/// DER OID of P-256 (prime256v1).
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One token of the fixture.
pub struct Token {
    pub label: &'static str,
    pub slot: Slot,
    pub key: ObjectHandle,
    /// Uncompressed SEC1 point of the public key.
    pub public: Vec<u8>,
}

/// The process's module, tokens and config file.
pub struct Hsm {
    pub ctx: Pkcs11,
    pub module: PathBuf,
    pub control: Control,
    pub dir: PathBuf,
    /// SIGNERD_FAULT_CONFIG, if the process has one.
    pub config: Option<PathBuf>,
    pub tokens: Vec<Token>,
    /// One logged-in session per token, kept open so the login (per token and process) lasts.
    _keepers: Mutex<Vec<Session>>,
}

/// The fault module built for this test run. Cargo builds the cdylib into target/<profile>/deps/
/// (next to this test binary) before running the tests, but copies it up to
/// target/<profile>/libcertnode_pkcs11_fault.so only on `cargo build`, so deps/ is the fresh one.
pub fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let deps = exe.parent().expect("deps dir");
    for dir in [Some(deps), deps.parent()].into_iter().flatten() {
        let path = dir.join(MODULE_FILE);
        if path.exists() {
            return path;
        }
    }
    panic!("{MODULE_FILE} not built next to {}", exe.display());
}

/// Creates the process's token directory and tokens. `config`: whether to set
/// SIGNERD_FAULT_CONFIG (to an empty file the tests then rewrite) or leave it unset.
/// Call once per process, before any other use of the module.
pub fn setup(name: &str, config: bool) -> Hsm {
    setup_with(name, config.then_some(""))
}

/// As [`setup`], with `config` (if any) the config file's text at the first `C_Initialize`.
pub fn setup_with(name: &str, config: Option<&str>) -> Hsm {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    remove_stale_dirs(&tmp, &format!("pkcs11-fault-{name}-"));
    let dir = tmp.join(format!("pkcs11-fault-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    // Set before the module is loaded, while this process has no other threads using the env.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::remove_var("SIGNERD_FAULT_TARGET");
    let config_path = if let Some(text) = config {
        let p = dir.join("fault.toml");
        std::fs::write(&p, text).unwrap();
        std::env::set_var("SIGNERD_FAULT_CONFIG", &p);
        Some(p)
    } else {
        std::env::remove_var("SIGNERD_FAULT_CONFIG");
        None
    };

    let module = module_path();
    let ctx = Pkcs11::new(&module).expect("load the fault module");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize through the fault module");
    let control = Control::open(&module).expect("control handle");

    let so_pin = AuthPin::from(SO_PIN.to_owned());
    let user_pin = AuthPin::from(USER_PIN.to_owned());
    let mut tokens = Vec::new();
    let mut keepers = Vec::new();
    for label in TOKENS {
        let blank = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| !ctx.get_token_info(*s).unwrap().token_initialized())
            .expect("an uninitialised SoftHSM2 slot");
        ctx.init_token(blank, &so_pin, label).unwrap();
        let slot = slot_of(&ctx, label).expect("the new token");
        {
            let so = ctx.open_rw_session(slot).unwrap();
            so.login(UserType::So, Some(&so_pin)).unwrap();
            so.init_pin(&user_pin).unwrap();
            so.logout().unwrap();
        }
        let session = ctx.open_rw_session(slot).unwrap();
        session.login(UserType::User, Some(&user_pin)).unwrap();
        let (public_h, key) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::EcParams(P256_OID.to_vec()),
                    Attribute::Label(KEY_LABEL.into()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Label(KEY_LABEL.into()),
                ],
            )
            .unwrap();
        let public = ec_point(&session, public_h);
        tokens.push(Token {
            label,
            slot,
            key,
            public,
        });
        keepers.push(session);
    }
    Hsm {
        ctx,
        module,
        control,
        dir,
        config: config_path,
        tokens,
        _keepers: Mutex::new(keepers),
    }
}

/// Removes token directories left by earlier test processes that are gone.
fn remove_stale_dirs(tmp: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The slot holding the token labelled `label`, among slots with a token present.
pub fn slot_of(ctx: &Pkcs11, label: &str) -> Option<Slot> {
    ctx.get_slots_with_token().unwrap().into_iter().find(|s| {
        ctx.get_token_info(*s)
            .map(|i| i.label().trim_end() == label)
            .unwrap_or(false)
    })
}

/// The uncompressed SEC1 point of an EC public key object.
fn ec_point(session: &Session, public: ObjectHandle) -> Vec<u8> {
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .unwrap();
    let Some(Attribute::EcPoint(der)) = attrs.into_iter().next() else {
        panic!("no CKA_EC_POINT");
    };
    // DER OCTET STRING (04 41) around the 65-byte point.
    assert_eq!(&der[..2], &[0x04, 0x41]);
    der[2..].to_vec()
}

impl Hsm {
    pub fn token(&self, label: &str) -> &Token {
        self.tokens.iter().find(|t| t.label == label).unwrap()
    }

    /// A new session on the token (logged in: the keeper session holds the login).
    pub fn session(&self, label: &str) -> Session {
        self.ctx.open_rw_session(self.token(label).slot).unwrap()
    }

    /// Signs SHA-256(msg) with the token's key (CKM_ECDSA) and, on success, checks the signature
    /// with `p256`.
    pub fn sign(&self, session: &Session, label: &str, msg: &[u8]) -> Result<Vec<u8>, Error> {
        let token = self.token(label);
        let digest = Sha256::digest(msg);
        let sig = session.sign(&Mechanism::Ecdsa, token.key, &digest)?;
        verify(&token.public, &digest, &sig);
        Ok(sig)
    }

    /// Rewrites the config file atomically and makes the module read it now; returns the new
    /// generation (asserting that the module took it).
    pub fn configure(&self, text: &str) -> u64 {
        let before = self.stats().generation;
        self.write_config(text);
        let after = self.control.reload().unwrap();
        assert!(
            after > before,
            "config not taken (generation {before} → {after}):\n{text}"
        );
        after
    }

    /// Rewrites the config file atomically (write a temporary file, rename), no reload.
    pub fn write_config(&self, text: &str) {
        let path = self
            .config
            .as_ref()
            .expect("this process has a config file");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Closes the sessions that hold the logins (before finalizing the module).
    pub fn close_sessions(&self) {
        self._keepers.lock().unwrap().clear();
    }

    pub fn stats(&self) -> Stats {
        self.control.stats().unwrap()
    }

    /// Waits until the module has taken a config newer than `generation` by itself (watcher).
    pub fn wait_generation_after(&self, generation: u64, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.stats().generation > generation {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "the module did not pick up the config within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Checks an ECDSA P-256 signature (r‖s) over a SHA-256 digest with the `p256` crate.
pub fn verify(public: &[u8], digest: &[u8], sig: &[u8]) {
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(public).expect("public key");
    let sig = p256::ecdsa::Signature::from_slice(sig).expect("64-byte signature");
    vk.verify_prehash(digest, &sig).expect("signature verifies");
}

/// The PKCS#11 return code of an error, if it is one.
pub fn rv(e: &Error) -> Option<RvError> {
    match e {
        Error::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Tests in one process share the module and its config file: one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Key objects labelled like the fixture's, found through the module.
pub fn find_keys(session: &Session) -> Vec<ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(KEY_LABEL.into()),
        ])
        .unwrap()
}
