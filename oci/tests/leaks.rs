//! What a registry says in an error body never reaches users or an object's status: only the
//! HTTP status and the OCI error codes do. The registry here is a few lines of raw HTTP on
//! loopback, since a real registry cannot be made to redirect to an internal service.

use std::time::Duration;

use wa8s_oci::{Registry, RegistryOptions};

mod common;
use common::{RawServer, response};

const SECRET: &str = "AWS_SECRET_ACCESS_KEY=hunter2";

/// Serves `answer(path)` on a fresh loopback port.
async fn raw_server(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> u16 {
    RawServer::start("127.0.0.1", answer).await.port
}

async fn describe_error(registry_port: u16) -> String {
    let registry = Registry::new(RegistryOptions::default());
    let reference = format!("127.0.0.1:{registry_port}/team/app:v1");
    let err = tokio::time::timeout(Duration::from_secs(30), registry.describe(&reference))
        .await
        .expect("within 30 s")
        .expect_err("refused");
    // What reaches an object's condition: the error and every cause.
    wa8s_api::report::report(&err)
}

#[tokio::test]
async fn a_redirect_to_an_internal_service_does_not_bring_its_answer_back() {
    let internal = raw_server(|_| {
        response(
            "500 Internal Server Error",
            "Content-Type: text/plain\r\n",
            SECRET,
        )
    })
    .await;
    let registry = raw_server(move |path| {
        if path == "/v2/" {
            response("200 OK", "", "{}")
        } else {
            response(
                "307 Temporary Redirect",
                &format!("Location: http://127.0.0.1:{internal}/latest/meta-data\r\n"),
                "",
            )
        }
    })
    .await;
    let text = describe_error(registry).await;
    assert!(
        !text.contains("hunter2"),
        "the internal answer leaked: {text}"
    );
    assert!(text.contains("500"), "the status is named: {text}");
}

#[tokio::test]
async fn an_error_envelope_is_reported_by_its_codes_only() {
    let registry = raw_server(|path| {
        if path == "/v2/" {
            response("200 OK", "", "{}")
        } else {
            let body = format!(
                r#"{{"errors":[{{"code":"UNSUPPORTED","message":"{SECRET}","detail":"{SECRET}"}}]}}"#
            );
            response(
                "400 Bad Request",
                "Content-Type: application/json\r\n",
                &body,
            )
        }
    })
    .await;
    let text = describe_error(registry).await;
    assert!(
        !text.contains("hunter2"),
        "the registry's message leaked: {text}"
    );
    assert!(
        text.contains("Unsupported"),
        "the OCI code is named: {text}"
    );
}

#[tokio::test]
async fn a_plain_server_error_is_reported_by_its_status_only() {
    let registry = raw_server(|path| {
        if path == "/v2/" {
            response("200 OK", "", "{}")
        } else {
            response("502 Bad Gateway", "Content-Type: text/html\r\n", SECRET)
        }
    })
    .await;
    let text = describe_error(registry).await;
    assert!(!text.contains("hunter2"), "the body leaked: {text}");
    assert!(text.contains("502"), "the status is named: {text}");
}
