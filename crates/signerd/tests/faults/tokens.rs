//! What other vendors' modules put in `CK_TOKEN_INFO` (issue 21, "Survive what vendor modules
//! do"), reproduced on SoftHSM2 by `token_info` and `error` rules of the fault module that are
//! in force from the daemon's start (token discovery runs there): a `utcTime` that is not digits
//! (kryoptic's) with nonsense versions and counters, a label padded with NULs, an empty serial
//! number, the PIN state flags `CKF_USER_PIN_LOCKED` and `CKF_USER_PIN_TO_BE_CHANGED`, and
//! `CKR_TOKEN_NOT_RECOGNIZED` from one slot. Each is tolerated (the daemon starts and signs) or
//! refused with a message that says what is wrong, names the partition once and lists every
//! token present once.

use std::time::Duration;

use crate::support::{random_digest, sign_ok, Daemon};

const EXIT_LIMIT: Duration = Duration::from_secs(20);

/// Starts the daemon (with the rules already written), creates a key on both partitions and
/// signs with it on each: every token was found and works.
async fn starts_and_signs(d: &mut Daemon) {
    d.serve().await;
    let (key, spki) = d.ec_key("tokens", &[]).await;
    let app = d.app(Duration::from_secs(20)).await;
    for _ in 0..4 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    app.close();
}

/// The one line of `stderr` that holds `needle` (the daemon's error; log lines are others).
fn line_with<'a>(stderr: &'a str, needle: &str) -> &'a str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "one line with {needle:?} in:\n{stderr}");
    eprintln!("the daemon said: {}", lines[0]);
    lines[0]
}

