//! Helpers shared by the host tests: running a guest with captured output, a server on
//! loopback, a client, and counting upstreams that prove what a guest did or did not reach.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use wa8s_host::{
    Capture, EngineConfig, Error, ExitStatus, Grants, HostEngine, Kind, Program, ServeOptions,
    ServeStats, Server, Stdio,
};

/// A host engine with the default configuration.
pub fn engine() -> HostEngine {
    HostEngine::new(&EngineConfig::default()).expect("engine")
}

pub struct Ran {
    pub status: Result<ExitStatus, Error>,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(wasm: &[u8], mut grants: Grants) -> Ran {
    let out = Capture::new(1 << 20);
    let err = Capture::new(1 << 20);
    grants.stdout = Stdio::Capture(out.clone());
    grants.stderr = Stdio::Capture(err.clone());
    if grants.args.is_empty() {
        grants.args = vec!["guest".into()];
    }
    let program = Program::load(&engine(), wasm).expect("guest loads");
    let status = program.run(&grants).await;
    Ran {
        status,
        stdout: String::from_utf8_lossy(&out.contents()).into_owned(),
        stderr: String::from_utf8_lossy(&err.contents()).into_owned(),
    }
}

/// A server running on a background task.
pub struct Running {
    pub addr: SocketAddr,
    pub stats: ServeStats,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), wa8s_host::Error>>,
}

impl Running {
    /// Starts shutdown and waits (bounded) for the server to finish.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.done)
            .await
            .context("server did not stop")???;
        Ok(())
    }

    /// Waits until the server is handling a request (bounded).
    pub async fn until_in_flight(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stats.in_flight() == 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the request never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Serves `wasm` (which must be a wasi:http component) on 127.0.0.1 with a pooled engine.
pub async fn serve(wasm: &[u8], grants: Grants, grace: Duration) -> Result<Running> {
    let engine = HostEngine::new(&EngineConfig {
        pooled_instances: Some(16),
        ..EngineConfig::default()
    })?;
    let program = Program::load(&engine, wasm)?;
    assert_eq!(program.kind(), Kind::Http);
    let server = Server::bind(
        &program,
        grants,
        ServeOptions {
            addr: "127.0.0.1:0".parse()?,
            shutdown_grace: grace,
        },
    )
    .await?;
    let addr = server.local_addr()?;
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        stats,
        stop: Some(stop),
        done,
    })
}

/// GET `path` from `addr`; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A real HTTP server on loopback that counts the requests it receives.
pub async fn upstream() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from("upstream says hi"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok((addr, hits))
}

/// A real TCP listener on loopback that counts the connections it accepts.
pub async fn tcp_listener() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    Ok((addr, accepted))
}
