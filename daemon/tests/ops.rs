//! What an operator relies on: the Prometheus endpoint (checked by
//! promtool and scraped by a real Prometheus), SIGHUP reloads, and log
//! lines as JSON.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cachet::Cache;
use support::Daemon;

/// GET `path` from `addr` over HTTP/1.1; returns the status line and body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

fn metrics_addr(d: &Daemon) -> String {
    d.addrs
        .iter()
        .find_map(|a| a.strip_prefix("http://").and_then(|a| a.strip_suffix("/metrics")))
        .expect("the ready line names the metrics endpoint")
        .to_string()
}

/// The value of the first sample line that starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_both_front_ends_serve() {
    let d = Daemon::start_resp(&["--metrics-listen", "127.0.0.1:0"]);
    let m = metrics_addr(&d);
    let c = Cache::connect(&d.addrs[1]).await.unwrap();
    c.set("a", &1).await.unwrap();
    assert_eq!(c.get::<i32>("a").await.unwrap(), Some(1));
    assert_eq!(c.get::<i32>("nope").await.unwrap(), None);
    let mut r = redis::Client::open(format!("redis://{}", d.resp_addr())).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut r).unwrap();
    let _: Option<String> = redis::cmd("GET").arg("k").query(&mut r).unwrap();
    let (status, text) = http_get(&m, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(sample(&text, r#"cachet_operations_total{protocol="tarpc",op="set"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"cachet_operations_total{protocol="tarpc",op="get"}"#), Some(2.0), "{text}");
    assert_eq!(sample(&text, r#"cachet_operations_total{protocol="resp",op="get"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"cachet_connections{protocol="resp"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cachet_entries"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cachet_hits_total"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cachet_misses_total"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cachet_read_only"), Some(0.0));
    assert!(
        sample(&text, r#"cachet_request_duration_seconds_bucket{le="+Inf",protocol="tarpc",op="set"}"#).is_some()
            || text.contains(r#"cachet_request_duration_seconds_count{protocol="tarpc",op="set"} 1"#),
        "{text}"
    );
    assert!(text.contains("cachet_fsync_duration_seconds_bucket"), "{text}");
    assert!(text.contains("cachet_replay_duration_seconds"), "{text}");
    assert!(text.contains("# TYPE cachet_hits_total counter"), "classic text unless OpenMetrics is asked for");
    // The same counters as `cachet stats` and RESP INFO.
    let info: String = redis::cmd("INFO").arg("stats").query(&mut r).unwrap();
    assert!(info.contains("keyspace_hits:2"), "{info}");
    assert_eq!(c.stats().await.unwrap().hits, 2);
    let (status, _) = http_get(&m, "/elsewhere");
    assert!(status.contains("404"), "{status}");
}

#[test]
#[ignore = "needs promtool and prometheus (Debian's prometheus package); .ci/run installs them and runs this"]
fn promtool_accepts_the_exposition_and_prometheus_scrapes_it() {
    let d = Daemon::start(&["--metrics-listen", "127.0.0.1:0"]);
    let m = metrics_addr(&d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = Cache::connect(&d.addr).await.unwrap();
        for i in 0..7 {
            c.set(format!("k{i}"), &i).await.unwrap();
        }
    });
    let (_, text) = http_get(&m, "/metrics");
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it every second; its query API answers.
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cachet\n    static_configs:\n      - targets: [\"{m}\"]\n"
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Kill(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus)"),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let q = "/api/v1/query?query=cachet_entries";
            let _ = write!(s, "GET {q} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            last.clear();
            let _ = s.read_to_string(&mut last);
            if last.contains(r#""job":"cachet""#) && last.contains(r#","7"]"#) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("Prometheus never answered cachet_entries = 7; last answer: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_log_caps_and_token_and_never_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("cachetd.toml");
    let token_file = tmp.path().join("token");
    std::fs::write(&config, "max_entries = 1000\n").unwrap();
    // Without CACHET_LOG, so the file's `log` applies (flags and the
    // environment win over the file, at start and at a reload).
    let d = Daemon::start_custom(
        &tmp.path().join("data"),
        Some("127.0.0.1:0"),
        &["--config", config.to_str().unwrap()],
        |cmd| {
            cmd.env_remove("CACHET_LOG");
        },
    );
    let c = Cache::connect(&d.addr).await.unwrap();
    let items: Vec<(String, u32)> = (0..500).map(|i| (format!("k{i}"), i)).collect();
    assert!(c.set_many(items).timeout(cachet::Timeout::Never).await.unwrap().is_empty());
    assert_eq!(c.stats().await.unwrap().entries, 500);

    std::fs::write(&token_file, "a-token-of-at-least-16-chars\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "max_entries = 100\nlog = \"debug\"\nauth_token_file = \"{}\"\nsync = \"always\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    support::eventually(Duration::from_secs(30), "the reload is logged", || async {
        d.log_text().contains("reload: ")
    })
    .await;
    let log = d.log_text();
    assert!(log.contains("max_entries 1000 -> 100"), "{log}");
    assert!(log.contains(r#"log "info,tarpc=warn" -> "debug""#), "{log}");
    assert!(log.contains("auth token required from now on"), "{log}");
    assert!(log.contains("applied only at a restart: sync"), "{log}");
    // The open connection stays; the cap holds at once.
    assert!(c.stats().await.unwrap().entries <= 100);
    // New connections need the token.
    assert!(matches!(Cache::connect(&d.addr).await, Err(cachet::Error::Unauthorized)));
    let with = Cache::builder().server(&d.addr).auth_token("a-token-of-at-least-16-chars").connect().await.unwrap();
    with.set("after", &1).await.unwrap();

    // A configuration that does not resolve changes nothing and stops nothing.
    std::fs::write(&config, "max_entries = \"lots\"\n").unwrap();
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    support::eventually(Duration::from_secs(30), "the bad reload is logged", || async {
        d.log_text().contains("does not resolve")
    })
    .await;
    assert_eq!(with.get::<i32>("after").await.unwrap(), Some(1), "still serving");
}

#[test]
fn json_log_lines() {
    let d = Daemon::start(&["--log-format", "json"]);
    let ready = d.log_text().lines().find(|l| l.contains("ready: listening on")).unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap_or_else(|e| panic!("{e}: {ready}"));
    assert_eq!(v["level"], "INFO", "{ready}");
    assert!(v["message"].as_str().unwrap().starts_with("ready: listening on"), "{ready}");
    assert!(v["timestamp"].is_string(), "{ready}");
}

#[test]
fn help_names_every_environment_variable() {
    let out = std::process::Command::new(support::bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["CACHET_LOG", "CACHET_LOG_FORMAT", "CACHET_METRICS_LISTEN", "CACHET_SLOW_REQUEST_MS", "CACHET_LISTEN"] {
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_backup_restores_every_write_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "backup-token-0123456789").unwrap();
    let d = Daemon::start(&[
        "--segment-bytes",
        "65536",
        "--compact-min-bytes",
        "131072",
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    let c = Cache::builder().server(&d.addr).auth_token("backup-token-0123456789").connect().await.unwrap();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.set(format!("k{i}"), &i).timeout(cachet::Timeout::Never).await.unwrap();
                // Overwrites, so the log outgrows its live data and compacts.
                c.set(format!("hot{}", i % 8), &vec![7u8; 300]).await.unwrap();
                i += 1;
                acked.store(i, std::sync::atomic::Ordering::Release);
            }
        })
    };
    support::eventually(Duration::from_secs(60), "some writes", || async {
        acked.load(std::sync::atomic::Ordering::Acquire) >= 500
    })
    .await;
    let before = acked.load(std::sync::atomic::Ordering::Acquire);
    let dest = tmp.path().join("backup");
    let (bin, addr, tok, to) = (support::bin(), d.addr.clone(), token.clone(), dest.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .arg("backup")
            .arg(&to)
            .args(["--server", &addr, "--auth-token-file", tok.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let after = acked.load(std::sync::atomic::Ordering::Acquire);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("checks sound"), "{said}");
    assert!(after > before, "writes went on during the backup ({before} -> {after})");
    // Without the token the backup is refused.
    let refused = std::process::Command::new(support::bin())
        .arg("backup")
        .arg(tmp.path().join("other"))
        .args(["--server", &d.addr])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let restored = Daemon::start_in(&dest, "127.0.0.1:0", &["--auth-token-file", token.to_str().unwrap()]);
    let r = Cache::builder().server(&restored.addr).auth_token("backup-token-0123456789").connect().await.unwrap();
    let keys: Vec<String> = (0..before).map(|i| format!("k{i}")).collect();
    let got: std::collections::HashMap<String, u64> = r.get_many(&keys).await.unwrap();
    let missing: Vec<&String> = keys.iter().filter(|k| !got.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged before the backup yet missing from it: {missing:?}");
    assert!(got.iter().all(|(k, v)| k[1..].parse::<u64>().unwrap() == *v));
    assert!(d.log_text().contains("backup 1 finished"), "{}", d.log_text());
}
