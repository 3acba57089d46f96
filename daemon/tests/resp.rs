//! The RESP front end through a real Redis client (the `redis` crate) and
//! raw sockets: every command over RESP2 and RESP3, pipelines, MULTI/EXEC
//! atomicity, auth, and bad input.

mod support;

use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::{Commands, Value};
use support::{Daemon, closed_within, token_file};

fn start(args: &[&str]) -> Daemon {
    Daemon::start_resp(args)
}

fn client(d: &Daemon, proto: u8) -> redis::Connection {
    let url = if proto == 3 {
        format!("redis://{}/?protocol=resp3", d.resp_addr())
    } else {
        format!("redis://{}/", d.resp_addr())
    };
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn cmd(con: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

/// Sends raw bytes and reads what comes back until `expect` bytes arrived
/// or the server stops sending.
fn raw(addr: &str, send: &[u8], expect: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(send).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while got.len() < expect && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn strings_counters_and_expiry_in_both_protocols() {
    let d = start(&[]);
    for proto in [2u8, 3] {
        let mut c = client(&d, proto);
        let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
        // SET and its options, in either order.
        let _: () = c.set("k", "v").unwrap();
        assert_eq!(c.get::<_, Option<String>>("k").unwrap().as_deref(), Some("v"));
        assert_eq!(cmd(&mut c, &["SET", "k", "w", "NX", "EX", "100"]).unwrap(), Value::Nil);
        assert_eq!(cmd(&mut c, &["SET", "k", "w", "EX", "100", "XX"]).unwrap(), Value::Okay);
        assert_eq!(cmd(&mut c, &["SET", "new", "x", "XX"]).unwrap(), Value::Nil);
        assert_eq!(cmd(&mut c, &["SET", "k", "z", "GET", "KEEPTTL"]).unwrap(), Value::BulkString(b"w".to_vec()));
        let ttl: i64 = c.ttl("k").unwrap();
        assert!((99..=100).contains(&ttl), "KEEPTTL kept {ttl}");
        assert_eq!(cmd(&mut c, &["SET", "p", "1", "PX", "100000"]).unwrap(), Value::Okay);
        let pttl: i64 = c.pttl("p").unwrap();
        assert!((99_000..=100_000).contains(&pttl), "{pttl}");
        let e = cmd(&mut c, &["SET", "k", "v", "EX", "0"]).unwrap_err();
        assert!(e.to_string().contains("invalid expire time"), "{e}");
        let e = cmd(&mut c, &["SET", "k", "v", "NX", "XX"]).unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
        // SETNX, SETEX, PSETEX, GETDEL, GETEX, MGET, MSET, MSETNX, STRLEN.
        assert_eq!(cmd(&mut c, &["SETNX", "k", "x"]).unwrap(), Value::Int(0));
        assert_eq!(cmd(&mut c, &["SETNX", "n1", "x"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["SETEX", "se", "50", "v"]).unwrap(), Value::Okay);
        assert!((49..=50).contains(&c.ttl::<_, i64>("se").unwrap()));
        assert_eq!(cmd(&mut c, &["PSETEX", "pse", "50000", "v"]).unwrap(), Value::Okay);
        assert_eq!(cmd(&mut c, &["GETDEL", "n1"]).unwrap(), Value::BulkString(b"x".to_vec()));
        assert_eq!(cmd(&mut c, &["GETDEL", "n1"]).unwrap(), Value::Nil);
        assert_eq!(cmd(&mut c, &["GETEX", "se", "PERSIST"]).unwrap(), Value::BulkString(b"v".to_vec()));
        assert_eq!(c.ttl::<_, i64>("se").unwrap(), -1);
        assert_eq!(cmd(&mut c, &["GETEX", "se", "EX", "30"]).unwrap(), Value::BulkString(b"v".to_vec()));
        assert!((29..=30).contains(&c.ttl::<_, i64>("se").unwrap()));
        let _: () = c.mset(&[("a", "1"), ("b", "22")]).unwrap();
        let got: Vec<Option<String>> = c.mget(&["a", "b", "nope"]).unwrap();
        assert_eq!(got, vec![Some("1".into()), Some("22".into()), None]);
        assert_eq!(cmd(&mut c, &["MSETNX", "a", "x", "fresh", "y"]).unwrap(), Value::Int(0));
        assert_eq!(c.get::<_, Option<String>>("fresh").unwrap(), None, "MSETNX sets none if one exists");
        assert_eq!(cmd(&mut c, &["MSETNX", "f1", "x", "f2", "y"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["STRLEN", "b"]).unwrap(), Value::Int(2));
        assert_eq!(cmd(&mut c, &["STRLEN", "nope"]).unwrap(), Value::Int(0));
        // EXISTS counts repeats; DEL and UNLINK count what they removed.
        assert_eq!(cmd(&mut c, &["EXISTS", "a", "a", "nope", "b"]).unwrap(), Value::Int(3));
        assert_eq!(cmd(&mut c, &["DEL", "a", "nope"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["UNLINK", "b", "f1"]).unwrap(), Value::Int(2));
        assert_eq!(cmd(&mut c, &["TYPE", "f2"]).unwrap(), Value::SimpleString("string".into()));
        assert_eq!(cmd(&mut c, &["TYPE", "nope"]).unwrap(), Value::SimpleString("none".into()));
        assert_eq!(cmd(&mut c, &["TOUCH", "f2", "nope"]).unwrap(), Value::Int(1));
        // Counters: decimal text, 64-bit, Redis's errors, TTL kept.
        assert_eq!(cmd(&mut c, &["INCR", "ctr"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["INCRBY", "ctr", "41"]).unwrap(), Value::Int(42));
        assert_eq!(cmd(&mut c, &["DECR", "ctr"]).unwrap(), Value::Int(41));
        assert_eq!(cmd(&mut c, &["DECRBY", "ctr", "50"]).unwrap(), Value::Int(-9));
        assert_eq!(c.get::<_, String>("ctr").unwrap(), "-9");
        assert_eq!(cmd(&mut c, &["EXPIRE", "ctr", "100"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["INCR", "ctr"]).unwrap(), Value::Int(-8));
        assert!(c.ttl::<_, i64>("ctr").unwrap() > 90, "INCR keeps the TTL");
        let e = cmd(&mut c, &["INCR", "f2"]).unwrap_err();
        assert!(e.to_string().contains("value is not an integer or out of range"), "{e}");
        let _: () = c.set("big", i64::MAX.to_string()).unwrap();
        let e = cmd(&mut c, &["INCR", "big"]).unwrap_err();
        assert!(e.to_string().contains("increment or decrement would overflow"), "{e}");
        let e = cmd(&mut c, &["INCRBY", "ctr", "x"]).unwrap_err();
        assert!(e.to_string().contains("not an integer"), "{e}");
        // Expiry: EXPIRE family with NX|XX|GT|LT, PERSIST, TTL, a past time deletes.
        let _: () = c.set("e", "v").unwrap();
        assert_eq!(cmd(&mut c, &["TTL", "e"]).unwrap(), Value::Int(-1));
        assert_eq!(cmd(&mut c, &["TTL", "nope"]).unwrap(), Value::Int(-2));
        assert_eq!(cmd(&mut c, &["EXPIRE", "e", "100", "XX"]).unwrap(), Value::Int(0));
        assert_eq!(cmd(&mut c, &["EXPIRE", "e", "100", "NX"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["EXPIRE", "e", "50", "GT"]).unwrap(), Value::Int(0));
        assert_eq!(cmd(&mut c, &["EXPIRE", "e", "200", "GT"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["PEXPIRE", "e", "50000", "LT"]).unwrap(), Value::Int(1));
        assert!((49..=50).contains(&c.ttl::<_, i64>("e").unwrap()));
        let e = cmd(&mut c, &["EXPIRE", "e", "5", "NX", "GT"]).unwrap_err();
        assert!(e.to_string().contains("not compatible"), "{e}");
        assert_eq!(cmd(&mut c, &["PERSIST", "e"]).unwrap(), Value::Int(1));
        assert_eq!(cmd(&mut c, &["PERSIST", "e"]).unwrap(), Value::Int(0));
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1000;
        assert_eq!(cmd(&mut c, &["EXPIREAT", "e", &at.to_string()]).unwrap(), Value::Int(1));
        assert!((998..=1000).contains(&c.ttl::<_, i64>("e").unwrap()));
        assert_eq!(cmd(&mut c, &["PEXPIREAT", "e", "1000"]).unwrap(), Value::Int(1), "a time in the past deletes");
        assert!(!c.exists::<_, bool>("e").unwrap());
        assert_eq!(cmd(&mut c, &["EXPIRE", "ctr", "-1"]).unwrap(), Value::Int(1));
        assert!(!c.exists::<_, bool>("ctr").unwrap());
        // Keyspace: DBSIZE, SCAN (whole walk, MATCH, COUNT), SELECT, FLUSHDB.
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        for i in 0..300 {
            let _: () = c.set(format!("user:{i}"), i).unwrap();
        }
        let _: () = c.set("other", 1).unwrap();
        assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(301));
        let mut seen = std::collections::HashSet::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, keys): (String, Vec<String>) =
                redis::cmd("SCAN").arg(&cursor).arg("MATCH").arg("user:*").arg("COUNT").arg(50).query(&mut c).unwrap();
            seen.extend(keys);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 300);
        assert!(seen.iter().all(|k| k.starts_with("user:")));
        assert_eq!(cmd(&mut c, &["FLUSHDB", "ASYNC"]).unwrap(), Value::Okay);
        assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
    }
}

#[test]
fn connection_and_server_commands() {
    let d = start(&["--sync", "always"]);
    let mut c = client(&d, 2);
    assert_eq!(cmd(&mut c, &["PING"]).unwrap(), Value::SimpleString("PONG".into()));
    assert_eq!(cmd(&mut c, &["PING", "hi"]).unwrap(), Value::BulkString(b"hi".to_vec()));
    assert_eq!(cmd(&mut c, &["ECHO", "x y"]).unwrap(), Value::BulkString(b"x y".to_vec()));
    assert_eq!(cmd(&mut c, &["CLIENT", "SETNAME", "me"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]).unwrap(), Value::BulkString(b"me".to_vec()));
    assert!(matches!(cmd(&mut c, &["CLIENT", "ID"]).unwrap(), Value::Int(n) if n > 0));
    assert_eq!(cmd(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "x"]).unwrap(), Value::Okay);
    let conf: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("append*").query(&mut c).unwrap();
    assert_eq!(conf, vec!["appendonly", "yes", "appendfsync", "always"]);
    let conf: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query(&mut c).unwrap();
    assert_eq!(conf, vec!["save", ""]);
    assert!(cmd(&mut c, &["CONFIG", "SET", "maxmemory", "1"]).is_err());
    assert!(matches!(cmd(&mut c, &["COMMAND", "COUNT"]).unwrap(), Value::Int(n) if n > 30));
    let _: () = c.set("k", "v").unwrap();
    let _: Option<String> = c.get("k").unwrap();
    let _: Option<String> = c.get("missing").unwrap();
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    for field in
        ["redis_version:", "used_memory:", "keyspace_hits:1", "keyspace_misses:1", "connected_clients:", "db0:keys=1"]
    {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(info.contains("# Keyspace") && !info.contains("# Server"), "{info}");
    let e = cmd(&mut c, &["FOO", "bar", "baz"]).unwrap_err().to_string();
    assert!(e.contains("unknown command 'foo', with args beginning with: 'bar' 'baz'"), "{e}");
    let e = cmd(&mut c, &["GET"]).unwrap_err().to_string();
    assert!(e.contains("wrong number of arguments for 'get' command"), "{e}");
    assert!(cmd(&mut c, &["WATCH", "k"]).unwrap_err().to_string().contains("not supported"));
    // HELLO 3 answers the map redis-py 8 needs; RESP3 replies follow.
    let mut c3 = client(&d, 3);
    let hello = cmd(&mut c3, &["HELLO", "3"]).unwrap();
    let Value::Map(fields) = hello else { panic!("HELLO 3 answered {hello:?}") };
    let names: Vec<String> = fields.iter().map(|(k, _)| redis::from_redis_value(k.clone()).unwrap()).collect();
    for want in ["server", "version", "proto", "id", "mode", "role", "modules"] {
        assert!(names.contains(&want.to_string()), "HELLO lacks {want}: {names:?}");
    }
    assert_eq!(cmd(&mut c3, &["GET", "missing"]).unwrap(), Value::Nil);
    assert!(cmd(&mut c3, &["HELLO", "4"]).unwrap_err().to_string().contains("NOPROTO"));
    // Inline commands, as typed into nc or telnet.
    let out = raw(&d.resp_addr(), b"PING\r\nSET inline \"a b\"\r\nGET inline\r\n", 20);
    assert_eq!(out, "+PONG\r\n+OK\r\n$3\r\na b\r\n");
    // QUIT answers and closes.
    let mut s = TcpStream::connect(d.resp_addr()).unwrap();
    s.write_all(b"*1\r\n$4\r\nQUIT\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
}

#[test]
fn a_pipeline_of_a_thousand_commands() {
    let d = start(&[]);
    for proto in [2u8, 3] {
        let mut c = client(&d, proto);
        let mut p = redis::pipe();
        for i in 0..1000 {
            p.set(format!("p{i}"), i).ignore();
        }
        for i in 0..1000 {
            p.get(format!("p{i}"));
        }
        let got: Vec<i64> = p.query(&mut c).unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<i64>>());
    }
}

#[test]
fn multi_exec_is_atomic_against_a_concurrent_writer() {
    let d = start(&[]);
    let mut c = client(&d, 2);
    let _: () = c.set("ctr", 0).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (addr, stop) = (d.resp_addr(), stop.clone());
        std::thread::spawn(move || {
            let mut w = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection().unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: i64 = w.incr("ctr", 1).unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..300 {
        // Two reads inside one transaction see the same value: nothing ran
        // between them.
        let (a, b): (i64, i64) = redis::pipe().atomic().get("ctr").get("ctr").query(&mut c).unwrap();
        assert_eq!(a, b);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0, "the writer ran");
    // Django's set_many: MULTI, MSET, EXPIRE per key, EXEC, in one write.
    let replies: (String, i64, i64) =
        redis::pipe().atomic().mset(&[("x", "1"), ("y", "2")]).expire("x", 100).expire("y", 100).query(&mut c).unwrap();
    assert_eq!(replies, ("OK".into(), 1, 1));
    // A refused command while queueing aborts the whole transaction.
    let out = raw(
        &d.resp_addr(),
        b"MULTI\r\nSET t 1\r\nNOSUCH\r\nEXEC\r\nGET t\r\nEXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nDISCARD\r\n",
        200,
    );
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "+OK");
    assert_eq!(lines[1], "+QUEUED");
    assert!(lines[2].starts_with("-ERR unknown command 'nosuch'"), "{out}");
    assert!(lines[3].starts_with("-EXECABORT"), "{out}");
    assert_eq!(lines[4], "$-1", "nothing of the aborted transaction was applied: {out}");
    assert_eq!(lines[5], "-ERR EXEC without MULTI");
    assert_eq!(lines[6], "-ERR DISCARD without MULTI");
    assert_eq!(lines[7], "+OK");
    assert_eq!(lines[8], "-ERR MULTI calls can not be nested");
    assert_eq!(lines[9], "+OK");
}

#[test]
fn auth_is_required_when_a_token_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path(), "s3cret-s3cret-s3cret");
    let d = start(&["--auth-token-file", token.to_str().unwrap()]);
    let addr = d.resp_addr();
    let out = raw(&addr, b"GET k\r\nAUTH wrong\r\nAUTH s3cret-s3cret-s3cret\r\nSET k v\r\nGET k\r\n", 120);
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "-NOAUTH Authentication required.");
    assert!(lines[1].starts_with("-WRONGPASS"), "{out}");
    assert_eq!(&lines[2..6], ["+OK", "+OK", "$1", "v"]);
    // HELLO with AUTH, as redis-py does with a password.
    let mut c = redis::Client::open(format!("redis://default:s3cret-s3cret-s3cret@{addr}/?protocol=resp3"))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    assert!(redis::Client::open(format!("redis://default:nope@{addr}/")).unwrap().get_connection().is_err());
    // Before AUTH, a large request is refused before it is buffered.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n").unwrap();
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("-ERR Protocol error"), "{:?}", &buf[..n]);
}

#[test]
fn bad_input_gets_redis_errors_and_the_daemon_keeps_serving() {
    let d = start(&["--max-value-bytes", "1MiB", "--read-timeout", "1"]);
    let addr = d.resp_addr();
    for (bad, want) in [
        (&b"*1\r\n$-3\r\n"[..], "-ERR Protocol error: invalid bulk length"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999999\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"SET k \"open\r\n", "-ERR Protocol error: unbalanced quotes in request"),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(bad).unwrap();
        let mut buf = vec![0u8; 512];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with(want), "{bad:?}: {got}");
        assert!(closed_within(&mut s, Duration::from_secs(5)), "{bad:?}: the connection stays open");
    }
    // A value over --max-value-bytes is refused with Redis's kind of error.
    let mut c = client(&d, 2);
    let big = vec![b'x'; (1 << 20) + 1];
    assert!(redis::cmd("SET").arg("k").arg(&big).query::<()>(&mut c).is_err());
    // A command sent halfway is dropped after --read-timeout.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"*2\r\n$3\r\nGET\r\n$1").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "a half-sent command is not dropped");
    // Through all of it, a well-behaved client is served.
    let mut c = client(&d, 2);
    let _: () = c.set("still", "here").unwrap();
    assert_eq!(c.get::<_, String>("still").unwrap(), "here");
}

#[test]
fn keys_cross_between_resp_and_the_rust_client() {
    let d = start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rust = rt.block_on(cachet::Cache::connect(&d.addrs[1])).unwrap();
    let mut c = client(&d, 2);
    // The Rust client's keys are "prefix:version:key" in database 0.
    rt.block_on(rust.set("greeting", &"hello").into_future()).unwrap();
    let raw_value: Vec<u8> = c.get(":1:greeting").unwrap();
    assert_eq!(rmp_serde::from_slice::<String>(&raw_value).unwrap(), "hello");
    // Bytes written through RESP that do not decode as the type asked for
    // are a clear decode error, never a wrong value.
    let _: () = c.set(":1:text", "not messagepack \u{1}").unwrap();
    let e = rt.block_on(rust.get::<u64>("text").into_future()).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("decode"), "{e}");
    let _: () = c.del(":1:greeting").unwrap();
    assert_eq!(rt.block_on(rust.get::<String>("greeting").into_future()).unwrap(), None);
    // A client of database 3 shares its keys with RESP's SELECT 3, and
    // only with it.
    let db3 = rt.block_on(cachet::Cache::builder().server(d.addrs[1].clone()).database(3).connect()).unwrap();
    rt.block_on(db3.set("in3", &"three").into_future()).unwrap();
    assert_eq!(c.get::<_, Option<Vec<u8>>>(":1:in3").unwrap(), None);
    assert_eq!(cmd(&mut c, &["SELECT", "3"]).unwrap(), Value::Okay);
    let raw3: Vec<u8> = c.get(":1:in3").unwrap();
    assert_eq!(rmp_serde::from_slice::<String>(&raw3).unwrap(), "three");
    rt.block_on(db3.clear_prefix()).unwrap();
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
    assert!(rt.block_on(cachet::Cache::builder().server(d.addrs[1].clone()).database(16).connect()).is_err());
}

#[test]
fn databases_are_separate_and_flushdb_clears_only_its_own() {
    let mut d = start(&[]);
    let mut c = client(&d, 2);
    let _: () = c.set("k", "zero").unwrap();
    assert_eq!(cmd(&mut c, &["SELECT", "1"]).unwrap(), Value::Okay);
    assert_eq!(c.get::<_, Option<String>>("k").unwrap(), None, "database 1 does not see database 0");
    let _: () = c.set("k", "one").unwrap();
    let _: () = c.set("only1", "x").unwrap();
    let _: () = c.set_ex("ttl1", "x", 100).unwrap();
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(3));
    let (_, keys): (String, Vec<String>) = redis::cmd("SCAN").arg(0).arg("COUNT").arg(1000).query(&mut c).unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, vec!["k", "only1", "ttl1"], "SCAN walks only the selected database, keys as named");
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(info.contains("db0:keys=1,expires=0") && info.contains("db1:keys=3,expires=1"), "{info}");
    assert_eq!(cmd(&mut c, &["SELECT", "0"]).unwrap(), Value::Okay);
    assert_eq!(c.get::<_, String>("k").unwrap(), "zero");
    // FLUSHDB in database 1 leaves database 0; it survives a restart.
    assert_eq!(cmd(&mut c, &["SELECT", "1"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["FLUSHDB"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
    drop(c);
    d.restart();
    let mut c = client(&d, 3);
    assert_eq!(c.get::<_, String>("k").unwrap(), "zero");
    assert_eq!(cmd(&mut c, &["SELECT", "1"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
    assert!(cmd(&mut c, &["SELECT", "16"]).unwrap_err().to_string().contains("out of range"));
    // A database-0 key that starts with byte 0xFF is its own key, not another database's.
    assert_eq!(cmd(&mut c, &["SELECT", "0"]).unwrap(), Value::Okay);
    let odd = b"\xff\x01k".to_vec();
    let _: () = c.set(&odd, "raw").unwrap();
    assert_eq!(cmd(&mut c, &["SELECT", "1"]).unwrap(), Value::Okay);
    assert_eq!(c.get::<_, Option<String>>("k").unwrap(), None);
    // FLUSHALL clears every database.
    let _: () = c.set("k", "again").unwrap();
    assert_eq!(cmd(&mut c, &["FLUSHALL"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
    assert_eq!(cmd(&mut c, &["SELECT", "0"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
}

#[test]
fn counters_do_not_cross_protocols() {
    let d = start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rust = rt.block_on(cachet::Cache::connect(&d.addrs[1])).unwrap();
    let mut c = client(&d, 2);
    // 53 as the Rust client stores it is the byte 0x35, which reads as "5".
    rt.block_on(rust.set("n", &53).into_future()).unwrap();
    let e = cmd(&mut c, &["INCR", ":1:n"]).unwrap_err().to_string();
    assert!(e.contains("value is not an integer"), "{e}");
    assert_eq!(rt.block_on(rust.incr("n").into_future()).unwrap(), 54);
    // "5" as RESP stores it is the byte 0x35, which MessagePack reads as 53.
    let _: () = c.set(":1:r", "5").unwrap();
    let e = rt.block_on(rust.incr("r").into_future()).unwrap_err();
    assert!(matches!(e, cachet::Error::NotAnInteger), "{e}");
    assert_eq!(cmd(&mut c, &["INCR", ":1:r"]).unwrap(), Value::Int(6));
}
