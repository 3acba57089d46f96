//! A web-style handler that caches what it renders with `get_or_set_with`:
//! the first request for a page renders it (slowly), every later one, and
//! every concurrent one, is served from the cache.
//!
//! ```text
//! cargo run -p cachetd &                      # a daemon on 127.0.0.1:7311
//! cargo run -p cachet --example web_handler -- [SERVER]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachet::{Cache, Error};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Page {
    path: String,
    html: String,
}

/// The handler: the page from the cache, rendering it only on a miss (and
/// only once however many requests wait for it).
async fn handle(cache: &Cache, renders: Arc<AtomicUsize>, path: &str) -> Result<Page, Error> {
    let owned = path.to_owned();
    cache
        .get_or_set_with(format!("page:{path}"), move || async move {
            renders.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await; // a slow database query
            Page { html: format!("<h1>{owned}</h1>"), path: owned }
        })
        .timeout(Duration::from_secs(60))
        .await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7311".into());
    let cache = Cache::builder().server(server).key_prefix("web-example").connect().await?;
    cache.clear_prefix().await?;
    let renders = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let first = handle(&cache, renders.clone(), "/products/7").await?;
    println!("first request: rendered in {:?}", started.elapsed());

    // Fifty concurrent requests for a new page: one render between them.
    let started = Instant::now();
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (cache, renders) = (cache.clone(), renders.clone());
            tokio::spawn(async move { handle(&cache, renders, "/products/8").await })
        })
        .collect();
    for r in burst {
        r.await.expect("handler task")?;
    }
    println!("50 concurrent requests for a new page: {:?}", started.elapsed());

    let started = Instant::now();
    let again = handle(&cache, renders.clone(), "/products/7").await?;
    println!("repeat request: served from the cache in {:?}", started.elapsed());

    assert_eq!(first, again);
    let n = renders.load(Ordering::SeqCst);
    println!("pages rendered: {n} (for 52 requests)");
    assert_eq!(n, 2, "each page is rendered once");
    cache.clear_prefix().await
}
