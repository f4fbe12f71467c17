//! Outgoing wasi:http requests: allowed only to granted hosts, and never to restricted or
//! node addresses unless a rule names that address literally.
//!
//! The target is always the request's own URI authority, which the guest set; nothing from
//! the inbound request is used to derive it. The name is looked up once, here; the connection
//! goes to the address that was checked (for https too: TLS then verifies the certificate for
//! the name, with SNI), so a second lookup cannot point it elsewhere (DNS rebinding).

use crate::telemetry::{Denial, Telemetry};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::{NetworkPolicy, TrustRoots};

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// wasi:http's own default when the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The per-store hooks wasi:http calls for every outgoing request.
pub(crate) struct OutboundHttp {
    policy: NetworkPolicy,
    trust: TrustRoots,
    telemetry: Telemetry,
    /// The span of the request this store serves, when traces are exported.
    parent: Option<opentelemetry::Context>,
}

impl OutboundHttp {
    pub(crate) fn new(policy: NetworkPolicy, trust: TrustRoots, telemetry: Telemetry) -> Self {
        OutboundHttp {
            policy,
            trust,
            telemetry,
            parent: None,
        }
    }

    pub(crate) fn trace_within(&mut self, cx: opentelemetry::Context) {
        self.parent = Some(cx);
    }
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: IoFuture,
    ) -> SendFuture {
        let policy = self.policy.clone();
        let trust = self.trust.clone();
        let telemetry = self.telemetry.clone();
        let parent = self.parent.clone();
        let mut request = request;
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
                telemetry.deny(Denial::OutboundHttp { scheme, host, port });
                return Err(HttpError::HttpRequestDenied);
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let literal = bare.parse::<IpAddr>().ok();
            let candidates: Vec<SocketAddr> = match literal {
                Some(ip) => vec![SocketAddr::new(ip, port)],
                None => lookup(bare, port).await?,
            };
            let Some(target) = candidates
                .into_iter()
                .find(|a| policy.address_allowed(&rule, a.ip()))
            else {
                telemetry.deny(Denial::RestrictedAddress { host, port });
                return Err(HttpError::DestinationIpProhibited);
            };
            let tls = if https {
                let name = match literal {
                    Some(ip) => ServerName::from(ip),
                    None => ServerName::try_from(bare.to_owned())
                        .map_err(|_| HttpError::HttpRequestUriInvalid)?,
                };
                Some((name, trust))
            } else {
                None
            };
            // The span covers the connection and the response head, to the checked address.
            let trace = telemetry
                .traces()
                .zip(parent)
                .map(|(t, p)| t.client_span(&p, &mut request));
            let sent = send_to(target, tls, request, options.unwrap_or_default()).await;
            if let Some(cx) = &trace {
                let status = sent.as_ref().ok().map(|(resp, _)| resp.status().as_u16());
                crate::traces::end(cx, status);
            }
            sent
        })
    }
}

/// The name's addresses, looked up once.
async fn lookup(name: &str, port: u16) -> Result<Vec<SocketAddr>, HttpError> {
    #[cfg(test)]
    if let Some(answer) = tests::fake_dns(name, port) {
        return Ok(answer);
    }
    Ok(tokio::net::lookup_host((name, port))
        .await
        .map_err(|_| HttpError::DestinationNotFound)?
        .collect())
}

/// Sends `request` over a new connection to `target` (TLS for `tls`'s name when given).
async fn send_to(
    target: SocketAddr,
    tls: Option<(ServerName<'static>, TrustRoots)>,
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let first_byte = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let between_bytes = options
        .between_bytes_timeout
        .unwrap_or(DEFAULT_TIMEOUT)
        .max(Duration::from_nanos(1));
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(target))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
            _ => HttpError::Connect(e),
        })?;
    let (mut sender, conn) = match tls {
        Some((name, trust)) => {
            let connector = tokio_rustls::TlsConnector::from(trust.client_config());
            let stream = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| HttpError::ConnectionTimeout)?
                .map_err(tls_error)?;
            handshake(stream, connect_timeout).await?
        }
        None => handshake(tcp, connect_timeout).await?,
    };
    // Not a proxy request: the request line carries the path only (the Host header, which the
    // guest's authority set, names the server).
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    // The connection is driven while the response head is awaited, then handed back as the
    // I/O future wasi:http polls alongside the body.
    let mut conn = Some(conn);
    let send = tokio::time::timeout(first_byte, sender.send_request(request));
    tokio::pin!(send);
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = send.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Some(c) = conn.as_mut()
            && let Poll::Ready(done) = c.as_mut().poll(cx)
        {
            conn = None;
            if let Err(e) = done {
                return Poll::Ready(Ok(Err(e)));
            }
            return send.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
    .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let io: IoFuture = Box::new(async move {
        match conn {
            Some(c) => c.await.map_err(|e| {
                if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    HttpError::from(e)
                }
            }),
            None => Ok(()),
        }
    });
    let response = response.map(|incoming| {
        Timed {
            incoming,
            interval: between_bytes,
            timer: Box::pin(tokio::time::sleep(between_bytes)),
        }
        .boxed_unsync()
    });
    Ok((response, io))
}

type ConnFuture = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// An HTTP/1.1 client connection over `stream` (plain TCP or TLS).
async fn handshake<S>(
    stream: S,
    timeout: Duration,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<WasiBody>,
        ConnFuture,
    ),
    HttpError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::Builder::new().handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    Ok((sender, Box::pin(conn)))
}

