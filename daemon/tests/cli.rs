//! The `cachet` command line (`cachet::cli`, the code behind the binary)
//! against a real daemon, and `cachetd check` / `repair`.

mod support;

use std::process::Command;

use support::Daemon;

fn cachet(d: &Daemon, args: &[&str]) -> (i32, String) {
    let argv = ["cachet", "--server", d.addr.as_str()].iter().chain(args).map(|s| s.to_string()).collect::<Vec<_>>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut out = Vec::new();
    let code = match rt.block_on(cachet::cli::run(argv, &mut out)) {
        Ok(code) => code as i32,
        Err(_) => 2,
    };
    (code, String::from_utf8_lossy(&out).trim().to_string())
}

#[test]
fn help_and_version_succeed() {
    let d = Daemon::start(&[]);
    let (code, help) = cachet(&d, &["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Usage"), "{help}");
    let (code, version) = cachet(&d, &["--version"]);
    assert_eq!(code, 0);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
}

#[test]
fn set_get_incr_and_friends() {
    let d = Daemon::start(&[]);
    assert_eq!(cachet(&d, &["set", "n", "5"]).0, 0);
    assert_eq!(cachet(&d, &["incr", "n"]), (0, "6".into()));
    assert_eq!(cachet(&d, &["decr", "n", "10"]), (0, "-4".into()));
    assert_eq!(cachet(&d, &["set", "s", "hello world", "--timeout", "never"]).0, 0);
    assert_eq!(cachet(&d, &["get", "s"]), (0, "hello world".into()));
    assert_eq!(cachet(&d, &["add", "s", "x"]), (0, "false".into()));
    assert_eq!(cachet(&d, &["has", "s"]), (0, "true".into()));
    assert_eq!(cachet(&d, &["touch", "s", "--timeout", "60"]), (0, "true".into()));
    assert_eq!(cachet(&d, &["delete", "s"]), (0, "true".into()));
    assert_eq!(cachet(&d, &["get", "s"]).0, 1);
    let (code, stats) = cachet(&d, &["stats"]);
    assert_eq!(code, 0);
    assert!(stats.contains("entries 1"), "{stats}");
    assert_eq!(cachet(&d, &["clear"]).0, 0);
    assert_eq!(cachet(&d, &["get", "n"]).0, 1);
    let (code, _) = cachet(&d, &["set", "k", "v", "--timeout", "soon"]);
    assert_eq!(code, 2);
    // A number too large for a timeout is an error, not a panic.
    assert_eq!(cachet(&d, &["set", "k", "v", "--timeout", "1e30"]).0, 2);
    // Negative deltas.
    assert_eq!(cachet(&d, &["set", "m", "5"]).0, 0);
    assert_eq!(cachet(&d, &["incr", "m", "-3"]), (0, "2".into()));
    assert_eq!(cachet(&d, &["decr", "m", "-3"]), (0, "5".into()));
}

#[test]
fn check_and_repair_subcommands() {
    let mut d = Daemon::start(&[]);
    let dir = d.dir.clone();
    assert_eq!(cachet(&d, &["set", "a", "1"]).0, 0);
    assert_eq!(cachet(&d, &["set", "b", "2"]).0, 0);
    assert_eq!(cachet(&d, &["set", "c", "3"]).0, 0);
    assert!(d.stop());
    let out = Command::new(support::bin()).arg("check").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sound"));

    // Damage the first record: the daemon refuses to start and names the fix.
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with(".log"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let out =
        Command::new(support::bin()).arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cachetd repair") && err.contains("offset 32"), "{err}");
    assert!(!Command::new(support::bin()).arg("check").arg(&dir).output().unwrap().status.success());
    let out = Command::new(support::bin()).arg("repair").arg(&dir).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("backup:"));
    assert!(Command::new(support::bin()).arg("check").arg(&dir).output().unwrap().status.success());
    d.start_again();
    assert_eq!(cachet(&d, &["get", "a"]).0, 1, "everything after the bad record was cut");
    assert_eq!(cachet(&d, &["set", "z", "26"]).0, 0);
    assert!(d.stop());

    // A garbled MANIFEST: check and the daemon refuse and name the fix,
    // which rebuilds it; nothing is lost.
    std::fs::write(dir.join("MANIFEST"), b"floor 9x").unwrap();
    let out = Command::new(support::bin()).arg("check").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cachetd repair"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(support::bin()).arg("repair").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt the MANIFEST"));
    assert!(Command::new(support::bin()).arg("check").arg(&dir).output().unwrap().status.success());
    d.start_again();
    assert_eq!(cachet(&d, &["get", "z"]).1.trim(), "26");
}

#[test]
fn a_start_up_error_is_printed_once_without_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin())
        .args(["--max-connections", "0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("max_connections").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
    // A daemon's log lines in a pipe carry no colour codes either.
    let out = Command::new(support::bin())
        .args(["check"])
        .arg(tmp.path().join("nothing-here"))
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'), "{:?}", String::from_utf8_lossy(&out.stderr));
}
