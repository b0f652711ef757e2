//! Fuzzes the audit log reader on a whole file: the bytes become the active log file in a
//! private temporary directory (under /dev/shm when it exists, so no disk I/O), then the
//! verifier (`audit::verify`, both `live` and not) and tail recovery (what `AuditLog::open`
//! does) read it. Neither may panic, whatever the bytes.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use signerd::audit::{fuzzing::recover_active, verify};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("signerd-fuzz-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("audit.log");
    std::fs::write(&path, data).expect("write the fuzz input");
    let _ = verify(&path, None, false);
    let _ = verify(&path, None, true);
    let _ = recover_active(&path);
});
