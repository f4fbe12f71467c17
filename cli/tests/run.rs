//! The `wa8s run` command as users call it: the real binary, real files, real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wa8s_test_components as guests;

fn wa8s() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wa8s"))
}

/// Polls `check` until it yields a value, failing the test after `timeout`.
fn until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn guest(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write guest");
    path.to_string_lossy().into_owned()
}

#[test]
fn wa8s_run_prints_the_guest_output_and_returns_its_exit_code() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = wa8s()
        .args(["run", &guest(&dir, "hello.wasm", guests::HELLO_COMPONENT)])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from wasm\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "hello on stderr\n");
    let out = wa8s()
        .args(["run", &guest(&dir, "exit3.wasm", guests::EXIT3_CORE)])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn grants_on_the_command_line_work_like_the_crd() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("tmp");
    std::fs::write(data.path().join("note.txt"), "granted\n").expect("write");
    let env = guest(&dir, "env.wasm", guests::ENV_COMPONENT);
    let out = wa8s()
        .args([
            "run",
            "--env",
            "A=1",
            "--allow-env",
            "WA8S_TEST_GRANTED",
            &env,
        ])
        .env("WA8S_TEST_GRANTED", "yes")
        .env("WA8S_TEST_HIDDEN", "no")
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "A=1\nWA8S_TEST_GRANTED=yes\n"
    );

    let probe = guest(&dir, "fsprobe.wasm", guests::FSPROBE_COMPONENT);
    let ro = format!("{}:/data:ro", data.path().display());
    let out = wa8s()
        .args(["run", "--dir", &ro, &probe, "--", "3", "r", "note.txt"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("granted\n"));
    let out = wa8s()
        .args(["run", "--dir", &ro, &probe, "--", "3", "w", "new.txt"])
        .output()
        .expect("runs");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("errno=0"));
    assert!(!data.path().join("new.txt").exists());

    // A bounded directory: the 1 MiB write stops at 256 KiB with ENOSPC (WASI errno 51).
    let bounded = format!("{}:/tmp:maxSize=256Ki", data.path().display());
    let out = wa8s()
        .args(["run", "--dir", &bounded, &probe, "--", "3", "w", "big.bin"])
        .output()
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("errno=51\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let size = std::fs::metadata(data.path().join("big.bin"))
        .expect("written")
        .len();
    assert!(size + 8 <= 256 << 10, "{size} bytes in a 256 KiB directory");

    // Around the bound: through a file unlinked while open, and into it from another
    // directory (EXDEV, as between file systems). Both are the real binary's answers.
    let other = tempfile::tempdir().expect("tmp");
    std::fs::write(other.path().join("big.bin"), vec![0u8; 1 << 20]).expect("write");
    let elsewhere = format!("{}:/other", other.path().display());
    for (op, errno) in [("u", 51), ("m", 75), ("l", 75)] {
        let out = wa8s()
            .args([
                "run", "--dir", &bounded, "--dir", &elsewhere, &probe, "--", "3", op,
            ])
            .arg(if op == "u" { "gone.bin" } else { "big.bin" })
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.ends_with(&format!("errno={errno}\n")),
            "{op}: {stdout}"
        );
    }
    assert_eq!(
        std::fs::metadata(data.path().join("big.bin"))
            .expect("there")
            .len(),
        size,
        "the bounded directory's file is unchanged"
    );
}

#[test]
fn bad_flags_and_bad_files_exit_2_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let hello = guest(&dir, "hello.wasm", guests::HELLO_COMPONENT);
    let junk = guest(&dir, "junk.wasm", b"not wasm at all");
    for (args, says) in [
        (
            vec!["run", "--dir", "/tmp:relative", hello.as_str()],
            "'relative' is relative",
        ),
        (
            vec!["run", "--dir", "/nonexistent/x:/data", hello.as_str()],
            "/nonexistent/x is not a directory",
        ),
        (
            vec!["run", "--dir", "/tmp:/data:size=1", hello.as_str()],
            "unknown directory option \"size=1\"",
        ),
        (
            vec!["run", "--dir", "/tmp:/data:maxSize=huge", hello.as_str()],
            "maxSize \"huge\": expected a positive quantity",
        ),
        (
            vec!["run", "--memory", "lots", hello.as_str()],
            "--memory \"lots\"",
        ),
        (
            vec!["run", "--timeout", "soon", hello.as_str()],
            "\"soon\" is not a positive duration",
        ),
        (
            vec!["run", "--allow-host", "exa mple.com", hello.as_str()],
            "is not a host pattern",
        ),
        (
            vec!["run", "--env", "NOEQUALS", hello.as_str()],
            "expected NAME=VALUE",
        ),
        (vec!["run", junk.as_str()], "not a WebAssembly binary"),
        (
            vec!["run", "/nonexistent/file.wasm"],
            "reading /nonexistent/file.wasm",
        ),
    ] {
        let out = wa8s().args(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn a_runaway_guest_exits_124_at_its_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = wa8s()
        .args([
            "run",
            "--timeout",
            "300ms",
            &guest(&dir, "loop.wasm", guests::LOOP_COMPONENT),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deadline of 300ms"));
}

#[test]
fn wa8s_run_listen_serves_http_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = guest(&dir, "http.wasm", guests::HTTP_COMPONENT);
    let out = wa8s().args(["run", &http]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve it with --listen"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = wa8s()
        .args(["run", "--listen", &addr, &http])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let response = until(Duration::from_secs(60), "server never came up", || {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    });
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("hello from wasm"), "{response}");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's PID.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = until(
        Duration::from_secs(20),
        "wa8s did not stop on SIGTERM",
        || child.try_wait().expect("wait"),
    );
    assert_eq!(status.code(), Some(0));
}

/// This machine's first IPv4 address other than loopback.
fn own_ipv4() -> std::net::Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .expect("a global IPv4 address")
}