fn tls_error(e: std::io::Error) -> HttpError {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    tracing::debug!("outbound TLS failed: {e}");
    if certificate {
        HttpError::TlsCertificateError
    } else {
        HttpError::Tls(e)
    }
}

/// A response body that fails when no frame arrives for `interval` (the guest's
/// between-bytes timeout).
struct Timed {
    incoming: hyper::body::Incoming,
    interval: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.interval;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
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

    /// Test names and their answers (a narrow stand-in for DNS: the system resolver's
    /// answers cannot be chosen per test).
    static FAKE_DNS: std::sync::Mutex<Vec<(String, Vec<IpAddr>)>> =
        std::sync::Mutex::new(Vec::new());

    pub(super) fn fake_dns(name: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let names = FAKE_DNS.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ips)| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }

    fn answer(name: &str, ips: Vec<IpAddr>) {
        FAKE_DNS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), ips));
    }

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
        let mut hooks = OutboundHttp::new(
            NetworkPolicy::new(patterns, crate::NodeAddresses::default()).expect("patterns"),
            TrustRoots::default(),
            Telemetry::default(),
        );
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

    /// A test CA, and a real TLS server (serving "reached over tls") for `names`, listening on
    /// every address at a free port; it counts connections by the local address they came in on.
    struct TlsServer {
        port: u16,
        ca_pem: String,
        by_local_ip: Arc<std::sync::Mutex<Vec<IpAddr>>>,
    }

    async fn tls_server(names: &[&str]) -> TlsServer {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("[::]:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let by_local_ip = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = by_local_ip.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if let Ok(local) = s.local_addr() {
                    seen.lock().expect("lock").push(local.ip().to_canonical());
                }
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from("reached over tls"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsServer {
            port,
            ca_pem: ca.pem(),
            by_local_ip,
        }
    }

    async fn send_trusting(
        patterns: &[&str],
        url: &str,
        ca_pem: Option<&str>,
    ) -> Result<String, HttpError> {
        let trust = match ca_pem {
            Some(pem) => TrustRoots::with_extra_pem("test CA", pem.as_bytes()).expect("ca"),
            None => TrustRoots::default(),
        };
        let mut hooks = OutboundHttp::new(
            NetworkPolicy::new(patterns, crate::NodeAddresses::default()).expect("patterns"),
            trust,
            Telemetry::default(),
        );
        let fut = hooks.send_request(request(url), None, Box::new(async { Ok(()) }));
        let (resp, io) = Box::into_pin(fut).await?;
        tokio::spawn(Box::into_pin(io));
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// This machine's first IPv4 address other than loopback: a public-looking destination
    /// a test can listen on.
    fn non_loopback_ipv4() -> IpAddr {
        crate::NodeAddresses::of_this_namespace()
            .expect("addresses")
            .current()
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            .expect("a non-loopback IPv4 address")
    }

    #[tokio::test]
    async fn https_reaches_a_real_tls_server_trusting_the_given_ca() {
        let server = tls_server(&["127.0.0.1"]).await;
        let url = format!("https://127.0.0.1:{}/", server.port);
        let body = send_trusting(
            &[&format!("127.0.0.1:{}", server.port)],
            &url,
            Some(&server.ca_pem),
        )
        .await
        .expect("https works");
        assert_eq!(body, "reached over tls");
        // Without the CA the certificate is refused, and said so.
        let err = send_trusting(&[&format!("127.0.0.1:{}", server.port)], &url, None)
            .await
            .expect_err("untrusted");
        assert!(matches!(err, HttpError::TlsCertificateError), "{err:?}");
    }

    #[tokio::test]
    async fn https_connects_to_the_checked_address_not_to_a_second_lookup() {
        let public = non_loopback_ipv4();
        let server = tls_server(&["mixed.wa8s.test"]).await;
        // One loopback and one allowed address for the name: only the allowed one is used,
        // for the TCP connection as well as for the decision, and TLS verifies the name.
        answer(
            "mixed.wa8s.test",
            vec!["127.0.0.1".parse().expect("ip"), public],
        );
        for _ in 0..5 {
            let body = send_trusting(
                &["*.wa8s.test"],
                &format!("https://mixed.wa8s.test:{}/", server.port),
                Some(&server.ca_pem),
            )
            .await
            .expect("https to the allowed address");
            assert_eq!(body, "reached over tls");
        }
        let seen = server.by_local_ip.lock().expect("lock").clone();
        assert_eq!(seen, vec![public; 5], "connections arrived on {seen:?}");
    }

    #[tokio::test]
    async fn a_name_resolving_to_mapped_loopback_or_node_forms_is_refused() {
        let (addr, hits) = listener().await;
        answer(
            "mapped.wa8s.test",
            vec![
                "::ffff:127.0.0.1".parse().expect("ip"),
                "64:ff9b::7f00:1".parse().expect("ip"),
            ],
        );
        let err = send(
            &["*.wa8s.test"],
            &format!("http://mapped.wa8s.test:{}/", addr.port()),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, HttpError::DestinationIpProhibited), "{err:?}");
        let err = send(
            &["*"],
            &format!("http://[::ffff:127.0.0.1]:{}/", addr.port()),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, HttpError::DestinationIpProhibited), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }
}