/// The partition is named once, never as "partition X: partition X:".
fn names_partition_once(line: &str, partition: &str) {
    let prefix = format!("partition {partition}:");
    assert_eq!(
        line.matches(&prefix).count(),
        1,
        "{prefix:?} once in: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_info_that_cryptoki_cannot_parse_is_tolerated() {
    let mut d = Daemon::init("tok-utc");
    // kryoptic's utcTime is not 16 digits; with CKF_CLOCK_ON_TOKEN set (the rule sets it),
    // cryptoki 0.12's get_token_info fails on it for every slot.
    d.write_faults(
        "[[rule]]\nname = \"odd-info\"\nkind = \"token_info\"\nutc_time = \"kryoptic-notime\"\n\
         garbage_numbers = true\n",
    );
    starts_and_signs(&mut d).await;
    let s = d.stats_now();
    assert!(
        s.rule("odd-info").expect("the rule").injected >= 2,
        "both tokens were read through the rule: {s:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_padded_with_nuls_is_found_by_label() {
    let mut d = Daemon::init("tok-nul");
    d.write_faults(
        "[[rule]]\nname = \"nul-label\"\nkind = \"token_info\"\nlabel_padding = \"nul\"\n",
    );
    starts_and_signs(&mut d).await;
    assert!(d.stats_now().rule("nul-label").unwrap().injected >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_serial_is_selected_by_label_and_named_when_selected_by_serial() {
    let mut d = Daemon::init("tok-serial");
    d.write_faults(
        "[[rule]]\nname = \"no-serial\"\nkind = \"token_info\"\ntoken = \"signerd-0\"\n\
         serial = \"\"\n",
    );
    // By serial: refused, saying that signerd-0 has no serial (not a bare "not found").
    d.edit_config(|cfg| {
        let parts = cfg["providers"]["softhsm"]["partitions"]
            .as_array_mut()
            .unwrap();
        let p0 = parts[0].as_table_mut().unwrap();
        p0.remove("label");
        p0.insert("serial".into(), "0123456789abcdef".into());
    });
    let (status, stderr) = tokio::task::block_in_place(|| d.serve_expecting_exit(EXIT_LIMIT));
    assert!(!status.success(), "{stderr}");
    let line = line_with(&stderr, "no token matches");
    names_partition_once(line, "p0");
    assert!(
        line.contains("token \"signerd-0\" has no serial number"),
        "says why: {line}"
    );
    assert_eq!(
        line.matches("\"signerd-0\"").count(),
        2,
        "listed once, and named once in the hint: {line}"
    );
    assert_eq!(
        line.matches("\"signerd-1\"").count(),
        1,
        "the other token, listed once: {line}"
    );
    assert!(line.contains("\"signerd-0\" (no serial)"), "{line}");

    // By label: found, and it signs.
    d.edit_config(|cfg| {
        let parts = cfg["providers"]["softhsm"]["partitions"]
            .as_array_mut()
            .unwrap();
        let p0 = parts[0].as_table_mut().unwrap();
        p0.remove("serial");
        p0.insert("label".into(), "signerd-0".into());
    });
    starts_and_signs(&mut d).await;
}

/// A token flag that makes the login pointless: the daemon exits with `64` (like a wrong PIN)
/// and a message naming the flag, without presenting the PIN to that token.
async fn refused_for_flag(name: &str, flag: &str) -> String {
    let d = Daemon::init(name);
    d.write_faults(&format!(
        "[[rule]]\nkind = \"token_info\"\ntoken = \"signerd-0\"\nset_flags = [\"{flag}\"]\n\
         [[rule]]\nname = \"login-p0\"\nkind = \"latency\"\nfunction = \"C_Login\"\n\
         token = \"signerd-0\"\nfixed_ms = 0\n"
    ));
    let (status, stderr) = tokio::task::block_in_place(|| d.serve_expecting_exit(EXIT_LIMIT));
    assert_eq!(status.code(), Some(64), "EX_USAGE; stderr:\n{stderr}");
    let line = line_with(&stderr, flag).to_owned();
    names_partition_once(&line, "p0");
    assert!(
        line.contains("token \"signerd-0\""),
        "names the token: {line}"
    );
    let s = d
        .stats_when("the daemon's C_Finalize", |s| s.finalizes == 1)
        .await;
    assert_eq!(
        s.rule("login-p0").unwrap().matched,
        0,
        "no C_Login on signerd-0: {s:#?}"
    );
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_user_pin_is_refused_before_any_login() {
    let line = refused_for_flag("tok-locked", "CKF_USER_PIN_LOCKED").await;
    assert!(
        line.contains("locked") && line.contains("security officer"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_pin_to_be_changed_is_refused_with_what_to_do() {
    let line = refused_for_flag("tok-change", "CKF_USER_PIN_TO_BE_CHANGED").await;
    assert!(
        line.contains("must be changed") && line.contains("C_SetPIN"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_whose_token_is_not_recognized_is_listed_and_the_others_are_matched() {
    let mut d = Daemon::init("tok-unrecognized");
    d.write_faults(
        "[[rule]]\nname = \"unrecognized\"\nkind = \"error\"\nfunction = \"C_GetTokenInfo\"\n\
         token = \"signerd-1\"\nrv = \"CKR_TOKEN_NOT_RECOGNIZED\"\n",
    );
    // p1 selects the token that cannot be read: its error lists that slot with the reason, and
    // the token that can be read, once.
    let (status, stderr) = tokio::task::block_in_place(|| d.serve_expecting_exit(EXIT_LIMIT));
    assert!(!status.success(), "{stderr}");
    let line = line_with(&stderr, "no token matches");
    names_partition_once(line, "p1");
    assert!(!line.contains("partition p0"), "{line}");
    assert!(
        line.contains("could not be read") && line.contains("TokenNotRecognized"),
        "lists the unreadable slot with the reason: {line}"
    );
    assert_eq!(line.matches("\"signerd-0\"").count(), 1, "{line}");

    // Without p1, p0 is found beside the unreadable slot, and signs.
    d.edit_config(|cfg| {
        cfg["providers"]["softhsm"]["partitions"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
    });
    d.serve().await;
    let (key, spki) = {
        let admin = d.admin().await;
        let name = crate::support::unique("tokens");
        admin
            .create_key(&name, signerd::KeyType::EcP256, vec![])
            .await
            .unwrap();
        let spki = admin.public_key(&name, None).await.unwrap().spki_der;
        admin.close();
        (name, spki.to_vec())
    };
    let app = d.app(Duration::from_secs(20)).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    app.close();
    assert!(
        d.log().contains("could not be read"),
        "the unreadable slot is logged: {}",
        d.log()
    );
}
