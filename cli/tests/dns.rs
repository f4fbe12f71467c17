//! `wa8s run` resolving names through a real DNS server (issue 19): a granted name whose
//! answer mixes loopback with an allowed address reaches only the allowed one, and a name
//! answering only an IPv4-mapped or NAT64 form of loopback or of a node address is refused.
//!
//! Contained: the DNS server and the allowed server live in a network namespace the test
//! creates, joined to this one by a veth pair (whose outer end is then one of the machine's
//! own addresses); `wa8s run` reads a resolv.conf naming that server, bind-mounted over
//! /etc/resolv.conf in a mount namespace of its own (`unshare --mount`). Needs root (`ip
//! netns`, `unshare`); run under `flock /tmp/wa8s-heavy.lock`. Everything is removed on drop,
//! `wa8s` stopped by its PID.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wa8s_e2e::dns::DnsServer;
use wa8s_e2e::netns::Netns;
use wa8s_e2e::scenario::HttpResponder;

/// The suffix the guest is granted (`--allow-host *.dns.wa8s.test`).
const ZONE: &str = "dns.wa8s.test";

/// Servers for one test: in the namespace, the DNS server and the allowed HTTP server; in
/// this one, HTTP servers on loopback and on the veth's outer address (a node address), all
/// on the same port so only the address a name resolves to decides which one is reached.
struct Network {
    // Dropped first: the servers' sockets, then the namespace (and its veth pair).
    dns: DnsServer,
    allowed: HttpResponder,
    loopback: HttpResponder,
    node: HttpResponder,
    port: u16,
    allowed_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
    _netns: Netns,
}

impl Network {
    /// Network `n` (each test its own: `10.250.5n.0/30`).
    fn start(n: u8) -> Result<Network> {
        let pid = std::process::id();
        let netns = Netns::new(&format!("wa8s-dns{n}-{pid}"))?;
        let (node_ip, allowed_ip) = (
            Ipv4Addr::new(10, 250, 50 + n, 1),
            Ipv4Addr::new(10, 250, 50 + n, 2),
        );
        netns.veth(
            &format!("w8dns{n}-{}", pid % 100_000),
            node_ip,
            allowed_ip,
            30,
        )?;
        let dns = netns.within(|| DnsServer::start(SocketAddr::from((allowed_ip, 53))))?;
        // One port free on loopback, on the node address and (a fresh namespace) inside.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (loopback, node) = loop {
            let loopback = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let port = loopback.local_addr()?.port();
            match TcpListener::bind((node_ip, port)) {
                Ok(node) => break (loopback, node),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => continue,
            }
        };
        let port = loopback.local_addr()?.port();
        let allowed = netns.within(|| TcpListener::bind((allowed_ip, port)))?;
        Ok(Network {
            dns,
            allowed: HttpResponder::spawn(allowed, "allowed")?,
            loopback: HttpResponder::spawn(loopback, "loopback")?,
            node: HttpResponder::spawn(node, "node")?,
            port,
            allowed_ip,
            node_ip,
            _netns: netns,
        })
    }

    /// Connections the servers that must never be reached accepted.
    fn blocked_reached(&self) -> usize {
        self.loopback.accepted() + self.node.accepted()
    }
}

/// `wa8s run --listen` serving the Python guest, granted `*.dns.wa8s.test`, resolving through
/// `dns`; stopped by PID on drop.
struct Wa8s {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

/// `wa8s run ARGS`, granted `*.dns.wa8s.test`, resolving through `dns` only: in a mount
/// namespace of its own where a resolv.conf naming `dns` (written to `dir`) covers
/// /etc/resolv.conf. `unshare` execs sh, which execs wa8s: the child's PID is wa8s's.
fn wa8s_run(dir: &Path, dns: &DnsServer, args: &[&OsStr]) -> Result<Command> {
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {}\noptions timeout:2 attempts:2\n",
            dns.addr().ip()
        ),
    )?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#)
        .arg("sh")
        .arg(&resolv)
        .arg(env!("CARGO_BIN_EXE_wa8s"))
        .args(["run", "--allow-host"])
        .arg(format!("*.{ZONE}"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args);
    Ok(cmd)
}

