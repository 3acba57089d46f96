//! The `/metrics` endpoint: HTTP/1.1 (hyper) on `--metrics-listen`. Each
//! scrape reads the engine's counters once and encodes everything.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use cachet_storage::{Command, Reply};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::error::{Error, Result};
use crate::shared::Shared;

/// The OpenMetrics text format, which Prometheus asks for and reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for scrapers that do not ask for
/// OpenMetrics (curl, promtool, older agents).
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The classic text format of an OpenMetrics exposition (what
/// prometheus-client writes): a counter family is named with its `_total`
/// suffix, as its samples are, and there is no `# EOF` line.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Binds `addr` and serves scrapes until the runtime stops; returns the
/// bound address.
pub async fn serve(addr: &str, shared: Arc<Shared>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Listen(format!("binding --metrics-listen {addr}: {e}; pick another HOST:PORT")))?;
    let bound = listener.local_addr().map_err(|e| Error::Listen(format!("--metrics-listen {addr}: {e}")))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| respond(req, shared.clone()));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from a status, one header and a body")
}

async fn respond(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, text, "cachetd serves its metrics at /metrics\n".into()));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, text, "use GET /metrics\n".into()));
    }
    let openmetrics = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    Ok(match shared.engine.call(Command::Stats).await {
        Ok(Reply::Stats(stats)) => {
            let body = shared.metrics.encode(*stats, shared.started.elapsed(), shared.max_memory());
            if openmetrics {
                reply(StatusCode::OK, OPENMETRICS, body)
            } else {
                reply(StatusCode::OK, CLASSIC, classic(&body))
            }
        }
        other => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            format!("the engine did not answer for its counters ({other:?}); is cachetd shutting down?\n"),
        ),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_text_names_counters_with_total_and_has_no_eof() {
        let om = "# HELP cachet_hits Reads that hit.\n# TYPE cachet_hits counter\ncachet_hits_total 3\n\
                  # HELP cachet_entries Entries.\n# TYPE cachet_entries gauge\ncachet_entries 2\n# EOF\n";
        assert_eq!(
            super::classic(om),
            "# HELP cachet_hits_total Reads that hit.\n# TYPE cachet_hits_total counter\ncachet_hits_total 3\n\
             # HELP cachet_entries Entries.\n# TYPE cachet_entries gauge\ncachet_entries 2\n"
        );
    }
}
