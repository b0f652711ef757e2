//! `signerd init --dev DIR`: a self-contained SoftHSM2 set-up in DIR (its own softhsm2.conf and
//! token directory, initialized tokens, PIN files, the trusted key-encryption key in every token,
//! and a config the engine loads). Touches nothing outside DIR; safe to run again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptoki::object::{Attribute, KeyType as CkKeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::hsm::module::set_module_env;
use crate::hsm::raw::{RawCalls, TemplateAttribute};
use crate::hsm::{find_softhsm2, objects, HsmError, Module};
use crate::secret::Pin;

/// Token label prefix of dev partitions: `signerd-0`, `signerd-1`, ...
pub const DEV_LABEL_PREFIX: &str = "signerd-";

/// What `init --dev` produced.
#[derive(Debug)]
pub struct DevSetup {
    /// The directory (absolute).
    pub dir: PathBuf,
    /// The engine config.
    pub config: PathBuf,
    /// The module's config file, to export as [`DevSetup::conf_var`] for other tools.
    pub softhsm2_conf: PathBuf,
    /// The environment variable that names it (`SOFTHSM2_CONF`, `KRYOPTIC_CONF`).
    pub conf_var: &'static str,
    /// The module used.
    pub module: PathBuf,
    /// Token labels, one per partition.
    pub tokens: Vec<String>,
    /// Tokens initialized by this run (the others existed).
    pub created: Vec<String>,
    /// Whether the config file was written by this run (it is never overwritten).
    pub wrote_config: bool,
}

/// Why `init --dev` failed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// SoftHSM2 is not installed.
    #[error(
        "the SoftHSM2 PKCS#11 module was not found (looked in /usr/lib/softhsm and other usual \
         places; set SIGNERD_SOFTHSM2_MODULE to its path). Install it: \
         `sudo apt-get install softhsm2` (Debian/Ubuntu), `sudo dnf install softhsm` (Fedora), \
         `brew install softhsm` (macOS)"
    )]
    NoSoftHsm,
    /// A file operation failed.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The HSM failed.
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The directory is in a state we cannot complete safely.
    #[error("{0}")]
    Inconsistent(String),
}

/// Default QUIC port of a dev set-up.
pub const DEV_PORT: u16 = 7443;
/// Default admin HTTP port of a dev set-up.
pub const DEV_ADMIN_PORT: u16 = 7444;

/// Where a dev set-up listens (all on 127.0.0.1; 0 = any free port, for tests).
#[derive(Clone, Copy, Debug)]
pub struct DevPorts {
    /// QUIC (UDP).
    pub quic: u16,
    /// Admin HTTP (TCP).
    pub admin: u16,
}

impl Default for DevPorts {
    fn default() -> Self {
        DevPorts {
            quic: DEV_PORT,
            admin: DEV_ADMIN_PORT,
        }
    }
}

/// Which soft token a dev set-up provisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevHsm {
    /// SoftHSM2, found in the usual places (or at `SIGNERD_SOFTHSM2_MODULE`).
    SoftHsm2,
    /// kryoptic, from this module (`scripts/kryoptic` builds it): one sqlite file per token.
    Kryoptic(PathBuf),
}

