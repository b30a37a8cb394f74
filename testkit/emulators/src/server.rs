//! The shared core: an HTTP/1 server on 127.0.0.1 with a random port, per-path request
//! counters, and a queue of scripted faults that run before the provider's own handler.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::state::{RefreshPolicy, State};

/// A scripted misbehaviour, applied to the next matching request(s) before the emulator
/// looks at them.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Latency(Duration),
    /// Answer 429 with `Retry-After` (and the provider's rate-limit headers and body).
    RateLimited {
        /// Seconds to put in `Retry-After`.
        retry_after_secs: u64,
    },
    /// Answer with this status (a 5xx, typically) and a plain-text body.
    Status(u16),
    /// Close the connection without answering.
    DropConnection,
    /// Never answer (the client's timeout ends the request); the request never reaches the
    /// provider's handler, so nothing it would have changed (a spent refresh token) changes.
    Hang,
    /// Answer 200 with a JSON content type and a truncated JSON body.
    MalformedJson,
    /// Answer exactly this.
    Respond(Response),
}

/// One provider's behaviour behind the shared core.
pub trait Flavor: Default + Send + Sync + 'static {
    /// What refresh grants do with the refresh token they consume, until a test changes it.
    const REFRESH_POLICY: RefreshPolicy = RefreshPolicy::Keep;

    /// Answers one request. The state lock is held for the duration.
    fn handle(&self, state: &mut State, req: &Request) -> Response;

    /// The provider's 429 answer.
    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        Response::json(429, serde_json::json!({"error": "rate_limited"}))
            .header("retry-after", &retry_after_secs.to_string())
    }
}

/// A request as the emulators see it: read in full.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// Query parameters (last value wins).
    pub query: BTreeMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Request {
    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The bearer token of the `Authorization` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }

    /// The user and password of a Basic `Authorization` header (RFC 6749 §2.3.1 encoding).
    pub fn basic(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let unescape = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some((unescape(user), unescape(password)))
    }

    /// The body as form fields, or as a flat JSON object of strings (Procore accepts both).
    pub fn form(&self) -> BTreeMap<String, String> {
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
        {
            let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
            return value
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
        }
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// A response an emulator sends.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: text.as_bytes().to_vec(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn into_http(self) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// One request the emulator answered, for checks made after a run: who presented what, and
/// what the answer was.
#[derive(Debug, Clone)]
pub struct Served {
    /// When the request arrived.
    pub at: Instant,
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// The client id presented (Basic header or form field), on token requests.
    pub client_id: Option<String>,
    /// The `refresh_token` form field, on refresh grants.
    pub refresh_token: Option<String>,
    /// The bearer token (an access token or an API key).
    pub bearer: Option<String>,
    /// The status answered; `None` when the connection was dropped or never answered.
    pub status: Option<u16>,
    /// The answer was an injected fault.
    pub fault: bool,
}

/// A seeded probabilistic fault plan: about `per_mille` of every thousand requests meet one
/// of `faults`. The decision depends on the seed, the request's path and body and
/// credentials, and how many identical requests came before, so one credential's requests
/// meet the same faults whatever the interleaving with others.
#[derive(Debug, Clone)]
pub struct ProviderChaos {
    /// The seed.
    pub seed: u64,
    /// Faulted requests per thousand.
    pub per_mille: u64,
    /// The faults to pick from.
    pub faults: Vec<Fault>,
}

struct ChaosState {
    plan: ProviderChaos,
    seen: HashMap<u64, u64>,
    injected: usize,
}

/// SplitMix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl ChaosState {
    fn decide(&mut self, request: &Request) -> Option<Fault> {
        if self.plan.faults.is_empty() {
            return None;
        }
        let fingerprint = [
            request.path.as_bytes(),
            request
                .header("authorization")
                .unwrap_or_default()
                .as_bytes(),
            &request.body,
        ]
        .iter()
        .flat_map(|part| part.iter().chain(&[0xff]))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let seen = self.seen.entry(fingerprint).or_default();
        let nth = *seen;
        *seen += 1;
        let roll = mix(self.plan.seed ^ mix(fingerprint ^ mix(nth)));
        if roll % 1000 >= self.plan.per_mille {
            return None;
        }
        self.injected += 1;
        let pick = (roll >> 20) % self.plan.faults.len() as u64;
        Some(self.plan.faults[pick as usize].clone())
    }
}

struct ScriptedFault {
    path: Option<String>,
    remaining: usize,
    fault: Fault,
}

pub(crate) struct Inner<F> {
    pub flavor: F,
    pub state: Mutex<State>,
    faults: Mutex<Vec<ScriptedFault>>,
    counts: Mutex<HashMap<String, usize>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: Mutex<(usize, usize)>,
    chaos: Mutex<Option<ChaosState>>,
    served: Mutex<Vec<Served>>,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a Mutex<(usize, usize)>);

