//! A fixed-window rate limiter with `incr` and `touch`: each client may make
//! `LIMIT` requests per window; one that goes over is shut out for a whole
//! window from its last excess request (`touch` pushes the window's expiry
//! out).
//!
//! ```text
//! cargo run -p cachetd &                      # a daemon on 127.0.0.1:7311
//! cargo run -p cachet --example rate_limiter -- [SERVER]
//! ```

use std::time::Duration;

use cachet::{Cache, Error};

const LIMIT: i64 = 5;
const WINDOW: Duration = Duration::from_secs(2);

/// Whether `client` may make one more request now.
async fn allow(cache: &Cache, client: &str) -> Result<bool, Error> {
    let key = format!("rate:{client}");
    // The first request of a window creates the counter with the window's
    // expiry; `add` is atomic, so concurrent first requests create one.
    cache.add(&key, &0).timeout(WINDOW).await?;
    let count = match cache.incr(&key).await {
        Ok(n) => n,
        // The window ran out between the two calls: start a new one.
        Err(Error::NotFound) => {
            cache.add(&key, &0).timeout(WINDOW).await?;
            cache.incr(&key).await?
        }
        Err(e) => return Err(e),
    };
    if count > LIMIT {
        // Over the limit: the shut-out lasts a full window from now.
        cache.touch(&key).timeout(WINDOW).await?;
        return Ok(false);
    }
    Ok(true)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7311".into());
    let cache = Cache::builder().server(server).key_prefix("rate-example").connect().await?;
    cache.clear_prefix().await?;

    let mut allowed = 0;
    for i in 1..=8 {
        let ok = allow(&cache, "alice").await?;
        println!("alice request {i}: {}", if ok { "allowed" } else { "refused (429)" });
        allowed += ok as i64;
    }
    assert_eq!(allowed, LIMIT);
    assert!(allow(&cache, "bob").await?, "other clients have their own window");

    let left = cache.ttl("rate:alice").await?;
    println!("alice is shut out for {left:?}");
    tokio::time::sleep(WINDOW + Duration::from_millis(200)).await;
    assert!(allow(&cache, "alice").await?, "a new window after the shut-out");
    println!("after the window: alice is allowed again");
    cache.clear_prefix().await
}