impl DevHsm {
    /// The provider name in the written config.
    fn provider(&self) -> &'static str {
        match self {
            DevHsm::SoftHsm2 => "softhsm",
            DevHsm::Kryoptic(_) => "kryoptic",
        }
    }

    /// Whether the module can hold a trusted key-encryption key (`CKA_TRUSTED`, the wrap and
    /// unwrap templates), which replication needs. kryoptic 1.1.0 refuses `CKA_TRUSTED`
    /// (CKR_ATTRIBUTE_TYPE_INVALID): its dev set-up has no KEK and does not replicate.
    fn trusted_wrapping(&self) -> bool {
        matches!(self, DevHsm::SoftHsm2)
    }

    /// The environment variable that names the module's config file.
    fn conf_var(&self) -> &'static str {
        match self {
            DevHsm::SoftHsm2 => "SOFTHSM2_CONF",
            DevHsm::Kryoptic(_) => "KRYOPTIC_CONF",
        }
    }

    /// The config file's name in the dev directory and its contents.
    fn conf(&self, tokens_dir: &Path, partitions: usize) -> (&'static str, String) {
        match self {
            DevHsm::SoftHsm2 => (
                "softhsm2.conf",
                format!(
                    "# SoftHSM2 configuration for this signerd dev set-up (written by signerd init \
                     --dev)\ndirectories.tokendir = {}\nobjectstore.backend = file\n\
                     log.level = ERROR\nslots.removable = false\n",
                    tokens_dir.display()
                ),
            ),
            DevHsm::Kryoptic(_) => {
                let mut text = String::from(
                    "# kryoptic configuration for this signerd dev set-up (written by signerd init \
                     --dev): one sqlite token per slot\n",
                );
                for i in 0..partitions {
                    text.push_str(&format!(
                        "\n[[slots]]\nslot = {}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                        i + 1,
                        tokens_dir.join(format!("p{i}.sql")).display()
                    ));
                }
                ("kryoptic.conf", text)
            }
        }
    }
}

/// [`init_dev_on`] with SoftHSM2.
pub fn init_dev(dir: &Path, partitions: usize, ports: DevPorts) -> Result<DevSetup, DevError> {
    init_dev_on(dir, partitions, ports, &DevHsm::SoftHsm2)
}

/// Creates (or completes) a dev set-up with `partitions` tokens in `dir`, serving on
/// 127.0.0.1 on `ports` (`DIR/signerd.toml`, `DIR/client.toml` for the admin identity,
/// `DIR/client-app.toml` for an ordinary one, dev PKI in `DIR/tls`).
///
/// SoftHSM2 reads `SOFTHSM2_CONF` once per process, so a process can use one dev directory only.
/// It is set here (see [`set_module_env`]): call this before the process starts any thread, or
/// start the process with `SOFTHSM2_CONF` already pointing at `DIR/softhsm2.conf`.
pub fn init_dev_on(
    dir: &Path,
    partitions: usize,
    ports: DevPorts,
    hsm: &DevHsm,
) -> Result<DevSetup, DevError> {
    let module_path = match hsm {
        DevHsm::SoftHsm2 => find_softhsm2().ok_or(DevError::NoSoftHsm)?,
        DevHsm::Kryoptic(path) => path.canonicalize().map_err(|e| {
            DevError::Inconsistent(format!("kryoptic module {}: {e}", path.display()))
        })?,
    };
    if partitions == 0 || partitions > 16 {
        return Err(DevError::Inconsistent(
            "--partitions must be between 1 and 16".into(),
        ));
    }
    mkdir_private(dir)?;
    let dir = dir.canonicalize().map_err(|e| io(dir, e))?;
    let tokens_dir = dir.join("tokens");
    let pins_dir = dir.join("pins");
    mkdir_private(&tokens_dir)?;
    mkdir_private(&pins_dir)?;
    let (conf_name, conf_text) = hsm.conf(&tokens_dir, partitions);
    let conf = dir.join(conf_name);
    write_file(&conf, &conf_text, 0o644)?;
    let env = BTreeMap::from([(hsm.conf_var().to_owned(), conf.display().to_string())]);
    // The module reads its config at C_Initialize: put it into the environment first, which
    // needs a process with one thread (`signerd init --dev` starts none before this) unless it
    // is already set to this directory's file.
    set_module_env(&env).map_err(DevError::Inconsistent)?;
    let module = Module::load(&module_path, &env)?;

    let mut tokens = Vec::new();
    let mut created = Vec::new();
    let mut slots = Vec::new();
    for i in 0..partitions {
        let label = format!("{DEV_LABEL_PREFIX}{i}");
        let user_pin = pin_file(&pins_dir.join(format!("p{i}.pin")))?;
        let so_pin = pin_file(&pins_dir.join(format!("so-{i}.pin")))?;
        let slot = match find_label(&module, &label)? {
            Some(slot) => slot,
            None => {
                let slot = init_token(&module, &label, &so_pin, &user_pin)?;
                created.push(label.clone());
                slot
            }
        };
        slots.push((slot, label.clone(), so_pin));
        tokens.push(label);
    }
    if hsm.trusted_wrapping() {
        establish_kek(&module, &slots)?;
    }
    crate::tls::generate_dev_pki(&dir.join("tls"))
        .map_err(|e| DevError::Inconsistent(e.to_string()))?;

    let config = dir.join("signerd.toml");
    let wrote_config = !config.exists();
    if wrote_config {
        write_file(
            &config,
            &dev_config(hsm, &module_path, &conf, partitions, ports),
            0o644,
        )?;
    }
    for (file, who) in [("client.toml", "admin"), ("client-app.toml", "app")] {
        let path = dir.join(file);
        if !path.exists() {
            write_file(&path, &client_config(ports.quic, who), 0o644)?;
        }
    }
    Ok(DevSetup {
        dir,
        config,
        softhsm2_conf: conf,
        conf_var: hsm.conf_var(),
        module: module_path,
        tokens,
        created,
        wrote_config,
    })
}

