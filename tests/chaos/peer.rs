//! An observing, faulting proxy in front of the OAuth peer (oidc-provider, testkit/oauth-peer)
//! for the reliability runs.
//!
//! The peer is someone else's OAuth server: it keeps no request log like our emulators do,
//! and its refresh tokens carry no parent. The proxy gives the checker both: every request it
//! forwards is recorded as an emulator's [`Served`] (who presented which refresh token,
//! client id or access token, and the answer), and every successful refresh grant links the
//! token presented to the one the peer answered with. It also injects a seeded fault plan
//! like the emulators' (429 with Retry-After, 500, 503, a dropped connection, a hang), and
//! rewrites the peer's own origin in its answers (discovery metadata) to the proxy's, so the
//! operator reaches every endpoint through it.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reconnect_emulators::Served;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fault the proxy can answer with instead of the peer.
#[derive(Clone, Copy, Debug)]
enum Fault {
    RateLimited,
    Status(u16),
    Drop,
    Hang,
}

const FAULTS: [Fault; 5] = [
    Fault::Hang,
    Fault::RateLimited,
    Fault::Status(500),
    Fault::Status(503),
    Fault::Drop,
];

struct Chaos {
    seed: u64,
    per_mille: u64,
    seen: HashMap<u64, u64>,
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Chaos {
    /// Depends on the request (path, credentials, body) and how many identical ones came
    /// before, as the emulators' plan does.
    fn decide(&mut self, path: &str, authorization: &str, body: &[u8]) -> Option<Fault> {
        let fingerprint = [path.as_bytes(), authorization.as_bytes(), body]
            .iter()
            .flat_map(|part| part.iter().chain(&[0xff]))
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
        let seen = self.seen.entry(fingerprint).or_default();
        let nth = *seen;
        *seen += 1;
        let roll = mix(self.seed ^ mix(fingerprint ^ mix(nth)));
        if roll % 1000 >= self.per_mille {
            return None;
        }
        Some(FAULTS[((roll >> 20) % FAULTS.len() as u64) as usize])
    }
}

#[derive(Default)]
struct Log {
    served: Vec<Served>,
    /// Refresh token presented -> the one the peer answered with.
    children: HashMap<String, String>,
    /// Every token the peer answered with (access and refresh tokens).
    minted: BTreeSet<String>,
    injected: usize,
}

struct Shared {
    upstream: String,
    origin: String,
    http: reqwest::Client,
    log: Mutex<Log>,
    chaos: Mutex<Option<Chaos>>,
}

/// The proxy; dropping it stops it.
pub struct PeerProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerProxy {
    /// A proxy on a free loopback port in front of the peer at `upstream` (its issuer).
    pub async fn start(upstream: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            origin: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain http client"),
            log: Mutex::default(),
            chaos: Mutex::default(),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// What to put in `spec.endpoint`: the issuer, as reached through the proxy.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request forwarded or faulted, oldest first.
    pub fn served(&self) -> Vec<Served> {
        lock(&self.shared.log).served.clone()
    }

    /// Refresh token presented -> the refresh token the peer answered with.
    pub fn children(&self) -> HashMap<String, String> {
        lock(&self.shared.log).children.clone()
    }

    /// Every token the peer answered with.
    pub fn minted(&self) -> BTreeSet<String> {
        lock(&self.shared.log).minted.clone()
    }

    /// Starts a seeded fault plan on about `per_mille` of every thousand requests, or stops
    /// it.
    pub fn set_chaos(&self, seed: u64, per_mille: Option<u64>) {
        *lock(&self.shared.chaos) = per_mille.map(|per_mille| Chaos {
            seed,
            per_mille,
            seen: HashMap::new(),
        });
    }

    /// Faults injected so far.
    pub fn chaos_injected(&self) -> usize {
        lock(&self.shared.log).injected
    }
}

type Body = Full<Bytes>;

fn text(status: u16, body: &str) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
    response
}

fn form(body: &[u8]) -> HashMap<String, String> {
    oauth2::url::form_urlencoded::parse(body)
        .into_owned()
        .collect()
}

/// The client id of HTTP Basic client authentication (RFC 6749 §2.3.1: form-encoded).
fn basic_client_id(authorization: &str) -> Option<String> {
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, _) = decoded.split_once(':')?;
    oauth2::url::form_urlencoded::parse(format!("id={id}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::io::Error> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fields = form(&body);
    let mut record = Served {
        at,
        method: parts.method.clone(),
        path: path.clone(),
        client_id: basic_client_id(&authorization).or_else(|| fields.get("client_id").cloned()),
        refresh_token: fields.get("refresh_token").cloned(),
        // A probe of the generic provider is an introspection of the access token.
        bearer: authorization
            .strip_prefix("Bearer ")
            .map(str::to_owned)
            .or_else(|| fields.get("token").cloned()),
        status: None,
        fault: false,
    };
    let fault = lock(&shared.chaos)
        .as_mut()
        .and_then(|c| c.decide(&path, &authorization, &body));
    if let Some(fault) = fault {
        record.fault = true;
        let answer = match fault {
            Fault::RateLimited => {
                let mut r = text(429, "{\"error\":\"slow_down\"}");
                r.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("1"));
                Some(r)
            }
            Fault::Status(status) => Some(text(status, "upstream trouble")),
            Fault::Drop | Fault::Hang => None,
        };
        if let Some(r) = &answer {
            record.status = Some(r.status().as_u16());
        }
        {
            let mut log = lock(&shared.log);
            log.injected += 1;
            log.served.push(record);
        }
        return match (fault, answer) {
            (_, Some(answer)) => Ok(answer),
            (Fault::Hang, None) => std::future::pending().await,
            _ => Err(std::io::Error::other("dropped by the fault plan")),
        };
    }

    // In a task of its own: a client that gives up (a timeout) does not cancel a request the
    // peer may already be answering, and the answer is still recorded.
    tokio::spawn(forward(shared, parts, body, record))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the forwarding task failed")))
}

async fn forward(
    shared: Arc<Shared>,
    parts: http::request::Parts,
    body: Bytes,
    mut record: Served,
) -> Result<hyper::Response<Body>, std::io::Error> {
    let path = parts.uri.path().to_owned();
    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = shared.http.request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            forward = forward.header(name, value);
        }
    }
    let answer = match forward.send().await {
        Ok(answer) => answer,
        Err(_) => {
            let mut log = lock(&shared.log);
            log.served.push(record);
            return Err(std::io::Error::other("the peer did not answer"));
        }
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let rewritten = String::from_utf8_lossy(&bytes).replace(&shared.upstream, &shared.origin);
    record.status = Some(status);
    {
        let mut log = lock(&shared.log);
        if status == 200
            && path.ends_with("/token")
            && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            let minted = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            if let (Some(parent), Some(child)) =
                (record.refresh_token.clone(), minted("refresh_token"))
            {
                log.children.insert(parent, child);
            }
            for token in ["access_token", "refresh_token"]
                .into_iter()
                .filter_map(minted)
            {
                log.minted.insert(token);
            }
        }
        log.served.push(record);
    }
    let mut response = text(status, "");
    *response.body_mut() = Full::new(Bytes::from(rewritten));
    for (name, value) in &headers {
        if name != http::header::CONTENT_LENGTH
            && name != http::header::TRANSFER_ENCODING
            && name != http::header::CONNECTION
        {
            response.headers_mut().append(name, value.clone());
        }
    }
    Ok::<_, std::io::Error>(response)
}
