//! The `cachet` command line (`cachet::cli`, the code behind the binary)
//! against a real daemon, and `cachetd check` / `repair`.

mod support;

use std::process::Command;

use support::Daemon;

fn cachet(d: &Daemon, args: &[&str]) -> (i32, String) {
    let (code, out, _) = cachet_with(d, args, b"");
    (code, String::from_utf8_lossy(&out).trim().to_string())
}

/// Runs the command line in-process with `stdin`; returns the exit code,
/// the bytes written, and the error message (exit code 2).
fn cachet_with(d: &Daemon, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let argv = ["cachet", "--server", d.addr.as_str()].iter().chain(args).map(|s| s.to_string()).collect::<Vec<_>>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut out = Vec::new();
    let mut input = stdin;
    match rt.block_on(cachet::cli::run(argv, &mut input, &mut out)) {
        Ok(code) => (code as i32, out, String::new()),
        Err(msg) => (2, out, msg),
    }
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
fn values_from_stdin_raw_bytes_and_durations() {
    let d = Daemon::start(&[]);
    // "-" reads stdin; one trailing newline goes, so a number stays a number.
    assert_eq!(cachet_with(&d, &["set", "n", "-"], b"41\n").0, 0);
    assert_eq!(cachet(&d, &["incr", "n"]), (0, "42".into()));
    // Larger than any argument list may be.
    let big = "x".repeat(300 << 10);
    assert_eq!(cachet_with(&d, &["set", "big", "-"], big.as_bytes()).0, 0);
    assert_eq!(cachet(&d, &["get", "big"]).1.len(), big.len());
    // --raw: bytes in, the same bytes out, no newline added or taken.
    let bytes: Vec<u8> = (0..=255u8).chain([b'\n']).collect();
    assert_eq!(cachet_with(&d, &["--raw", "set", "bin", "-"], &bytes).0, 0);
    assert_eq!(cachet_with(&d, &["get", "bin", "--raw"], b"").1, bytes);
    assert_eq!(cachet_with(&d, &["--raw", "incr", "n"], b"").0, 2, "--raw is for get and set");
    // Durations: seconds, 5m, 1h30m; "never"; nonsense is an error naming the forms.
    assert_eq!(cachet(&d, &["set", "k", "v", "--timeout", "5m"]).0, 0);
    let left: f64 = cachet(&d, &["ttl", "k"]).1.parse().unwrap();
    assert!(left > 290.0 && left <= 300.0, "{left}");
    assert_eq!(cachet(&d, &["touch", "k", "--timeout", "1h30m"]), (0, "true".into()));
    let left: f64 = cachet(&d, &["ttl", "k"]).1.parse().unwrap();
    assert!(left > 5390.0 && left <= 5400.0, "{left}");
    assert_eq!(cachet(&d, &["touch", "k", "--timeout", "never"]).0, 0);
    assert_eq!(cachet(&d, &["ttl", "k"]), (0, "never".into()));
    assert_eq!(cachet(&d, &["ttl", "missing"]).0, 1);
    let (code, _, msg) = cachet_with(&d, &["set", "k", "v", "--timeout", "5 fortnights"], b"");
    assert_eq!(code, 2);
    assert!(msg.contains("5m") && msg.contains("seconds"), "{msg}");
    // "--" ends the options: a key may start with a dash.
    assert_eq!(cachet(&d, &["set", "--", "-k", "-5"]).0, 0);
    assert_eq!(cachet(&d, &["get", "--", "-k"]), (0, "-5".into()));
}

#[test]
fn prefix_and_version_address_an_applications_keys() {
    let d = Daemon::start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let app = cachet::Cache::builder().server(&d.addr).key_prefix("shop").version(3).connect().await.unwrap();
        app.set("cart", "three items").await.unwrap();
    });
    assert_eq!(cachet(&d, &["get", "cart"]).0, 1, "not under the default :1:");
    assert_eq!(cachet(&d, &["--prefix", "shop", "--version", "3", "get", "cart"]), (0, "three items".into()));
    assert_eq!(cachet(&d, &["get", "cart", "--prefix", "shop", "--version", "3"]), (0, "three items".into()));
    assert_eq!(cachet(&d, &["--prefix", "shop", "--version", "3", "set", "seen", "1"]).0, 0);
    let seen: Option<i64> = rt.block_on(async {
        let app = cachet::Cache::builder().server(&d.addr).key_prefix("shop").version(3).connect().await.unwrap();
        app.get("seen").await.unwrap()
    });
    assert_eq!(seen, Some(1));
    // --version alone (with a command) is a mistake that is explained.
    let (code, _, msg) = cachet_with(&d, &["get", "cart", "--version"], b"");
    assert_eq!(code, 2);
    assert!(msg.contains("--version 2 get KEY"), "{msg}");
}

#[test]
fn ping_info_and_stats_as_json_or_watched() {
    let d = Daemon::start(&[]);
    let (code, pong) = cachet(&d, &["ping"]);
    assert_eq!(code, 0);
    assert!(pong.starts_with("PONG "), "{pong}");
    let (code, info) = cachet(&d, &["info"]);
    assert_eq!(code, 0);
    assert!(info.contains(&format!("# server {}", d.addr)) && info.contains("max_value_bytes 16777216"), "{info}");
    assert!(info.contains("entries 0"), "{info}");
    assert_eq!(cachet(&d, &["set", "a", "1"]).0, 0);
    let (code, json) = cachet(&d, &["stats", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["total"]["entries"], 1, "{json}");
    assert_eq!(v["per_server"][&d.addr]["sets"], 1, "{json}");
    let (code, watched) = cachet(&d, &["stats", "--watch", "--interval", "0.05", "--count", "3"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = watched.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three lines: {watched}");
    assert!(lines[0].contains("entries") && lines[0].contains("ops/s"), "{watched}");
    assert!(lines[3].split_whitespace().next() == Some("1"), "{watched}");
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
fn a_busy_listen_address_fails_before_the_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(support::bin())
        .args(["--listen", &addr, "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("CACHET_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("binding {addr}")), "{err}");
    assert!(!err.contains("replay"), "the address is checked before the log is read: {err}");
    let out = Command::new(support::bin())
        .args(["--listen", "no-port-here", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give HOST:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
