//! wasi:sockets from a real guest under the network grants: raw TCP connects and name
//! lookups, each checked against a real listener that counts what reached it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use wa8s_host::{Grants, NetworkPolicy};
use wa8s_test_components::SOCKPROBE_COMPONENT;

mod common;
use common::{run, tcp_listener};

fn probe(args: &[&str], allowed_hosts: &[String]) -> Result<Grants> {
    let mut grants = Grants {
        args: std::iter::once("sockprobe")
            .chain(args.iter().copied())
            .map(String::from)
            .collect(),
        ..Grants::default()
    };
    grants.network = NetworkPolicy::new(allowed_hosts, wa8s_host::NodeAddresses::default())?;
    grants.limits.timeout = Some(Duration::from_secs(20));
    Ok(grants)
}

/// Waits (bounded) until the listener has accepted `n` connections, then checks it is exactly
/// `n`. Used after a final allowed connect as a barrier: the listener accepts in order, so any
/// stray earlier connection would show up as one too many.
async fn accepted_exactly(accepted: &AtomicUsize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), n);
}

async fn stdout(args: &[&str], allowed_hosts: &[String]) -> Result<String> {
    let ran = run(SOCKPROBE_COMPONENT, probe(args, allowed_hosts)?).await;
    ran.status?;
    Ok(ran.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_reaches_only_a_listed_address_and_port() -> Result<()> {
    let (addr, accepted) = tcp_listener().await?;
    let port = addr.port().to_string();
    let connect = ["connect", "127.0.0.1", port.as_str()];

    // Listed literally: the connection is made.
    let out = stdout(&connect, &[format!("127.0.0.1:{port}")]).await?;
    assert_eq!(out, "connect=ok\n");
    accepted_exactly(&accepted, 1).await;

    // Another port listed, nothing, or `*` (which never covers loopback): access-denied.
    let other = format!("127.0.0.1:{}", addr.port().wrapping_add(1));
    for allowed in [vec![other], vec![], vec!["*".to_owned()]] {
        let out = stdout(&connect, &allowed).await?;
        assert_eq!(out, "connect=err 01\n", "allowed {allowed:?}");
    }
    // Cloud metadata under `*`: access-denied too.
    let out = stdout(&["connect", "169.254.169.254", "80"], &["*".to_owned()]).await?;
    assert_eq!(out, "connect=err 01\n");

    // Barrier: one more allowed connect; the listener must have seen only the allowed ones.
    assert_eq!(
        stdout(&connect, &[format!("127.0.0.1:{port}")]).await?,
        "connect=ok\n"
    );
    accepted_exactly(&accepted, 2).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_lookup_needs_a_rule_for_that_name() -> Result<()> {
    // No network grant, or grants for other names only: refused before any lookup.
    for allowed in [
        vec![],
        vec!["api.example.com".to_owned(), "10.0.0.1".to_owned()],
    ] {
        let out = stdout(&["lookup", "localhost"], &allowed).await?;
        assert_eq!(out, "lookup=err 01\n", "allowed {allowed:?}");
    }
    // A rule for the name: it resolves (from the hosts file; no DNS server needed).
    let out = stdout(&["lookup", "localhost"], &["localhost".to_owned()]).await?;
    assert_eq!(out, "lookup=ok\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_cannot_lead_a_socket_to_loopback() -> Result<()> {
    let (addr, accepted) = tcp_listener().await?;
    let port = addr.port().to_string();
    // The name is granted and resolves to 127.0.0.1, but loopback needs a literal rule.
    let out = stdout(
        &["lookup", "localhost", port.as_str()],
        &[format!("localhost:{port}")],
    )
    .await?;
    assert_eq!(out, "lookup=ok\nconnect=err 01\n");
    // Barrier as above: a literal grant connects, and it is the only connection seen.
    let connect = ["connect", "127.0.0.1", port.as_str()];
    assert_eq!(
        stdout(&connect, &[format!("127.0.0.1:{port}")]).await?,
        "connect=ok\n"
    );
    accepted_exactly(&accepted, 1).await;
    Ok(())
}
