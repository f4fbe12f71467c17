//! What a registry says in an error body never reaches users or an object's status: only the
//! HTTP status and the OCI error codes do. The registry here is a few lines of raw HTTP on
//! loopback, since a real registry cannot be made to redirect to an internal service.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wa8s_oci::{Registry, RegistryOptions};

const SECRET: &str = "AWS_SECRET_ACCESS_KEY=hunter2";

/// Serves `answer(path)` as the raw response to every request, on a fresh loopback port.
async fn raw_server(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
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
    port
}

fn response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn describe_error(registry_port: u16) -> String {
    let registry = Registry::new(RegistryOptions::default());
    let reference = format!("127.0.0.1:{registry_port}/team/app:v1");
    let err = tokio::time::timeout(Duration::from_secs(30), registry.describe(&reference))
        .await
        .expect("within 30 s")
        .expect_err("refused");
    err.to_string()
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
