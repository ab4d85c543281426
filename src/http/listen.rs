//! The listeners: HTTPS with rustls (ENC-1, NET-1) and the limits every
//! connection lives under (NET-5).
//!
//! * With `tls_cert` and `tls_key` the one listener speaks TLS 1.3 and 1.2
//!   only, with the AEAD suites only (rustls has no others), and offers
//!   HTTP/2 and HTTP/1.1 by ALPN. The certificate is read again on SIGHUP
//!   and whenever its files change; connections already open keep theirs,
//!   new ones get the new one, and a file that does not parse leaves the
//!   old one in use. Every response then carries HSTS, and
//!   `http_redirect_listen` answers plain HTTP with `308` to HTTPS only.
//! * A client has `header_read_timeout_seconds` to send its headers and
//!   the TLS handshake as long; a request has `request_timeout_seconds` to
//!   produce its response (uploads excepted, which stream), and a body
//!   that stalls for `body_idle_timeout_seconds` is cut off (uploads
//!   included); an idle kept-alive connection is closed after `keep_alive_seconds`. Headers
//!   are capped in size. Beyond `max_connections`, or
//!   `max_connections_per_ip` from one address, a new connection is closed
//!   at once, before anything is read from it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::Service;

use super::error::ApiError;
use crate::config::Config;

/// Largest request head (line and headers) accepted, per connection buffer.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How often the certificate files are looked at for changes.
const CERT_POLL: Duration = Duration::from_secs(2);
/// How long open requests may finish once the server is asked to stop.
const DRAIN: Duration = Duration::from_secs(30);

/// How a request reached us, for the handlers and the response headers.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// Over TLS terminated by this server.
    pub tls: bool,
}

/// Builds the TLS configuration from PEM files: TLS 1.3 and 1.2, the ring
/// provider's suites (all AEAD), HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {}: no certificate in it", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert and tls_key do not make a certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificate in use, replaced when its files change.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl Certificate {
    fn load(cert: &Path, key: &Path) -> Result<Arc<Certificate>, String> {
        let loaded = Certificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(tls_config(cert, key)?),
            stamp: Mutex::new(None),
        };
        loaded.changed();
        Ok(Arc::new(loaded))
    }

    fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let config = self.current.read().ok()?.clone();
        Some(tokio_rustls::TlsAcceptor::from(config))
    }

    /// Whether the files' modification times moved since last asked.
    fn changed(&self) -> bool {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let now = modified(&self.cert).zip(modified(&self.key));
        let Ok(mut stamp) = self.stamp.lock() else {
            return false;
        };
        let moved = now.is_some() && *stamp != now;
        *stamp = now;
        moved
    }

    fn reload(&self, why: &str) {
        match tls_config(&self.cert, &self.key) {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = config;
                }
                tracing::info!(target: "security", why, "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(
                target: "security",
                why,
                error = %e,
                "TLS certificate not reloaded; the previous one stays in use"
            ),
        }
    }

    /// Reloads on SIGHUP and when the files change, until the process ends.
    fn watch(self: &Arc<Self>) {
        let certificate = self.clone();
        tokio::spawn(async move {
            let mut hangups =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hangup = async {
                    match hangups.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = hangup => {
                        certificate.changed();
                        certificate.reload("SIGHUP");
                    }
                    _ = tokio::time::sleep(CERT_POLL) => {
                        if certificate.changed() {
                            certificate.reload("the certificate files changed");
                        }
                    }
                }
            }
        });
    }
}

/// Open connections, in all and per client address.
struct Admission {
    max: usize,
    per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection's place; it frees itself when the connection ends.
struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().ok()?;
        let (total, by_ip) = &mut *open;
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.max || mine >= self.per_ip {
            return None;
        }
        *total += 1;
        by_ip.insert(ip, mine + 1);
        Some(Admitted {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut open) = self.admission.open.lock() {
            let (total, by_ip) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// What every connection is served with.
#[derive(Clone)]
struct Serving {
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    request_timeout: Duration,
    body_idle_timeout: Duration,
    handshake_timeout: Duration,
}

fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_seconds))
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(Duration::from_secs(config.keep_alive_seconds)))
        .keep_alive_timeout(Duration::from_secs(config.header_read_timeout_seconds));
    builder
}

