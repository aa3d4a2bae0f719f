//! A deliberately small HTTP/1.1 server for `/metrics` and `/health`: GET only, one request
//! per connection, bounded request size, time limits and connection count, so a misbehaving
//! scraper cannot hurt the gateway. Binds to loopback unless `metrics.listen` says otherwise.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::MetricsConfig;
use super::Registry;

/// Largest request head we read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for metrics on {addr}: {source} (set metrics.listen to a free address, or metrics.enabled = false)"
)]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    pub source: std::io::Error,
}

/// Binds the listener (so a taken port is reported at start) and serves until `stop`.
pub async fn start(
    config: MetricsConfig,
    registry: Arc<Registry>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| BindError {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    if addr.ip().is_loopback() {
        tracing::info!(%addr, "metrics at http://{addr}/metrics, health at http://{addr}/health");
    } else {
        tracing::warn!(%addr, "metrics listener is reachable from the network (metrics.listen is not a loopback address)");
    }
    Ok(tokio::spawn(serve(listener, config, registry, stop)))
}

async fn serve(
    listener: TcpListener,
    config: MetricsConfig,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let registry = registry.clone();
        let degraded_after = config.degraded_after;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, handle(stream, &registry, degraded_after))
                .await;
            drop(permit);
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    degraded_after: Duration,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    match path {
        "/metrics" => {
            let text = super::render::prometheus(&registry.snapshot().await);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &text).await
        }
        "/health" | "/healthz" => {
            let (ok, body) = super::render::health(&registry.snapshot().await, degraded_after);
            respond(
                &mut stream,
                if ok { 200 } else { 503 },
                "application/json",
                &body,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "not found; try /metrics or /health\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