impl Wa8s {
    fn start(dns: &DnsServer) -> Result<Wa8s> {
        let dir = tempfile::tempdir()?;
        let guest = dir.path().join("python.wasm");
        // Its `/fetch/HOST:PORT/PATH` makes a wasi:http request.
        std::fs::write(&guest, wa8s_e2e::guests::python_guest()?)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let args = ["--listen", &addr, "--memory", "256Mi", "--timeout", "30s"];
        let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        args.push(guest.as_os_str());
        let child = wa8s_run(dir.path(), dns, &args)?
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting unshare … wa8s run")?;
        let mut me = Wa8s {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!("wa8s run exited before serving: {status}");
            }
            if let Ok((200, _)) = wa8s_e2e::http::get(&me.addr, "/", Duration::from_secs(60)) {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("wa8s run did not serve on {} within 180s", me.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the guest's GET of `http://NAME:PORT/` came back with.
    fn fetch(&self, name: &str, port: u16) -> Result<(u16, String)> {
        let path = format!("/fetch/{name}:{port}/");
        wa8s_e2e::http::get(&self.addr, &path, Duration::from_secs(60))
            .with_context(|| format!("GET {path}"))
    }
}

impl Drop for Wa8s {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_granted_name_answering_loopback_or_the_node_and_an_allowed_address_reaches_only_the_allowed_one()
-> Result<()> {
    let net = Network::start(1)?;
    let names = net.dns.hold_hostile(ZONE, net.node_ip, net.allowed_ip);
    let wa8s = Wa8s::start(&net.dns)?;
    for name in &names.mixed {
        let before = net.allowed.accepted();
        let (status, body) = wa8s.fetch(name, net.port)?;
        assert_eq!(
            (status, body.as_str()),
            (200, "upstream 200: allowed"),
            "{name}"
        );
        assert_eq!(net.allowed.accepted(), before + 1, "{name}: one connection");
    }
    assert_eq!(net.blocked_reached(), 0, "loopback or the node was reached");
    Ok(())
}

#[test]
fn a_granted_name_answering_only_a_mapped_or_nat64_form_of_loopback_or_a_node_address_is_refused()
-> Result<()> {
    let net = Network::start(2)?;
    let names = net.dns.hold_hostile(ZONE, net.node_ip, net.allowed_ip);
    let wa8s = Wa8s::start(&net.dns)?;
    for name in &names.embedded_only {
        let (status, body) = wa8s.fetch(name, net.port)?;
        assert!(
            status == 502 && body.contains("DestinationIpProhibited"),
            "{name}: {status} {body}"
        );
    }
    // The allowed server is still reached through a name that points at it alone.
    let allowed = format!("allowed.{ZONE}");
    net.dns.set(&allowed, &[IpAddr::V4(net.allowed_ip)]);
    assert_eq!(
        wa8s.fetch(&allowed, net.port)?,
        (200, "upstream 200: allowed".into())
    );
    assert_eq!(net.blocked_reached(), 0, "loopback or the node was reached");
    Ok(())
}

#[test]
fn a_socket_to_a_granted_name_connects_only_to_addresses_the_gate_allows() -> Result<()> {
    let net = Network::start(3)?;
    let dir = tempfile::tempdir()?;
    let probe = dir.path().join("sockprobe.wasm");
    std::fs::write(&probe, wa8s_test_components::SOCKPROBE_COMPONENT)?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let allowed = IpAddr::V4(net.allowed_ip);
    let node = IpAddr::V4(net.node_ip);
    // sockprobe connects to the first IPv4 address the lookup yields (the resolver orders
    // them, RFC 6724): names with one address each, and a mixed one where either outcome is
    // right as long as only the allowed server could be reached.
    let cases = [
        ("loopback", vec![loopback], Some("connect=err")),
        ("node", vec![node], Some("connect=err")),
        ("allowed", vec![allowed], Some("connect=ok")),
        ("mixed", vec![loopback, node, allowed], None),
    ];
    let port = net.port.to_string();
    for (name, ips, expected) in &cases {
        let name = format!("{name}.{ZONE}");
        net.dns.set(&name, ips);
        let args = [probe.as_os_str(), OsStr::new("--"), OsStr::new("lookup")];
        let mut cmd = wa8s_run(dir.path(), &net.dns, &args)?;
        cmd.args([&name, &port]);
        let out = wa8s_e2e::process::run_with_timeout(cmd, Duration::from_secs(120))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("lookup=ok") && expected.is_none_or(|e| stdout.contains(e)),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(net.blocked_reached(), 0, "loopback or the node was reached");
    Ok(())
}