/// Whether a request streams its body in (an upload), so that the whole-
/// request timeout does not apply.
fn streams_in(req: &Request<Incoming>) -> bool {
    matches!(req.method().as_str(), "POST" | "PUT")
        && req.uri().path().split('/').any(|part| part == "files")
}

impl Serving {
    async fn connection<I>(self, io: I, peer: SocketAddr, tls: bool, watcher: Watcher)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Serving {
            router,
            builder,
            request_timeout,
            body_idle_timeout,
            ..
        } = self;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(Transport { tls });
            let limited = !streams_in(&req);
            let mut router = router.clone();
            async move {
                let call = router.call(
                    req.map(|body| axum::body::Body::new(IdleBody::new(body, body_idle_timeout))),
                );
                if !limited {
                    return call.await;
                }
                match tokio::time::timeout(request_timeout, call).await {
                    Ok(response) => response,
                    Err(_) => Ok(axum::response::IntoResponse::into_response(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "request-timeout",
                        "the request took too long and was abandoned",
                    ))),
                }
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// Serves `router` on `listener` under `config`'s TLS and limits until
/// `shutdown` resolves, then lets open requests finish (up to 30 s).
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let certificate = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let certificate = Certificate::load(cert, key).map_err(std::io::Error::other)?;
            certificate.watch();
            Some(certificate)
        }
        _ => None,
    };
    if let (Some(address), Some(_)) = (config.http_redirect_listen, &certificate) {
        let https_port = listener.local_addr()?.port();
        let redirect = TcpListener::bind(address).await?;
        tracing::info!(address = %redirect.local_addr()?, "redirecting plain HTTP to HTTPS");
        tokio::spawn(redirect_plain_http(redirect, https_port, config.clone()));
    }
    let admission = Arc::new(Admission {
        max: config.max_connections,
        per_ip: config.max_connections_per_ip,
        open: Mutex::new((0, HashMap::new())),
    });
    let serving = Serving {
        router,
        builder: builder(config),
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
        body_idle_timeout: Duration::from_secs(config.body_idle_timeout_seconds),
        handshake_timeout: Duration::from_secs(config.header_read_timeout_seconds),
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let serving = serving.clone();
        let acceptor = certificate.as_ref().and_then(|c| c.acceptor());
        let watching = graceful.watcher();
        tokio::spawn(async move {
            let _admitted = admitted;
            match acceptor {
                None => serving.connection(stream, peer, false, watching).await,
                Some(acceptor) => {
                    let handshake = serving.handshake_timeout;
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serving.connection(tls, peer, true, watching).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open requests did not finish in time; stopping anyway");
    }
    Ok(())
}

/// Answers plain HTTP with a redirect to the same host and path over
/// HTTPS, and with nothing else: no content, no cookies, no login.
async fn redirect_plain_http(listener: TcpListener, https_port: u16, config: Config) {
    let builder = builder(&config);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, std::convert::Infallible>(redirect_to_https(&req, https_port))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn redirect_to_https(req: &Request<Incoming>, https_port: u16) -> Response<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    };
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let admission = Arc::new(Admission {
            max: 3,
            per_ip: 2,
            open: Mutex::new((0, HashMap::new())),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none(), "a third from one address");
        let _third = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none(), "a fourth in all");
        drop(first);
        assert!(
            admission.admit(a).is_some(),
            "a place freed is a place again"
        );
    }
}

/// A request body that fails when the client sends nothing for `idle`
/// while the server waits for more (NET-5): a stalled upload does not hold
/// its connection for ever. Time the handler spends elsewhere between
/// reads does not count.
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            waiting: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for {0:?}")]
struct Stalled(Duration);

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(?idle, "request body stalled");
                        Poll::Ready(Some(Err(Box::new(Stalled(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
