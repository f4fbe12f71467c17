//! Registry requests are not a proxy into the cluster: under the gated address policy (the
//! operator's and the shim's), no request reaches loopback, link-local or a denied network
//! through the registry, a name, a redirect or a token realm, unless the deployer listed the
//! registry. The "internal services" here count the connections they get: refusals happen
//! before any request, so every count must stay 0.

use std::time::Duration;

use wa8s_oci::{Error, Registry, RegistryConfig, RegistryOptions};

mod common;
use common::{RawServer as Server, response};

/// An empty response.
fn empty(status: &str, headers: &str) -> String {
    response(status, headers, "")
}

/// An internal service: anything reaching it is a failure of the policy.
async fn internal() -> Server {
    Server::start("127.0.0.1", |_| empty("200 OK", "")).await
}

/// This machine's first global IPv4 address: a registry address the policy allows.
fn machine_ipv4() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .expect("a global IPv4 address")
        .to_owned()
}

/// The gated policy, speaking plain HTTP to `insecure` (the test registries have no TLS).
fn gated(private: &[String], denied: &[&str], insecure: &[String]) -> Registry {
    let mut config = RegistryConfig {
        insecure: insecure.to_vec(),
        ..RegistryConfig::default()
    };
    let denied: Vec<String> = denied.iter().map(|d| d.to_string()).collect();
    config
        .gate_addresses(private.to_vec(), &denied)
        .expect("valid policy");
    Registry::new(RegistryOptions {
        config,
        ..RegistryOptions::default()
    })
}

async fn describe(registry: &Registry, reference: &str) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(30), registry.describe(reference))
        .await
        .expect("within 30 s")
        .map(drop)
}

#[tokio::test]
async fn a_registry_at_a_loopback_address_or_name_is_refused_before_any_request() {
    let service = internal().await;
    let registry = gated(&[], &[], &[]);
    for (reference, why) in [
        (
            format!("127.0.0.1:{}/team/app:v1", service.port),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("localhost:{}/team/app:v1", service.port),
            "localhost resolves only to refused addresses",
        ),
    ] {
        let err = describe(&registry, &reference).await.expect_err("refused");
        assert!(matches!(err, Error::Refused { .. }), "{reference}: {err}");
        assert!(
            wa8s_api::report::report(&err).contains(why),
            "{reference}: {err}"
        );
        assert_eq!(err.reason(), "RegistryNotAllowed");
    }
    assert_eq!(service.connections(), 0, "the internal service was reached");
}

#[tokio::test]
async fn a_listed_private_registry_is_reached_at_any_address() {
    let service = Server::start("127.0.0.1", |_| empty("404 Not Found", "")).await;
    let listed = format!("127.0.0.1:{}", service.port);
    let registry = gated(std::slice::from_ref(&listed), &[], &[]);
    let err = describe(&registry, &format!("{listed}/team/app:v1"))
        .await
        .expect_err("nothing there");
    assert!(!matches!(err, Error::Refused { .. }), "{err}");
    assert!(
        service.connections() > 0,
        "the listed registry was not asked"
    );
}

#[tokio::test]
async fn a_registry_in_a_denied_network_is_refused() {
    let ip = machine_ipv4();
    let service = Server::start("0.0.0.0", |_| empty("200 OK", "")).await;
    let at = format!("{ip}:{}", service.port);
    let registry = gated(&[], &[&format!("{ip}/32")], std::slice::from_ref(&at));
    let err = describe(&registry, &format!("{at}/team/app:v1"))
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains(&format!("{ip} is in the denied network {ip}/32")),
        "{err}"
    );
    assert_eq!(service.connections(), 0);
}

#[tokio::test]
async fn redirects_and_token_realms_pointing_inside_are_refused_and_never_requested() {
    let service = internal().await;
    let inside = service.port;
    let ip = machine_ipv4();
    let cases = [
        (
            "a redirect to a loopback address",
            format!("Location: http://127.0.0.1:{inside}/latest/meta-data\r\n"),
            "307 Temporary Redirect",
            "127.0.0.1 is a loopback address",
        ),
        (
            "a redirect to a name of loopback",
            format!("Location: http://localhost:{inside}/latest/meta-data\r\n"),
            "307 Temporary Redirect",
            "localhost resolves only to refused addresses",
        ),
        (
            "a redirect to a mapped loopback address",
            format!("Location: http://[::ffff:127.0.0.1]:{inside}/\r\n"),
            "302 Found",
            "is a loopback address",
        ),
        (
            "a token realm at a loopback address",
            format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{inside}/token\",service=\"r\"\r\n"
            ),
            "401 Unauthorized",
            "127.0.0.1 is a loopback address",
        ),
    ];
    for (case, header, status, why) in cases {
        let registry_server = Server::start("0.0.0.0", move |path| {
            // A realm is asked for at the API root; a redirect comes for the manifest.
            if path == "/v2/" && !status.starts_with("401") {
                empty("200 OK", "")
            } else {
                empty(status, &header)
            }
        })
        .await;
        let at = format!("{ip}:{}", registry_server.port);
        let registry = gated(&[], &[], std::slice::from_ref(&at));
        let err = describe(&registry, &format!("{at}/team/app:v1"))
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Refused { .. }), "{case}: {err}");
        assert!(
            wa8s_api::report::report(&err).contains(why),
            "{case}: {err}"
        );
        assert!(registry_server.connections() > 0, "{case}: never asked");
    }
    assert_eq!(service.connections(), 0, "the internal service was reached");
}
