//! A bearer-token server for a test registry: the flow GHCR and Docker Hub use.
//!
//! The registry answers `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`; the
//! client asks this server for a token (anonymously, or with basic credentials) and retries
//! with `Authorization: Bearer <jwt>`. Anonymous callers get `pull` only; known users get
//! what they ask for; wrong credentials get `401`. Tokens are ES256 JWTs whose `x5c` header
//! carries the signing certificate, which the registry checks against its `rootcertbundle`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{CertificateParams, DnType, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// The `service` (JWT audience) the registry is configured with.
pub const SERVICE: &str = "wa8s-test-registry";
/// The `issuer` the registry is configured with.
pub const ISSUER: &str = "wa8s-test-token-server";

/// One token request, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user, or `None` for an anonymous request.
    pub user: Option<String>,
    /// The requested scopes (`repository:<name>:<actions>`).
    pub scopes: Vec<String>,
    /// Whether a token was issued (wrong credentials are refused).
    pub issued: bool,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .finish()
    }
}

struct Signer {
    key: EcdsaKeyPair,
    x5c: String,
    users: Vec<(String, String)>,
}

impl TokenServer {
    /// Starts a token server on loopback that knows `users` (user, password).
    pub fn start(users: Vec<(String, String)>) -> std::io::Result<Self> {
        let err = |e: rcgen::Error| std::io::Error::other(format!("token signing key: {e}"));
        let key_pair = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, ISSUER);
        let cert = params.self_signed(&key_pair).map_err(err)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| std::io::Error::other(format!("token signing key: {e}")))?;
        let signer = Arc::new(Signer {
            key,
            x5c: STANDARD.encode(cert.der()),
            users,
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = serve(conn, &signer, &requests);
                    }
                }
            })
        };
        Ok(TokenServer {
            addr,
            cert_pem: cert.pem(),
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry must trust for token signatures (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    signer: &Signer,
    requests: &Mutex<Vec<TokenRequest>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let user = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let known = match &user {
        None => true,
        Some(creds) => signer.users.iter().any(|u| u == creds),
    };
    let mut record = TokenRequest {
        user: user.as_ref().map(|(u, _)| u.clone()),
        scopes: scopes.clone(),
        issued: false,
    };
    let mut out = conn;
    if !known {
        requests.lock().map_err(poisoned)?.push(record);
        let body =
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user name or password"}]}"#;
        return respond(&mut out, "401 Unauthorized", body);
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| user.is_some() || *a == "pull")
                .collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let token = signer.sign(record.user.as_deref().unwrap_or(""), &access)?;
    record.issued = true;
    requests.lock().map_err(poisoned)?.push(record);
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    respond(&mut out, "200 OK", &body.to_string())
}

impl Signer {
    fn sign(&self, subject: &str, access: &[serde_json::Value]) -> std::io::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(std::io::Error::other)?
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| std::io::Error::other(format!("signing a token: {e}")))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

fn respond(out: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> std::io::Error {
    std::io::Error::other("token request log poisoned")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
