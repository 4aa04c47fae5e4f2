//! The HTTP listener's accept loop: every connection is served by hyper's
//! HTTP/1 connection directly, not through `axum::serve`.
//!
//! `axum::serve` serves with hyper-util's `auto` builder, which first reads
//! a few bytes to tell HTTP/1 from HTTP/2 and hands them back to hyper
//! through a rewinding reader; hyper's first read then takes those bytes
//! into its 8 KiB read buffer and, finding less than 8 KiB free, doubles it
//! to 16 KiB, which every connection keeps for its lifetime. An idle SSE
//! inbox stream (issue 9) is a connection held open for hours: measured
//! with a bare SSE handler, 30.4 KiB allocated per idle stream through
//! `axum::serve`, 19.8 KiB through hyper's HTTP/1 builder (8 KiB read and
//! 8 KiB write buffer, which hyper does not let go below). The HTTP port
//! speaks HTTP/1.1 only, as the gateway's build of axum did: no h2c
//! (browsers speak HTTP/2 only over TLS, which a proxy in front
//! terminates); gRPC has its own port.
//!
//! What `axum::serve` did is kept: connection errors on accept are skipped,
//! other accept errors (out of file descriptors) are logged and retried
//! after a second, and the graceful shutdown stops accepting, lets every
//! connection finish its request in flight (idle keep-alive connections are
//! closed) and returns once all are gone; the inbox's live streams end when
//! the inbox hub closes on the same shutdown (`inbox_live.rs`). No socket
//! option is set, as before.

use std::{io, time::Duration};

use axum::Router;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// How long the accept loop waits after an accept error that is not the
/// connection's own (out of file descriptors): axum's and hyper 0.14's
/// choice.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown`, then until every
/// connection has closed.
pub(crate) async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // Body chunks are copied into the connection's write buffer (allocated
    // anyway, for the response head) rather than queued beside it: the
    // queue is another allocation per connection, kept while a stream is
    // open (300 B per idle SSE stream), for a copy of a few hundred bytes.
    http1.writev(false);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                error!(error = %e, "the HTTP listener cannot accept connections: retrying in a second");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let connection =
            http1.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accept error that concerns only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A request is answered, keep-alive holds the connection for the
    /// next, and shutdown waits for the request in flight, closes the idle
    /// connection and returns.
    #[tokio::test]
    async fn serves_http1_and_shuts_down_gracefully() {
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let release_in = release.clone();
        let app = Router::new().route("/hi", get(|| async { "hi" })).route(
            "/slow",
            get(move || {
                let (entered, release) = (entered_tx.clone(), release_in.clone());
                async move {
                    if let Some(tx) = entered.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    release.notified().await;
                    "done"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, shutdown.clone()));

        let ask = |path: &'static str| async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.unwrap();
            tcp
        };
        let read_some = |mut tcp: tokio::net::TcpStream| async move {
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"hi") && !answer.ends_with(b"done") {
                let n = tcp.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
            (String::from_utf8(answer).unwrap(), tcp)
        };
        let (answer, mut idle) = read_some(ask("/hi").await).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

        let slow = ask("/slow").await;
        entered_rx.await.unwrap();
        shutdown.cancel();
        // The idle keep-alive connection is closed by the shutdown.
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(!server.is_finished(), "a request is still in flight");
        release.notify_one();
        let (answer, _) = read_some(slow).await;
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server returns once its connections are gone")
            .unwrap();
    }
}
