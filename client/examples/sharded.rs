//! One client over three daemons: keys are spread by rendezvous hashing
//! (each key lives on one server, and adding a server moves only its share
//! of keys), `get_many`/`set_many` make one request per server, and `stats`
//! reports each server's share.
//!
//! ```text
//! cargo run -p cachetd -- --listen 127.0.0.1:7311 --data-dir /tmp/c1 &
//! cargo run -p cachetd -- --listen 127.0.0.1:7312 --data-dir /tmp/c2 &
//! cargo run -p cachetd -- --listen 127.0.0.1:7313 --data-dir /tmp/c3 &
//! cargo run -p cachet --example sharded -- 127.0.0.1:7311 127.0.0.1:7312 127.0.0.1:7313
//! ```

use std::collections::HashMap;

use cachet::{Cache, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut servers: Vec<String> = std::env::args().skip(1).collect();
    if servers.is_empty() {
        servers = vec!["127.0.0.1:7311".into(), "127.0.0.1:7312".into(), "127.0.0.1:7313".into()];
    }
    let mut builder = Cache::builder().key_prefix("shard-example");
    for s in &servers {
        builder = builder.server(s);
    }
    let cache = builder.connect().await?;
    cache.clear_prefix().await?;

    let items: Vec<(String, u32)> = (0..3000).map(|i| (format!("user:{i}"), i)).collect();
    let failed = cache.set_many(items.iter().map(|(k, v)| (k.as_str(), v))).await?;
    assert!(failed.is_empty(), "every server took its keys: {failed:?}");

    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let got: HashMap<String, u32> = cache.get_many(&keys).await?;
    assert_eq!(got.len(), items.len());
    assert_eq!(got["user:1234"], 1234);

    let stats = cache.stats().await?;
    for (server, s) in &stats.per_server {
        println!("{server}: {} entries", s.entries);
        assert!(s.entries > 0, "{server} holds a share");
    }
    println!("total: {} entries on {} servers", stats.entries, stats.per_server.len());
    cache.clear_prefix().await
}