/// What a key unwrapped under the KEK must be (`CKA_UNWRAP_TEMPLATE`): a private key, private,
/// sensitive and non-extractable, only ever wrappable under a trusted key again, and good for
/// nothing but signing (DECRYPT, DERIVE, UNWRAP false). [`objects::unwrap_copy`]'s template
/// says the same: the token refuses an unwrap whose template contradicts this one (or, as
/// SoftHSM2 does, lacks one of its attributes) with `CKR_TEMPLATE_INCONSISTENT`.
pub fn kek_unwrap_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::WrapWithTrusted(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
    ]
}

/// What the KEK may wrap (`CKA_WRAP_TEMPLATE`): only sensitive private keys marked
/// `CKA_WRAP_WITH_TRUSTED`, as [`objects::generate`] makes them for replication (and still
/// extractable: PKCS#11 wraps nothing else). Not secret keys, not the KEK itself.
pub fn kek_wrap_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
    ]
}

/// The one-time key-encryption-key ceremony: the same AES-256 key, imported by the SO into every
/// token as a trusted, sensitive, non-extractable wrap/unwrap key with a wrap template and an
/// unwrap template ([`kek_wrap_template`], [`kek_unwrap_template`]; made through
/// [`crate::hsm::raw`], as cryptoki has no attribute for them). Signing keys marked
/// `CKA_WRAP_WITH_TRUSTED` can be wrapped only under it. The key value is random, exists in this
/// process only while it is imported, and is zeroized right after.
fn establish_kek(module: &Arc<Module>, slots: &[(Slot, String, Pin)]) -> Result<(), DevError> {
    let ctx = module.ctx();
    let mut missing = Vec::new();
    for (slot, label, _) in slots {
        let s = ctx.open_ro_session(*slot).map_err(HsmError::from)?;
        if objects::find_kek(&s)?.is_none() {
            missing.push(label.clone());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if missing.len() != slots.len() {
        return Err(DevError::Inconsistent(format!(
            "tokens {missing:?} lack the key-encryption key that the other tokens hold; it cannot \
             be recreated (it is non-extractable). Remove the dev directory and run init again."
        )));
    }
    let raw = RawCalls::open(module)?;
    let (wrap, unwrap) = (kek_wrap_template(), kek_unwrap_template());
    let first = ctx.open_rw_session(slots[0].0).map_err(HsmError::from)?;
    let mut value = Zeroizing::new(vec![0u8; 32]);
    first
        .generate_random_slice(&mut value)
        .map_err(HsmError::from)?;
    drop(first);
    for (slot, _, so_pin) in slots {
        let s = ctx.open_rw_session(*slot).map_err(HsmError::from)?;
        s.login(UserType::So, Some(&so_pin.auth_pin()))
            .map_err(HsmError::from)?;
        let mut template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(CkKeyType::AES),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Trusted(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Label(objects::KEK_LABEL.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
        ];
        let created = raw.create_object(
            &s,
            &template,
            &[
                (TemplateAttribute::Wrap, &wrap),
                (TemplateAttribute::Unwrap, &unwrap),
            ],
        );
        let _ = s.logout();
        for a in &mut template {
            if let Attribute::Value(v) = a {
                v.zeroize();
            }
        }
        created?;
    }
    Ok(())
}

/// Whether the token in `slot` is initialized, and its label: read raw (hsm/raw.rs), as
/// discovery does, so a module whose `CK_TOKEN_INFO` cryptoki cannot parse (kryoptic's
/// all-zero `utcTime`) works here too.
fn token_state(raw: &RawCalls, slot: Slot) -> Result<(bool, String), DevError> {
    let info = raw.token_info(slot)?;
    Ok((info.initialized(), info.label))
}

fn find_label(module: &Module, label: &str) -> Result<Option<Slot>, DevError> {
    let raw = RawCalls::open(module)?;
    for slot in module
        .ctx()
        .get_slots_with_token()
        .map_err(HsmError::from)?
    {
        let (initialized, found) = token_state(&raw, slot)?;
        if initialized && found == label {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

fn init_token(
    module: &Module,
    label: &str,
    so_pin: &Pin,
    user_pin: &Pin,
) -> Result<Slot, DevError> {
    let ctx = module.ctx();
    let raw = RawCalls::open(module)?;
    let mut free = None;
    for slot in ctx.get_slots_with_token().map_err(HsmError::from)? {
        if !token_state(&raw, slot)?.0 {
            free = Some(slot);
            break;
        }
    }
    let slot = free.ok_or_else(|| {
        DevError::Inconsistent("the module offers no free slot for a new token".into())
    })?;
    ctx.init_token(slot, &so_pin.auth_pin(), label)
        .map_err(HsmError::from)?;
    // SoftHSM2 may renumber slots after initialization: find the token again by label.
    let slot = find_label(module, label)?
        .ok_or_else(|| DevError::Inconsistent(format!("token {label} vanished after init")))?;
    let s = ctx.open_rw_session(slot).map_err(HsmError::from)?;
    s.login(UserType::So, Some(&so_pin.auth_pin()))
        .map_err(HsmError::from)?;
    s.init_pin(&user_pin.auth_pin()).map_err(HsmError::from)?;
    let _ = s.logout();
    Ok(slot)
}

/// Reads a PIN file, or creates it with a random PIN (mode 0600).
fn pin_file(path: &Path) -> Result<Pin, DevError> {
    if path.exists() {
        return Pin::load(&crate::secret::PinSource::File(path.to_owned()))
            .map_err(|e| DevError::Inconsistent(format!("{e}")));
    }
    let mut raw = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let pin = Pin::new(raw.iter().map(|b| format!("{:02x}", b)).collect());
    write_file(path, &format!("{}\n", pin.expose()), 0o600)?;
    Ok(pin)
}

fn client_config(port: u16, who: &str) -> String {
    format!(
        "# signerd client configuration ({who} identity; written by signerd init --dev).\n\
         endpoints = [\"127.0.0.1:{port}\"]\n\
         server_name = \"localhost\"\n\
         ca = \"tls/ca.pem\"\n\
         cert = \"tls/client-{who}.pem\"\n\
         key = \"tls/client-{who}.key\"\n\
         # Per-call timeout (sent as the request deadline; a duration with its unit) and retries\n\
         # of retryable answers.\n\
         timeout = \"5s\"\n\
         max_retries = 2\n"
    )
}

fn dev_config(
    hsm: &DevHsm,
    module: &Path,
    conf: &Path,
    partitions: usize,
    ports: DevPorts,
) -> String {
    let DevPorts { quic, admin } = ports;
    let (provider, var) = (hsm.provider(), hsm.conf_var());
    let copies = if hsm.trusted_wrapping() {
        "# Sign with a session-object copy of each key (faster on SoftHSM2).\n\
         session_key_copy = true\n\
         # Copy new keys to every partition, wrapped under the trusted KEK.\n\
         replicate = true\n"
    } else {
        "# Sign with the token object itself.\n\
         session_key_copy = false\n\
         # This module has no trusted key-encryption key (no CKA_TRUSTED): keys stay in the\n\
         # partition they are created in.\n\
         replicate = false\n"
    };
    let mut s = format!(
        "# signerd configuration for a local soft-token dev set-up (written by signerd init --dev).\n\
         # Relative paths are relative to this file's directory.\n\n\
         [server]\n\
         # QUIC listen address (UDP).\n\
         listen = \"127.0.0.1:{quic}\"\n\
         cert = \"tls/server.pem\"\n\
         key = \"tls/server.key\"\n\
         # Client certificates must chain to this CA; the identity is their one SAN URI.\n\
         client_ca = \"tls/ca.pem\"\n\
         identity = \"san-uri\"\n\
         # Identities allowed to create, rotate, retire and destroy keys.\n\
         admins = [\"signerd://dev/admin\"]\n\n\
         [admin]\n\
         # Admin HTTP listener: /metrics (Prometheus), /livez, /readyz. Keep it on loopback.\n\
         listen = \"127.0.0.1:{admin}\"\n\n\
         [audit]\n\
         # Hash-chained audit log (docs/AUDIT.md); rotated files sit next to it.\n\
         path = \"audit/audit.log\"\n\
         rotate_mib = 256\n\
         # Warn (log, /readyz, signer_audit_disk_low) below this much free space; 0 never warns.\n\
         min_free_mib = 4096\n\
         # A checkpoint signed in the HSM every N records or after T (durations have their unit).\n\
         checkpoint_records = 10000\n\
         checkpoint_interval = \"1s\"\n\
         # ECDSA P-256 HSM key that signs checkpoints (created at first start; not usable by clients).\n\
         key = \"signerd-audit\"\n\n\
         [engine]\n\
         # Capacity of each worker's queue; a full queue answers OVERLOADED.\n\
         queue_depth = {}\n\
         # Most requests a worker takes per wake-up.\n\
         max_drain = {}\n\
         # Requests predicted to wait longer than this in an overloaded queue are answered OVERLOADED\n\
         # at once; burst_queue_wait is the limit while the queue keeps up.\n\
         max_queue_wait = \"{}\"\n\
         burst_queue_wait = \"{}\"\n\n\
         [providers.{provider}]\n\
         module = \"{}\"\n\
         env = {{ {var} = \"{}\" }}\n\
         {copies}",
        crate::config::DEFAULT_QUEUE_DEPTH,
        crate::config::DEFAULT_MAX_DRAIN,
        crate::config::duration::format(crate::config::DEFAULT_MAX_QUEUE_WAIT),
        crate::config::duration::format(crate::config::DEFAULT_BURST_QUEUE_WAIT),
        module.display(),
        conf.display()
    );
    for i in 0..partitions {
        s.push_str(&format!(
            "\n[[providers.{provider}.partitions]]\nname = \"p{i}\"\nlabel = \"{DEV_LABEL_PREFIX}{i}\"\n\
             pin_file = \"pins/p{i}.pin\"\n"
        ));
    }
    s
}

fn mkdir_private(dir: &Path) -> Result<(), DevError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), DevError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(|e| io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> DevError {
    DevError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}
