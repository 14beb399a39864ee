//! The partner-facing HTTP client, guarded against SSRF: partner URLs that resolve to loopback, private,
//! link-local (metadata included), unique-local or IPv4-mapped addresses are refused at send time as they are at
//! save time. The resolver checks every address DNS returns and the connection goes only to checked addresses;
//! literal IP hosts are checked before sending; redirects are never followed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickpacer::delivery::{RenderedRequest, SsrfError, TransportError, check_url, filter_resolved};

/// Most of a partner's answer body kept (for the success match and the delivery record).
const MAX_BODY: usize = 64 * 1024;

/// A partner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerAnswer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
    pub latency: Duration,
}

/// Sends one rendered request. The bridge uses [`HttpTransport`]; the trait keeps the delivery logic testable.
pub trait Transport: Send + Sync {
    fn send(
        &self,
        request: &RenderedRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<PartnerAnswer, (TransportError, Duration)>> + Send;
}

#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    allow_private: bool,
}

impl HttpTransport {
    /// `allow_private` admits private and loopback partners: for local use only (the partner simulator).
    pub fn new(allow_private: bool) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("ClickPacer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, allow_private })
    }
}

impl Transport for HttpTransport {
    async fn send(
        &self,
        request: &RenderedRequest,
        timeout: Duration,
    ) -> Result<PartnerAnswer, (TransportError, Duration)> {
        let started = Instant::now();
        // Literal IP hosts never reach the resolver: check them here.
        if let Err(e) = check_url(&request.url, self.allow_private) {
            return Err((TransportError::Forbidden(e.to_string()), started.elapsed()));
        }
        let mut builder = self.client.request(request.method.clone(), request.url.clone()).timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(content_type) = &request.content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(|e| (transport_error(&e), started.elapsed()))?;
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = Vec::new();
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room == 0 {
                        break;
                    }
                }
                Ok(None) => break,
                // The status arrived; a body cut short does not change what the partner answered.
                Err(_) => break,
            }
        }
        Ok(PartnerAnswer { status, retry_after, body, latency: started.elapsed() })
    }
}

fn transport_error(e: &reqwest::Error) -> TransportError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ssrf) = err.downcast_ref::<SsrfError>() {
            return TransportError::Forbidden(ssrf.to_string());
        }
        source = err.source();
    }
    let detail = error_chain(e);
    if e.is_connect() {
        TransportError::Connect(detail)
    } else if e.is_timeout() {
        // Past the connect phase the request may have been written: ambiguous.
        TransportError::Timeout { request_sent: true }
    } else {
        TransportError::Broken { request_sent: true, detail }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// Resolves with the system resolver, then refuses the name if any address is forbidden (a DNS answer mixing a
/// public and a private address is the rebinding trick).
struct CheckedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let checked = filter_resolved(&host, addrs, allow_private)?;
            Ok(Box::new(checked.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
