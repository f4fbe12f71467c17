//! A registry stand-in of a few lines of raw HTTP, for what a real registry cannot be made
//! to do (redirect to an internal service, point its token realm anywhere). It counts the
//! connections it accepts, so a test can show something was never reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers `answer(path)` as the raw response to every request.
pub struct RawServer {
    pub port: u16,
    connections: Arc<AtomicUsize>,
}

impl RawServer {
    /// Serves on a fresh port of `bind` (`127.0.0.1`, or `0.0.0.0` to be reached at this
    /// machine's own address).
    pub async fn start(
        bind: &str,
        answer: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        let l = TcpListener::bind(format!("{bind}:0")).await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let _ = s.write_all(answer(&path).as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawServer { port, connections }
    }

    /// Connections accepted so far.
    #[allow(dead_code)] // not every test binary counts
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
