//! Fixtures: one SoftHSM2 dev set-up per test process (SoftHSM2 reads SOFTHSM2_CONF once per
//! process), created by our own `init --dev` code; independent software verifiers.

#[path = "../../../../../loadgen/src/verify.rs"]
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::session::{Session, UserType};
use signerd::config::Config;
use signerd::dev::{init_dev, DevSetup};
use signerd::hsm::Module;
use signerd::{Engine, KeyName, Payload, Scheme, SignRequest};

pub struct Fixture {
    pub setup: DevSetup,
    /// Partitions p0 and p1, shared by the tests.
    pub config: Config,
    /// Partition p2 only, for the one test that logs its token out (login state is per process
    /// and token, so doing that on a shared token would disturb the other tests).
    pub isolated: Config,
    /// Keeps the module initialized for the whole process, so engines come and go cheaply.
    pub module: Arc<Module>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The process's dev directory (under the canonical temporary directory, as `init_dev` names
/// it).
fn dev_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tmp.canonicalize().unwrap_or(tmp);
    tmp.join(format!("it-{}", std::process::id()))
}

/// SoftHSM2 reads `SOFTHSM2_CONF` at `C_Initialize`, and the environment may change only while
/// the process has one thread (`signerd::hsm::module::set_module_env`). libtest starts its
/// threads in `main` and runs every test on one of them, so the variable is set before `main`,
/// from the ELF constructor list (what the `ctor` crate does), to the file `init_dev` writes in
/// [`dev_dir`]: `init_dev` and the engines then find it set and change nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // `link_section`: a constructor, run before main on the only thread
#[used]
#[link_section = ".init_array"]
static SET_SOFTHSM2_CONF: extern "C" fn() = {
    extern "C" fn set_softhsm2_conf() {
        std::env::set_var("SOFTHSM2_CONF", dev_dir().join("softhsm2.conf"));
    }
    set_softhsm2_conf
};

/// The process's dev set-up: three tokens; most tests use two partitions (p0, p1).
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = dev_dir();
        let _ = std::fs::remove_dir_all(&dir);
        let setup = init_dev(&dir, 3, signerd::dev::DevPorts { quic: 0, admin: 0 })
            .expect("init --dev (is softhsm2 installed?)");
        let all = Config::load(&setup.config).expect("dev config loads");
        let only = |keep: &dyn Fn(&str) -> bool| {
            let mut c = all.clone();
            for p in c.providers.values_mut() {
                p.partitions.retain(|part| keep(&part.name));
            }
            c
        };
        let mut config = only(&|n| n != "p2");
        // Tests that count every request as signed must not be shed by admission control;
        // admission has its own test with a tight budget.
        config.engine.max_queue_wait = Duration::from_secs(600);
        let isolated = only(&|n| n == "p2");
        let p = &config.providers["softhsm"];
        let module = Module::load(&p.module, &p.env).expect("module loads");
        Fixture {
            setup,
            config,
            isolated,
            module,
        }
    })
}

/// A new engine over the shared tokens.
pub fn engine() -> Engine {
    Engine::open(&fixture().config).expect("engine opens")
}

/// A new engine with a tweaked config.
pub fn engine_with(tweak: impl FnOnce(&mut Config)) -> Engine {
    let mut cfg = fixture().config.clone();
    tweak(&mut cfg);
    Engine::open(&cfg).expect("engine opens")
}

/// A key name no other test in this process uses.
pub fn unique(prefix: &str) -> KeyName {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    KeyName::new(&format!("{prefix}-{}-{n}", std::process::id())).unwrap()
}

/// Random bytes of the scheme's digest length (or a message of `msg_len` for Ed25519).
pub fn random_payload(scheme: Scheme, msg_len: usize) -> Payload {
    let len = scheme.digest_len().unwrap_or(msg_len);
    let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    Payload::new(scheme, bytes.into()).unwrap()
}

pub fn request(key: &KeyName, payload: Payload) -> SignRequest {
    SignRequest {
        key: key.clone(),
        version: None,
        payload,
        deadline: Instant::now() + Duration::from_secs(30),
        identity: std::sync::Arc::from("test"),
    }
}

/// A logged-in raw session on a dev token, for checking what the engine left in the HSM.
pub fn raw_session(token_label: &str) -> Session {
    let f = fixture();
    let ctx = f.module.ctx();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token_label)
        .expect("token present");
    let session = ctx.open_rw_session(slot).unwrap();
    let idx: usize = token_label.rsplit('-').next().unwrap().parse().unwrap();
    let pin = std::fs::read_to_string(f.setup.dir.join(format!("pins/p{idx}.pin"))).unwrap();
    let pin = cryptoki::types::AuthPin::from(pin.trim().to_owned());
    match session.login(UserType::User, Some(&pin)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// Total `C_Sign` calls across partitions.
pub fn hsm_calls(engine: &Engine) -> u64 {
    engine.health().stats().iter().map(|s| s.hsm_calls).sum()
}