#[test]
fn wa8s_run_blocks_the_machines_own_addresses_in_every_form_as_a_node_does() {
    let dir = tempfile::tempdir().expect("tmp");
    let probe = guest(&dir, "sockprobe.wasm", guests::SOCKPROBE_COMPONENT);
    let ip = own_ipv4();
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port().to_string();
    let [a, b, c, d] = ip.octets();
    for form in [
        ip.to_string(),
        format!("::ffff:{ip}"),
        format!(
            "64:ff9b::{:x}:{:x}",
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d])
        ),
    ] {
        let out = wa8s()
            .args([
                "run",
                "--allow-host",
                "*",
                &probe,
                "--",
                "connect",
                &form,
                &port,
            ])
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("connect=err"), "{form}: {stdout}");
    }
    assert!(
        listener.accept().is_err(),
        "the machine's own address was reached"
    );
    // Named literally, the address is granted.
    let out = wa8s()
        .args([
            "run",
            "--allow-host",
            &format!("{ip}:{port}"),
            &probe,
            "--",
            "connect",
            &ip.to_string(),
            &port,
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("connect=ok"), "{stdout}");
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    format!("127.0.0.1:{port}")
}

/// One GET; the whole response, or `None` if the server is not up yet.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the sample `series` (name and labels, exactly) in an exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let value = l.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

#[test]
fn wa8s_run_serves_request_counts_and_deadline_stops_as_prometheus_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = guest(&dir, "http.wasm", guests::HTTP_COMPONENT);
    let (addr, metrics) = (free_addr(), free_addr());
    let mut child = wa8s()
        .args(["run", "--listen", &addr, "--metrics-listen", &metrics])
        .args(["--timeout", "1s", &http])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let first = until(Duration::from_secs(60), "server never came up", || {
        get(&addr, "/")
    });
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    for _ in 0..4 {
        assert!(get(&addr, "/").expect("GET /").starts_with("HTTP/1.1 200"));
    }
    // A guest that loops is stopped at its deadline: 503, and one deadline stop.
    let looped = get(&addr, "/loop").expect("GET /loop");
    assert!(looped.starts_with("HTTP/1.1 503"), "{looped}");
    let exposition = until(Duration::from_secs(10), "the stop was not counted", || {
        let text = get(&metrics, "/metrics")?;
        (sample(&text, r#"wa8s_guest_stops_total{reason="deadline"}"#) == Some(1.0)).then_some(text)
    });
    assert!(
        exposition.contains("content-type: application/openmetrics-text")
            || exposition.contains("Content-Type: application/openmetrics-text"),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, r#"wa8s_http_requests_total{code="2xx"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(&exposition, r#"wa8s_http_requests_total{code="5xx"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&exposition, "wa8s_http_request_duration_seconds_count"),
        Some(6.0)
    );
    assert_eq!(
        sample(&exposition, r#"wa8s_guest_stops_total{reason="trap"}"#),
        Some(0.0)
    );
    assert!(sample(&exposition, "wa8s_instance_start_time_seconds").is_some_and(|t| t > 1.0e9));
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's PID.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    until(Duration::from_secs(20), "wa8s did not stop", || {
        child.try_wait().expect("wait")
    });
}

#[test]
fn a_denied_name_lookup_and_socket_are_each_named_on_stderr_with_the_grant_that_would_allow_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let probe = guest(&dir, "sockprobe.wasm", guests::SOCKPROBE_COMPONENT);
    let run = |args: &[&str]| {
        let out = wa8s()
            .args(["run", "--allow-host", "api.example.com:443", &probe, "--"])
            .args(args)
            .output()
            .expect("runs");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = run(&["lookup", "db.not-granted.example"]);
    assert!(stdout.contains("lookup=err"), "{stdout}");
    assert!(
        stderr.contains(
            "name lookup of db.not-granted.example denied: not in spec.wasi.network allowedHosts"
        ),
        "{stderr}"
    );
    let (stdout, stderr) = run(&["connect", "192.0.2.7", "5432"]);
    assert!(stdout.contains("connect=err"), "{stdout}");
    assert!(
        stderr.contains("tcp to 192.0.2.7:5432 denied: not in spec.wasi.network allowedHosts"),
        "{stderr}"
    );
}

#[test]
fn wa8s_access_log_json_writes_one_line_per_request_without_its_query() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = guest(&dir, "http.wasm", guests::HTTP_COMPONENT);
    let addr = free_addr();
    let mut child = wa8s()
        .args(["run", "--listen", &addr, &http])
        .env("WA8S_ACCESS_LOG", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let first = until(Duration::from_secs(60), "server never came up", || {
        get(&addr, "/hello?token=secret")
    });
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        get(&addr, "/other")
            .expect("GET")
            .starts_with("HTTP/1.1 200")
    );
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's PID.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    until(
        Duration::from_secs(20),
        "wa8s did not stop on SIGTERM",
        || child.try_wait().expect("wait"),
    );
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/hello");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["duration_ms"].as_f64().is_some(), "{}", lines[0]);
    assert!(
        lines[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["path"], "/other");
    assert!(!stderr.contains("secret"), "{stderr}");

    // Anything but json is refused by name.
    let out = wa8s()
        .args(["run", "--listen", &free_addr(), &http])
        .env("WA8S_ACCESS_LOG", "yes")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WA8S_ACCESS_LOG=\"yes\": expected \"json\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
