//! TLS listeners with certificates made at test time (rcgen): the Rust
//! client over `tls://`, a client with the wrong CA refused, a plain-text
//! client on a TLS port refused cleanly, mutual TLS without a client
//! certificate refused. (redis-cli --tls and redis-py with ssl=True are
//! driven by compat/tls/run.sh.)

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use cachet::{Cache, Error, Tls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use support::Daemon;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and localhost signed by it,
    /// a client CA with a client certificate, and an unrelated CA.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = authority("cachet test CA");
        let client_ca = authority("cachet client CA");
        let wrong = authority("someone else's CA");
        let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        put("ca.pem", &ca.pem());
        put("client-ca.pem", &client_ca.pem());
        put("wrong-ca.pem", &wrong.pem());
        let (cert, key) = leaf(&ca, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        put("server.pem", &cert);
        put("server.key", &key);
        let (cert, key) = leaf(&client_ca, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        put("client.pem", &cert);
        put("client.key", &key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.extended_key_usages = vec![usage];
    (p.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
}

/// A daemon with a `tls://` and a `resp+tls://` listener (beside the
/// plain one the test support always adds).
fn tls_daemon(pki: &Pki, extra: &[&str]) -> Daemon {
    let (cert, key) = (pki.s("server.pem"), pki.s("server.key"));
    let tls =
        ["--listen", "tls://127.0.0.1:0", "--listen", "resp+tls://127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
    Daemon::start(&[&tls[..], extra].concat())
}

fn addr_of(d: &Daemon, scheme: &str) -> String {
    d.addrs.iter().find_map(|a| a.strip_prefix(scheme)).unwrap_or_else(|| panic!("{scheme} in {:?}", d.addrs)).into()
}

async fn client(addr: &str, tls: Option<Tls>) -> Cache {
    let mut b = Cache::builder().server(addr).request_timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        b = b.tls(t);
    }
    b.connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_client_over_tls_and_a_client_with_the_wrong_ca() {
    let pki = Pki::new();
    let d = tls_daemon(&pki, &[]);
    let addr = addr_of(&d, "tls://");
    let c = client(&addr, Some(Tls::with_ca_file(pki.path("ca.pem")).unwrap())).await;
    c.set("k", "secret").await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("secret"));

    let wrong = client(&addr, Some(Tls::with_ca_file(pki.path("wrong-ca.pem")).unwrap())).await;
    match wrong.get::<String>("k").await {
        Err(Error::Connection { reason, .. }) => assert!(reason.contains("TLS handshake failed"), "{reason}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // A certificate for another name is refused too.
    let misnamed =
        client(&addr, Some(Tls::with_ca_file(pki.path("ca.pem")).unwrap().server_name("cache.example"))).await;
    assert!(matches!(misnamed.get::<String>("k").await, Err(Error::Connection { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_text_client_on_a_tls_port_is_refused_cleanly() {
    let pki = Pki::new();
    let d = tls_daemon(&pki, &[]);
    let addr = addr_of(&d, "tls://");
    let plain = client(&addr, None).await;
    let started = std::time::Instant::now();
    assert!(matches!(plain.get::<String>("k").await, Err(Error::Connection { .. } | Error::Timeout)));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A Redis client speaking plain text to resp+tls://: the connection is
    // closed, nothing is answered.
    let mut s = std::net::TcpStream::connect(addr_of(&d, "resp+tls://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(!buf[..n].starts_with(b"+PONG"), "no plain-text answer on a TLS port");
    // The daemon goes on serving TLS clients, and says why it refused.
    let c = client(&addr, Some(Tls::with_ca_file(pki.path("ca.pem")).unwrap())).await;
    c.set("after", &1).await.unwrap();
    support::eventually(Duration::from_secs(10), "the refusal is logged", || async {
        d.log_text().contains("TLS handshake failed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let d = tls_daemon(&pki, &["--tls-client-ca", &pki.s("client-ca.pem")]);
    let addr = addr_of(&d, "tls://");
    let anonymous = client(&addr, Some(Tls::with_ca_file(pki.path("ca.pem")).unwrap())).await;
    assert!(matches!(anonymous.get::<String>("k").await, Err(Error::Connection { .. })));
    let tls = Tls::with_ca_file(pki.path("ca.pem"))
        .unwrap()
        .client_cert_files(pki.path("client.pem"), pki.path("client.key"))
        .unwrap();
    let known = client(&addr, Some(tls)).await;
    known.set("k", &7).await.unwrap();
    assert_eq!(known.get::<i32>("k").await.unwrap(), Some(7));
}

#[test]
fn tls_listeners_need_a_certificate_and_bad_files_fail_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::bin())
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--listen", "tls://127.0.0.1:0"]);
    assert!(err.contains("needs --tls-cert and --tls-key"), "{err}");
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_str().unwrap();
    let err = run(&["--listen", "tls://127.0.0.1:0", "--tls-cert", junk, "--tls-key", junk]);
    assert!(err.contains("--tls-cert") && !err.contains("replay"), "{err}");
}
