//! The `cachet` binary itself, as a shell runs it: exit codes, one error
//! prefix, nothing on stderr unless asked, values through a pipe.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn cachet(addr: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("--server")
        .arg(addr)
        .args(args)
        .env_remove("CACHET_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version_exit_zero_on_stdout() {
    for args in [&["--help"][..], &["--version"], &["-V"], &["get", "--help"]] {
        let out = cachet("127.0.0.1:1", args, b"");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!out.stdout.is_empty() && out.stderr.is_empty(), "{args:?}");
    }
    let out = cachet("127.0.0.1:1", &["--help"], b"");
    assert!(text(&out.stdout).contains("CACHET_LOG"), "the log switch is documented");
}

#[test]
fn errors_have_one_prefix_and_exit_two() {
    let d = cachet::doctest::start();
    for args in [&["frobnicate"][..], &["set", "k", "v", "--timeout", "1e30"], &["incr", "missing"]] {
        let out = cachet(&d.addr, args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with("cachet: ") && !err.contains("error:"), "{args:?}: {err}");
    }
    let out = cachet(&d.addr, &["get", "missing"], b"");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn quiet_unless_asked() {
    let d = cachet::doctest::start();
    // A key memcached would refuse: the client warns, but only with CACHET_LOG.
    let out = cachet(&d.addr, &["set", "a key with spaces", "v"], b"");
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["--server", &d.addr, "get", "a key with spaces"])
        .env("CACHET_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "v");
    let err = text(&out.stderr);
    assert!(err.contains("memcached would refuse") && !err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn a_value_over_any_argument_list_through_a_pipe() {
    let d = cachet::doctest::start();
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let out = cachet(&d.addr, &["--raw", "set", "big", "-"], &big);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cachet(&d.addr, &["--raw", "get", "big"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == big, "{} bytes back for {}", out.stdout.len(), big.len());
}
