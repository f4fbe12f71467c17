//! Request traces from `wa8s run --listen` to a real OpenTelemetry Collector: the request's
//! span continues the caller's `traceparent`, the guest's outgoing wasi:http request is its
//! child span, and the `traceparent` reaches the upstream server. The collector is the
//! upstream build (OTLP receiver, file exporter), cached by version.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wa8s_e2e::otel::{CLIENT, Collector, SERVER};

/// A server that answers every request with 200 and keeps each request's head.
fn upstream() -> Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let kept = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            kept.lock()
                .expect("heads")
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    Ok((port, heads))
}

struct Stopped(Child);

impl Drop for Stopped {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str, traceparent: &str) -> std::io::Result<(u16, String)> {
    let headers = [("traceparent", traceparent)];
    wa8s_e2e::http::get_with_headers(addr, path, &headers, Duration::from_secs(60))
}

#[test]
fn a_request_span_continues_the_callers_trace_and_the_guests_outbound_call_is_its_child()
-> Result<()> {
    let collector = Collector::start()?;
    let (up_port, heads) = upstream()?;
    let dir = tempfile::tempdir()?;
    let guest = dir.path().join("python.wasm");
    // Its `/fetch/HOST:PORT/PATH` makes a wasi:http request.
    std::fs::write(&guest, wa8s_e2e::guests::python_guest()?)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_wa8s"))
        .args([
            "run",
            "--listen",
            &addr,
            "--memory",
            "256Mi",
            "--timeout",
            "30s",
        ])
        .arg("--allow-host")
        .arg(format!("127.0.0.1:{up_port}"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg(&guest)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .env("OTEL_SERVICE_NAME", "traced-app")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting wa8s run")?;
    let mut child = Stopped(child);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let deadline = Instant::now() + Duration::from_secs(180);
    let (status, body) = loop {
        if let Some(s) = child.0.try_wait()? {
            bail!("wa8s run exited before serving: {s}");
        }
        if let Ok(r) = get(&addr, &format!("/fetch/127.0.0.1:{up_port}/"), &traceparent) {
            break r;
        }
        if Instant::now() > deadline {
            bail!("wa8s run did not serve within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 200, "{body}");

    // The upstream was called with the same trace.
    let head = heads
        .lock()
        .expect("heads")
        .first()
        .cloned()
        .unwrap_or_default();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("traceparent: 00-{trace_id}-")),
        "{head}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let (server, client) = loop {
        let spans = collector.spans();
        let server = spans
            .iter()
            .find(|s| s.trace_id == trace_id && s.kind == SERVER)
            .cloned();
        let client = server.as_ref().and_then(|server| {
            spans
                .iter()
                .find(|s| s.kind == CLIENT && s.parent_span_id == server.span_id)
                .cloned()
        });
        if let (Some(server), Some(client)) = (server, client) {
            break (server, client);
        }
        if Instant::now() > deadline {
            bail!(
                "no server span with a client child in trace {trace_id}; received: {spans:?}\ncollector log:\n{}",
                collector.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(server.parent_span_id, caller_span, "{server:?}");
    assert_eq!(server.service, "traced-app");
    assert_eq!(client.trace_id, trace_id);
    assert!(
        head.contains(&client.span_id),
        "the upstream saw the client span as its parent: {head} / {client:?}"
    );
    Ok(())
}