impl<'a> InFlight<'a> {
    fn enter(m: &'a Mutex<(usize, usize)>) -> Self {
        let mut g = lock(m);
        g.0 += 1;
        g.1 = g.1.max(g.0);
        Self(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.0).0 -= 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running emulator of one provider. Stops when dropped.
pub struct Emulator<F: Flavor> {
    pub(crate) inner: Arc<Inner<F>>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl<F: Flavor> Drop for Emulator<F> {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl<F: Flavor> Emulator<F> {
    /// Starts the emulator on 127.0.0.1 with a random port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut state = State::new(format!("http://{addr}"));
        state.refresh_policy = F::REFRESH_POLICY;
        let inner = Arc::new(Inner {
            flavor: F::default(),
            state: Mutex::new(state),
            faults: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            in_flight: Mutex::new((0, 0)),
            chaos: Mutex::new(None),
            served: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&inner)));
        Self {
            inner,
            addr,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`: put this in `spec.endpoint`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests reached `path` (exact path, query ignored), faults included.
    pub fn count(&self, path: &str) -> usize {
        lock(&self.inner.counts).get(path).copied().unwrap_or(0)
    }

    /// The most requests the emulator was answering at once.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.inner.in_flight).1
    }

    /// How many requests reached the emulator in total.
    pub fn total_requests(&self) -> usize {
        lock(&self.inner.counts).values().sum()
    }

    /// Applies `fault` to the next `n` requests, whatever their path.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.script(None, n, fault);
    }

    /// Applies `fault` to the next `n` requests for `path` (exact path).
    pub fn fail_next_on(&self, path: &str, n: usize, fault: Fault) {
        self.script(Some(path.to_owned()), n, fault);
    }

    fn script(&self, path: Option<String>, remaining: usize, fault: Fault) {
        if remaining == 0 {
            return;
        }
        lock(&self.inner.faults).push(ScriptedFault {
            path,
            remaining,
            fault,
        });
    }

    /// Starts a seeded probabilistic fault plan, or stops it with `None`. Scripted faults
    /// ([`Emulator::fail_next`]) come first.
    pub fn set_chaos(&self, plan: Option<ProviderChaos>) {
        *lock(&self.inner.chaos) = plan.map(|plan| ChaosState {
            plan,
            seen: HashMap::new(),
            injected: 0,
        });
    }

    /// Faults the running chaos plan has injected.
    pub fn chaos_injected(&self) -> usize {
        lock(&self.inner.chaos).as_ref().map_or(0, |c| c.injected)
    }

    /// Every request answered (or dropped) so far, oldest first.
    pub fn served(&self) -> Vec<Served> {
        lock(&self.inner.served).clone()
    }

    /// Runs `f` with the emulator's state (accounts, clients, tokens).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut lock(&self.inner.state))
    }

    /// The provider-specific part, for its own knobs.
    pub(crate) fn flavor(&self) -> &F {
        &self.inner.flavor
    }
}

async fn accept_loop<F: Flavor>(listener: TcpListener, inner: Arc<Inner<F>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            // A DropConnection fault notifies this, and the connection is dropped unanswered.
            let drop_now = Arc::new(Notify::new());
            let service = {
                let drop_now = Arc::clone(&drop_now);
                service_fn(move |req| {
                    let inner = Arc::clone(&inner);
                    let drop_now = Arc::clone(&drop_now);
                    async move { Ok::<_, Infallible>(serve(&inner, req, &drop_now).await) }
                })
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = drop_now.notified() => {}
            }
        });
    }
}

async fn serve<F: Flavor>(
    inner: &Inner<F>,
    req: http::Request<hyper::body::Incoming>,
    drop_now: &Notify,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request = Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    *lock(&inner.counts).entry(request.path.clone()).or_default() += 1;
    let _in_flight = InFlight::enter(&inner.in_flight);
    let form = request.form();
    let mut record = Served {
        at: Instant::now(),
        method: request.method.clone(),
        path: request.path.clone(),
        client_id: request
            .basic()
            .map(|(id, _)| id)
            .or_else(|| form.get("client_id").cloned()),
        refresh_token: form.get("refresh_token").cloned(),
        bearer: request.bearer().map(str::to_owned),
        status: None,
        fault: false,
    };

    let fault = {
        let mut faults = lock(&inner.faults);
        let index = faults
            .iter()
            .position(|f| f.path.as_deref().is_none_or(|p| p == request.path));
        index.map(|i| {
            let fault = faults[i].fault.clone();
            faults[i].remaining -= 1;
            if faults[i].remaining == 0 {
                faults.remove(i);
            }
            fault
        })
    };
    let fault = fault.or_else(|| lock(&inner.chaos).as_mut()?.decide(&request));
    record.fault = fault
        .as_ref()
        .is_some_and(|f| !matches!(f, Fault::Latency(_)));
    let response = match fault {
        Some(Fault::Latency(delay)) => {
            tokio::time::sleep(delay).await;
            None
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            Some(inner.flavor.rate_limited(retry_after_secs))
        }
        Some(Fault::Status(status)) => Some(Response::text(status, "upstream trouble")),
        Some(Fault::MalformedJson) => Some(Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"access_token": "trunc"#.to_vec(),
        }),
        Some(Fault::Respond(response)) => Some(response),
        Some(Fault::DropConnection) => {
            lock(&inner.served).push(record.clone());
            drop_now.notify_one();
            std::future::pending::<()>().await;
            None
        }
        Some(Fault::Hang) => {
            lock(&inner.served).push(record.clone());
            std::future::pending::<()>().await;
            None
        }
        None => None,
    };
    let response = response.unwrap_or_else(|| {
        let mut state = lock(&inner.state);
        inner.flavor.handle(&mut state, &request)
    });
    record.status = Some(response.status);
    lock(&inner.served).push(record);
    response.into_http()
}
