//! Outgoing wasi:http requests: allowed only to granted hosts, and never to loopback,
//! link-local or node addresses unless a rule names that address literally.
//!
//! The target is always the request's own URI authority, which the guest set; nothing from
//! the inbound request is used to derive it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::NetworkPolicy;

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// The per-store hooks wasi:http calls for every outgoing request.
pub(crate) struct OutboundHttp {
    policy: NetworkPolicy,
}

impl OutboundHttp {
    pub(crate) fn new(policy: NetworkPolicy) -> Self {
        OutboundHttp { policy }
    }
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: IoFuture,
    ) -> SendFuture {
        let policy = self.policy.clone();
        Box::new(async move {
            let uri = request.uri();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let scheme = if https { "https" } else { "http" };
            let host = uri
                .host()
                .ok_or(HttpError::HttpRequestUriInvalid)?
                .to_owned();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let Some(rule) = policy.rule_for(scheme, &host, port).cloned() else {
                tracing::debug!(%host, port, "outbound request denied: host not granted");
                return Err(HttpError::HttpRequestDenied);
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let candidates: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((bare, port))
                    .await
                    .map_err(|_| HttpError::DestinationNotFound)?
                    .collect(),
            };
            let Some(target) = candidates
                .into_iter()
                .find(|a| policy.address_allowed(&rule, a.ip()))
            else {
                tracing::debug!(%host, port, "outbound request denied: address prohibited");
                return Err(HttpError::DestinationIpProhibited);
            };
            if !https {
                // Connect to the address we vetted, not to whatever a second lookup returns
                // (DNS rebinding). The Host header still carries the guest's authority.
                let authority = http::uri::Authority::try_from(target.to_string())
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?;
                let mut parts = request.uri().clone().into_parts();
                parts.authority = Some(authority);
                *request.uri_mut() =
                    http::Uri::from_parts(parts).map_err(|_| HttpError::HttpRequestUriInvalid)?;
            }
            // Caveat: for https the connector resolves the name again (it needs it for TLS).
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A real HTTP server on loopback that counts the requests it receives.
    async fn listener() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
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
                                Bytes::from("reached"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, hits)
    }

    fn request(url: &str) -> http::Request<WasiBody> {
        let uri: http::Uri = url.parse().expect("uri");
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        http::Request::get(uri)
            .header(http::header::HOST, host)
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request")
    }

    async fn send(patterns: &[&str], url: &str) -> Result<String, HttpError> {
        let mut hooks =
            OutboundHttp::new(NetworkPolicy::new(patterns, Vec::new()).expect("patterns"));
        let fut = hooks.send_request(request(url), None, Box::new(async { Ok(()) }));
        let (resp, io) = Box::into_pin(fut).await?;
        tokio::spawn(Box::into_pin(io));
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_loopback_server_listed_literally_is_reached() {
        let (addr, hits) = listener().await;
        let body = send(
            &[&format!("127.0.0.1:{}", addr.port())],
            &format!("http://{addr}/x"),
        )
        .await;
        assert_eq!(body.expect("allowed"), "reached");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_listed_literally() {
        let (addr, hits) = listener().await;
        for patterns in [vec!["*"], vec!["localhost"], vec!["127.0.0.1:1"]] {
            for url in [
                format!("http://{addr}/"),
                format!("http://localhost:{}/", addr.port()),
            ] {
                let err = send(&patterns, &url).await.expect_err("refused");
                assert!(
                    matches!(
                        err,
                        HttpError::DestinationIpProhibited | HttpError::HttpRequestDenied
                    ),
                    "{patterns:?} {url}: {err:?}"
                );
            }
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "the loopback server was reached"
        );
    }

    #[tokio::test]
    async fn cloud_metadata_is_refused_even_for_a_wildcard_grant() {
        let err = send(&["*"], "http://169.254.169.254/latest/meta-data/")
            .await
            .expect_err("refused");
        assert!(matches!(err, HttpError::DestinationIpProhibited), "{err:?}");
    }

    #[tokio::test]
    async fn a_host_that_is_not_listed_is_denied_before_any_lookup() {
        let err = send(&["api.example.com"], "http://other.example.com/")
            .await
            .expect_err("denied");
        assert!(matches!(err, HttpError::HttpRequestDenied), "{err:?}");
        let err = send(&[], "http://api.example.com/")
            .await
            .expect_err("denied");
        assert!(matches!(err, HttpError::HttpRequestDenied), "{err:?}");
    }
}
