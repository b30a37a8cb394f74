//! The world both reliability runs share: provider emulators and the OAuth peer (behind an
//! observing proxy) with good and weak accounts,
//! N ConnectorCredentials over several providers and auth types, Integrations whose
//! Deployments roll after swaps, seeded rotations among good, weak, dead and short-token
//! material, a recorder of what the cluster showed, and the checker.
//!
//! Every secret value the test makes carries the canary `cnry` (client ids are identifiers,
//! not secrets, and carry none); the emulators' tokens are known by value. The checker's independent log is the emulators' own record of what they
//! served ([`reconnect_emulators::Served`]) and the material the test wrote, with the revision
//! computed here (not by the operator's code).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use reconnect_apiserver::TestCluster;
use reconnect_emulators::{
    Account, Emulator, Fault, Flavor, OAuth2Emulator, ProcoreEmulator, ProviderChaos,
    SafetyCultureEmulator, Served,
};
use reconnect_oauth_peer::{NewClient, OAuthPeer, PeerClient, RefreshTokenState};
use reconnect_operator::api::{ConnectorCredential, Integration};

use crate::peer::PeerProxy;
use serde_json::json;
use sha2::{Digest, Sha256};

/// A seeded generator (SplitMix64): every choice the runs make comes from it.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A size from the environment, or the CI default.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed: `RECONNECT_CHAOS_SEED`, else a fixed one (CI is deterministic by default).
pub fn seed() -> u64 {
    env_or("RECONNECT_CHAOS_SEED", 0x0005_eedc_4a05)
}

/// How long the runs wait for convergence before calling a credential stuck:
/// `RECONNECT_CHAOS_CONVERGE` seconds (90; larger runs need more).
pub fn converge_within() -> Duration {
    Duration::from_secs(env_or("RECONNECT_CHAOS_CONVERGE", 90))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Valid, with every required permission.
    Good,
    /// Valid, but the account lacks a required permission.
    Weak,
    /// Unknown to the provider.
    Dead,
    /// Good, with access tokens that live 40 seconds (refreshed every 30).
    Short,
}

impl Kind {
    pub fn passes(self) -> bool {
        matches!(self, Kind::Good | Kind::Short)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    ProcoreClient,
    ProcoreRefresh,
    OAuthClient,
    OAuthRefresh,
    SafetyCultureKey,
    /// The OAuth peer (oidc-provider): client credentials.
    PeerClient,
    /// The OAuth peer: rotating refresh tokens with reuse detection.
    PeerRefresh,
}

const FLAVOURS: [Flavour; 7] = [
    Flavour::ProcoreClient,
    Flavour::ProcoreRefresh,
    Flavour::OAuthClient,
    Flavour::OAuthRefresh,
    Flavour::SafetyCultureKey,
    Flavour::PeerRefresh,
    Flavour::PeerClient,
];

/// Seconds a short-lived access token lives.
const SHORT_LIFETIME: u64 = 40;

/// One piece of source material the test wrote.
#[derive(Clone, Debug)]
pub struct Material {
    pub kind: Kind,
    /// Source keys and values, in the order the operator digests them.
    pub data: Vec<(&'static str, String)>,
    pub revision: String,
}

impl Material {
    fn new(kind: Kind, data: Vec<(&'static str, String)>) -> Self {
        let revision = revision(&data);
        Self {
            kind,
            data,
            revision,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.data
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The revision as DESIGN.md defines it, computed independently of the operator: sha256
/// over (name, 0, big-endian length, value) of each field, in the fixed field order.
fn revision(data: &[(&'static str, String)]) -> String {
    let mut hasher = Sha256::new();
    for field in ["client_id", "client_secret", "refresh_token", "api_key"] {
        if let Some((_, value)) = data.iter().find(|(k, _)| *k == field) {
            hasher.update(field.as_bytes());
            hasher.update([0]);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        }
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub struct Cred {
    pub name: String,
    pub flavour: Flavour,
    /// Every material written to the source Secret, oldest first.
    pub history: Vec<Material>,
    /// Never rotated: short-token material from the start, so its access tokens are
    /// refreshed (and refresh tokens rotated) while the others rotate.
    pub steady: bool,
}

impl Cred {
    pub fn source(&self) -> String {
        format!("{}-src", self.name)
    }

    pub fn target(&self) -> String {
        format!("{}-active", self.name)
    }

    pub fn latest(&self) -> &Material {
        self.history
            .last()
            .expect("every credential starts with material")
    }

    fn by_revision(&self, revision: &str) -> Option<&Material> {
        self.history.iter().find(|m| m.revision == revision)
    }
}

pub struct Integ {
    pub name: String,
    /// Connector name and credential index.
    pub connectors: Vec<(String, usize)>,
    pub deployment: String,
}

/// What the test saw the cluster do, with when it saw it.
#[derive(Default)]
pub struct Seen {
    /// Target Secret -> revision -> first time seen holding it.
    pub target_held: HashMap<String, HashMap<String, Instant>>,
    /// Target Secret -> every refresh token it was seen holding.
    pub target_tokens: HashMap<String, BTreeSet<String>>,
    /// Refresh token -> when it was first seen persisted (in a target or a staging Secret).
    pub durable: HashMap<String, Instant>,
    /// Deployment -> the distinct rolls seen: (restartedAt, revisions).
    pub rolls: HashMap<String, Vec<(String, String)>>,
}

pub struct World {
    pub cluster: TestCluster,
    pub seed: u64,
    pub rng: Rng,
    pub procore: ProcoreEmulator,
    pub oauth: OAuth2Emulator,
    pub safety: SafetyCultureEmulator,
    /// The OAuth peer, reached only through `proxy`.
    pub peer: OAuthPeer,
    pub proxy: PeerProxy,
    /// The peer's refresh-token apps: normal, and with 40-second access tokens.
    peer_apps: [PeerClient; 2],
    pub creds: Vec<Cred>,
    pub integrations: Vec<Integ>,
    pub seen: Arc<Mutex<Seen>>,
    serial: u64,
    recorder: Option<tokio::task::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const PROCORE_PERMS: [&str; 2] = ["company:1234", "documents:admin"];
const OAUTH_SCOPES: [&str; 2] = ["read", "write"];
const SAFETY_PERMS: [&str; 1] = ["organisation:role_1"];

impl World {
    /// Emulators with a good and a weak account each, and the refresh-token apps.
    pub async fn new(cluster: TestCluster, seed: u64) -> Self {
        let procore = ProcoreEmulator::start().await;
        procore
            .add_account(Account::new("100", "svc-good@acme.test").with_permissions(PROCORE_PERMS));
        procore.add_account(
            Account::new("200", "svc-weak@acme.test").with_permissions(["company:1234"]),
        );
        let oauth = OAuth2Emulator::start().await;
        oauth.add_account(Account::new("good", "good").with_scopes(OAUTH_SCOPES));
        oauth.add_account(Account::new("weak", "weak").with_scopes(["read"]));
        let safety = SafetyCultureEmulator::start().await;
        safety.add_account(
            Account::new("user_good", "good@acme.test").with_permissions(SAFETY_PERMS),
        );
        safety.add_account(
            Account::new("user_weak", "weak@acme.test").with_permissions(["organisation:role_2"]),
        );
        let app_secret = format!("cnry{seed:x}appsecret");
        procore.add_client("app", &app_secret, None);
        procore.add_client("app-short", &app_secret, None);
        procore.set_token_lifetime("app-short", SHORT_LIFETIME);
        oauth.add_client("app", &app_secret, None);
        oauth.add_client("app-short", &app_secret, None);
        oauth.set_token_lifetime("app-short", SHORT_LIFETIME);
        let peer = OAuthPeer::start().await;
        let proxy = PeerProxy::start(&peer.issuer()).await;
        let mut peer_apps = Vec::new();
        for app in ["app", "app-short"] {
            let client = NewClient::refresh_token(app)
                .secret(&app_secret)
                .scopes(&OAUTH_SCOPES);
            peer_apps.push(peer.add_client(client).await);
        }
        peer.set_client_access_token_ttl("app-short", SHORT_LIFETIME)
            .await;
        let peer_apps: [PeerClient; 2] = peer_apps.try_into().expect("two apps");
        if let Some(standin) = &cluster.standin {
            // A large run makes more changes than the default watch history holds.
            standin.set_history_limit(2_000_000);
        }
        Self {
            cluster,
            seed,
            rng: Rng::new(seed ^ 0x5eed),
            procore,
            oauth,
            safety,
            peer,
            proxy,
            peer_apps,
            creds: Vec::new(),
            integrations: Vec::new(),
            seen: Arc::new(Mutex::new(Seen::default())),
            serial: 0,
            recorder: None,
        }
    }

    pub async fn cleanup(self) {
        self.cluster.cleanup().await;
    }

    pub fn ns(&self) -> &str {
        &self.cluster.namespace
    }

    fn canary(&mut self, what: &str) -> String {
        self.serial += 1;
        format!("cnry{:x}{what}{}", self.seed, self.serial)
    }

    /// New material of `kind` for a credential of `flavour`, registered at its provider.
    async fn mint(&mut self, flavour: Flavour, kind: Kind) -> Material {
        let good = kind != Kind::Weak;
        let app_secret = format!("cnry{:x}appsecret", self.seed);
        match flavour {
            Flavour::ProcoreClient | Flavour::OAuthClient => {
                // A client id is an identifier, not a secret (RFC 6749 §2.2): the operator
                // names an app-only account by it in status and events, so it carries no
                // canary.
                self.serial += 1;
                let id = format!("client-{:x}-{}", self.seed, self.serial);
                let secret = self.canary("secret");
                if kind != Kind::Dead {
                    let account = match (flavour, good) {
                        (Flavour::ProcoreClient, true) => "100",
                        (Flavour::ProcoreClient, false) => "200",
                        (_, true) => "good",
                        (_, false) => "weak",
                    };
                    if flavour == Flavour::ProcoreClient {
                        self.procore.add_client(&id, &secret, Some(account));
                        if kind == Kind::Short {
                            self.procore.set_token_lifetime(&id, SHORT_LIFETIME);
                        }
                    } else {
                        self.oauth.add_client(&id, &secret, Some(account));
                        if kind == Kind::Short {
                            self.oauth.set_token_lifetime(&id, SHORT_LIFETIME);
                        }
                    }
                }
                Material::new(kind, vec![("client_id", id), ("client_secret", secret)])
            }
            Flavour::ProcoreRefresh | Flavour::OAuthRefresh => {
                let app = if kind == Kind::Short {
                    "app-short"
                } else {
                    "app"
                };
                let token = self.canary("rt");
                let account = match (flavour, good) {
                    (Flavour::ProcoreRefresh, true) => "100",
                    (Flavour::ProcoreRefresh, false) => "200",
                    (_, true) => "good",
                    (_, false) => "weak",
                };
                if kind != Kind::Dead {
                    if flavour == Flavour::ProcoreRefresh {
                        self.procore.add_refresh_token(&token, app, account);
                    } else {
                        self.oauth.add_refresh_token(&token, app, account);
                    }
                }
                Material::new(
                    kind,
                    vec![
                        ("client_id", app.to_owned()),
                        ("client_secret", app_secret),
                        ("refresh_token", token),
                    ],
                )
            }
            Flavour::PeerClient => {
                self.serial += 1;
                let id = format!("peer-{:x}-{}", self.seed, self.serial);
                let secret = self.canary("secret");
                if kind != Kind::Dead {
                    let scopes: &[&str] = if good { &OAUTH_SCOPES } else { &["read"] };
                    let client = NewClient::client_credentials(&id)
                        .secret(&secret)
                        .scopes(scopes);
                    self.peer.add_client(client).await;
                    if kind == Kind::Short {
                        self.peer
                            .set_client_access_token_ttl(&id, SHORT_LIFETIME)
                            .await;
                    }
                }
                Material::new(kind, vec![("client_id", id), ("client_secret", secret)])
            }
            Flavour::PeerRefresh => {
                let app = usize::from(kind == Kind::Short);
                let token = if kind == Kind::Dead {
                    self.canary("rt")
                } else {
                    // The peer mints its own values (no canary): the checker knows them.
                    let scopes: &[&str] = if good { &OAUTH_SCOPES } else { &["read"] };
                    let account = if good { "good" } else { "weak" };
                    self.peer
                        .refresh_token_for(&self.peer_apps[app], account, scopes)
                        .await
                };
                Material::new(
                    kind,
                    vec![
                        ("client_id", self.peer_apps[app].id.clone()),
                        ("client_secret", app_secret),
                        ("refresh_token", token),
                    ],
                )
            }
            Flavour::SafetyCultureKey => {
                let key = self.canary("key");
                if kind != Kind::Dead {
                    let account = if good { "user_good" } else { "user_weak" };
                    self.safety.add_api_key(&key, account);
                }
                Material::new(kind, vec![("api_key", key)])
            }
        }
    }

    fn spec(&self, cred: &Cred) -> serde_json::Value {
        let (provider, auth, endpoint, required, params) = match cred.flavour {
            Flavour::ProcoreClient => (
                "procore",
                "ClientCredentials",
                self.procore.base_url(),
                &PROCORE_PERMS[..],
                json!({"companyId": "1234"}),
            ),
            Flavour::ProcoreRefresh => (
                "procore",
                "RefreshToken",
                self.procore.base_url(),
                &PROCORE_PERMS[..],
                json!({"companyId": "1234"}),
            ),
            Flavour::OAuthClient => (
                "oauth2",
                "ClientCredentials",
                self.oauth.base_url(),
                &OAUTH_SCOPES[..],
                json!({}),
            ),
            Flavour::OAuthRefresh => (
                "oauth2",
                "RefreshToken",
                self.oauth.base_url(),
                &OAUTH_SCOPES[..],
                json!({}),
            ),
            Flavour::SafetyCultureKey => (
                "safetyculture",
                "ApiKey",
                self.safety.base_url(),
                &SAFETY_PERMS[..],
                json!({}),
            ),
            // The peer grants no scope that is not asked for (client credentials); a refresh
            // keeps the scopes of the grant.
            Flavour::PeerClient => (
                "oauth2",
                "ClientCredentials",
                self.proxy.base_url(),
                &OAUTH_SCOPES[..],
                json!({"scope": OAUTH_SCOPES.join(" ")}),
            ),
            Flavour::PeerRefresh => (
                "oauth2",
                "RefreshToken",
                self.proxy.base_url(),
                &OAUTH_SCOPES[..],
                json!({}),
            ),
        };
        json!({
            "provider": provider,
            "auth": auth,
            "secretRef": {"name": cred.source()},
            "endpoint": endpoint,
            "params": params,
            "requiredPermissions": required,
            "permissionPolicy": "Required",
            // No periodic re-validation inside a run: every provider call then belongs to a
            // rotation or a refresh, and can be counted per revision.
            "validation": {"interval": "24h", "timeout": "2s", "failureThreshold": 3},
        })
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    pub fn creds_api(&self) -> Api<ConnectorCredential> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    pub fn integrations_api(&self) -> Api<Integration> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    /// Writes the source Secret, replacing its data.
    async fn write_source(&self, name: &str, material: &Material) {
        let data: BTreeMap<String, String> = material
            .data
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "type": "Opaque", "stringData": data,
        }))
        .expect("static Secret");
        retry("source Secret write", || async {
            match self.secrets().get_opt(name).await? {
                Some(mut existing) => {
                    existing.string_data = secret.string_data.clone();
                    existing.data = None;
                    self.secrets()
                        .replace(name, &PostParams::default(), &existing)
                        .await
                        .map(drop)
                }
                None => self
                    .secrets()
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(drop),
            }
        })
        .await;
    }

    /// Creates `n` credentials with good material, spread over the flavours, and
    /// `n / 5` Integrations of two connectors each with one Deployment to roll.
    pub async fn populate(&mut self, n: usize) {
        for i in 0..n {
            let flavour = FLAVOURS[i % FLAVOURS.len()];
            let steady = i % 7 == 3;
            let kind = if steady { Kind::Short } else { Kind::Good };
            let material = self.mint(flavour, kind).await;
            let cred = Cred {
                name: format!("c{i}"),
                flavour,
                history: vec![material],
                steady,
            };
            self.write_source(&cred.source(), cred.latest()).await;
            let obj = json!({
                "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
                "metadata": {"name": cred.name}, "spec": self.spec(&cred),
            });
            let (api, pp, patch) = (
                self.creds_api(),
                PatchParams::apply("chaos-test").force(),
                Patch::Apply(&obj),
            );
            retry("credential apply", || api.patch(&cred.name, &pp, &patch)).await;
            self.creds.push(cred);
        }
        for j in 0..n / 5 {
            let a = self.rng.below(n as u64) as usize;
            let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            let integ = Integ {
                name: format!("i{j}"),
                connectors: vec![("a".into(), a), ("b".into(), b)],
                deployment: format!("i{j}-sync"),
            };
            let deployment: Deployment = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": integ.deployment},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": integ.deployment}},
                    "template": {
                        "metadata": {"labels": {"app": integ.deployment}},
                        "spec": {"containers": [{"name": "sync", "image": "example/sync:1.0"}]},
                    },
                },
            }))
            .expect("static Deployment");
            retry("Deployment create", || async {
                created(
                    self.deployments()
                        .create(&PostParams::default(), &deployment)
                        .await,
                )
            })
            .await;
            let obj = json!({
                "apiVersion": "reconnect.dev/v1alpha1", "kind": "Integration",
                "metadata": {"name": integ.name},
                "spec": {
                    "connectors": integ.connectors.iter().map(|(c, i)| json!({"name": c, "credentialRef": {"name": self.creds[*i].name}})).collect::<Vec<_>>(),
                    "restartTargets": [{"kind": "Deployment", "name": integ.deployment}],
                },
            });
            let (api, pp, patch) = (
                self.integrations_api(),
                PatchParams::apply("chaos-test").force(),
                Patch::Apply(&obj),
            );
            retry("Integration apply", || api.patch(&integ.name, &pp, &patch)).await;
            self.integrations.push(integ);
        }
    }

    /// Rotates `count` credentials (distinct, not steady) to fresh material of seeded kinds: good 40%,
    /// weak 20%, dead 20%, short-token 20%. Returns the kinds.
    pub async fn rotate(&mut self, count: usize) -> Vec<Kind> {
        let n = self.creds.len();
        let rotating: Vec<usize> = (0..n).filter(|i| !self.creds[*i].steady).collect();
        let mut chosen = BTreeSet::new();
        while chosen.len() < count.min(rotating.len()) {
            chosen.insert(rotating[self.rng.below(rotating.len() as u64) as usize]);
        }
        let mut kinds = Vec::new();
        for i in chosen {
            let kind = match self.rng.below(10) {
                0..=3 => Kind::Good,
                4 | 5 => Kind::Weak,
                6 | 7 => Kind::Dead,
                _ => Kind::Short,
            };
            let material = self.mint(self.creds[i].flavour, kind).await;
            self.write_source(&self.creds[i].source(), &material).await;
            self.creds[i].history.push(material);
            kinds.push(kind);
        }
        kinds
    }

    /// Turns the emulators' seeded fault plans on (about `per_mille` in a thousand provider
    /// calls) or off.
    pub fn provider_chaos(&self, per_mille: Option<u64>) {
        let plan = per_mille.map(|per_mille| ProviderChaos {
            seed: self.seed,
            per_mille,
            faults: vec![
                Fault::Hang,
                Fault::RateLimited {
                    retry_after_secs: 1,
                },
                Fault::Status(500),
                Fault::Status(503),
                Fault::DropConnection,
            ],
        });
        self.procore.set_chaos(plan.clone());
        self.oauth.set_chaos(plan.clone());
        self.safety.set_chaos(plan);
        self.proxy.set_chaos(self.seed, per_mille);
    }

    pub fn provider_faults(&self) -> usize {
        self.procore.chaos_injected()
            + self.oauth.chaos_injected()
            + self.safety.chaos_injected()
            + self.proxy.chaos_injected()
    }

    /// Starts recording what target Secrets and Deployments go through, from watches of the
    /// test's own (never faulted) client.
    pub fn record(&mut self) {
        let secrets = self.secrets();
        let deployments = self.deployments();
        let seen = self.seen.clone();
        self.recorder = Some(tokio::spawn(async move {
            // With backoff: a watch the API server ends under load is resumed, not hammered.
            let secrets = watcher(secrets, watcher::Config::default())
                .default_backoff()
                .boxed();
            let deployments = watcher(deployments, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut secrets = secrets.fuse();
            let mut deployments = deployments.fuse();
            loop {
                tokio::select! {
                    Some(event) = secrets.next() => {
                        let Ok(event) = event else { continue };
                        let mut seen = lock(&seen);
                        for secret in applied(event) {
                            note_secret(&mut seen, &secret);
                        }
                    }
                    Some(event) = deployments.next() => {
                        let Ok(event) = event else { continue };
                        let mut seen = lock(&seen);
                        for d in applied(event) {
                            note_roll(&mut seen, &d);
                        }
                    }
                    else => break,
                }
            }
        }));
    }

    /// Stops the recorder after a last look at every target Secret and Deployment.
    pub async fn stop_recording(&mut self) {
        if let Some(task) = self.recorder.take() {
            task.abort();
            let _ = task.await;
        }
        let secrets = retry("Secret listing", || async {
            self.secrets().list(&ListParams::default()).await
        })
        .await;
        let deployments = retry("Deployment listing", || async {
            self.deployments().list(&ListParams::default()).await
        })
        .await;
        let mut seen = lock(&self.seen);
        for s in &secrets.items {
            note_secret(&mut seen, s);
        }
        for d in &deployments.items {
            note_roll(&mut seen, d);
        }
    }

    /// Waits until every credential settled on its latest material (swapped in when it
    /// passes, rejected when not) and every Integration recorded its credentials' revisions;
    /// returns the names still unsettled when the wait ends.
    /// `crashes`: a refresh-token rotation whose token a killed validation spent may settle
    /// as rejected (spent) instead of active; the checker then requires the kill.
    pub async fn converge(&self, within: Duration, crashes: bool) -> Vec<String> {
        let start = Instant::now();
        let deadline = start + within;
        let mut reported = false;
        loop {
            let unsettled = self.unsettled(crashes).await;
            if unsettled.is_empty() || Instant::now() > deadline {
                return unsettled;
            }
            if !reported && start.elapsed() > Duration::from_secs(10) {
                reported = true;
                eprintln!("still unsettled after 10 s: {unsettled:#?}");
            }
            // Three listings per look: at a large run's size, not more than about one a
            // second, so the test's own polling does not load the API server it measures.
            let every =
                Duration::from_millis(250).max(Duration::from_millis(self.creds.len() as u64));
            tokio::time::sleep(every).await;
        }
    }

    async fn unsettled(&self, crashes: bool) -> Vec<String> {
        let (Ok(creds), Ok(integrations), Ok(secrets)) = (
            self.creds_api().list(&ListParams::default()).await,
            self.integrations_api().list(&ListParams::default()).await,
            self.secrets().list_metadata(&ListParams::default()).await,
        ) else {
            return vec!["(list failed)".into()];
        };
        let by_name: HashMap<_, _> = creds
            .items
            .iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let secrets: HashMap<_, _> = secrets
            .items
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        let mut out = Vec::new();
        let mut active = HashMap::new();
        for cred in &self.creds {
            let status = by_name.get(&cred.name).and_then(|c| c.status.as_ref());
            let latest = cred.latest();
            let held = secrets
                .get(&cred.target())
                .and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get("reconnect.dev/revision"))
                .cloned();
            let active_rev = status.and_then(|s| s.active_revision.clone());
            let spent_by_crash = crashes
                && latest.get("refresh_token").is_some()
                && status
                    .and_then(|s| s.rejected.as_ref())
                    .is_some_and(|r| r.revision == latest.revision)
                && active_rev.is_some()
                && active_rev == held;
            let settled = if latest.kind.passes() {
                (active_rev.as_deref() == Some(&latest.revision)
                    && held.as_deref() == Some(&latest.revision))
                    || spent_by_crash
            } else {
                status
                    .and_then(|s| s.rejected.as_ref())
                    .is_some_and(|r| r.revision == latest.revision)
                    && active_rev.is_some()
                    && active_rev == held
            };
            if !settled {
                out.push(format!(
                    "{} ({:?} {:?}, latest {:?}): phase {:?}, active {:?}, target {:?}, rejected {:?}",
                    cred.name,
                    cred.flavour,
                    cred.history.iter().map(|m| m.kind).collect::<Vec<_>>(),
                    latest.revision,
                    status.and_then(|s| s.phase),
                    active_rev,
                    held,
                    status.and_then(|s| s.rejected.as_ref()).map(|r| (&r.revision, &r.reason)),
                ));
            }
            active.insert(cred.name.clone(), active_rev);
        }
        for integ in &integrations.items {
            let name = integ.metadata.name.clone().unwrap_or_default();
            let Some(status) = &integ.status else {
                out.push(format!("{name}: no status"));
                continue;
            };
            for c in &status.connectors {
                if active.get(&c.credential).cloned().flatten() != c.active_revision {
                    out.push(format!("{name}: connector {} not recorded", c.name));
                }
            }
        }
        out
    }

    /// Every served request of all emulators.
    pub fn served(&self) -> Vec<Served> {
        let mut all = self.procore.served();
        all.extend(self.oauth.served());
        all.extend(self.safety.served());
        all.extend(self.proxy.served());
        all
    }

    /// What went to the OAuth peer: requests (faults injected), successful refresh grants.
    pub fn peer_figures(&self) -> String {
        let served = self.proxy.served();
        let refreshes = served
            .iter()
            .filter(|s| s.status == Some(200) && s.refresh_token.is_some())
            .count();
        format!(
            "{} ({} faults), {refreshes} refresh-token grants",
            served.len(),
            self.proxy.chaos_injected()
        )
    }

    /// Every secret value in play: the materials written and every token the emulators
    /// minted.
    pub fn secret_values(&self) -> BTreeSet<String> {
        let mut values = BTreeSet::new();
        for cred in &self.creds {
            for m in &cred.history {
                for (_, v) in &m.data {
                    values.insert(v.clone());
                }
            }
        }
        fn tokens<F: Flavor>(emu: &Emulator<F>, out: &mut BTreeSet<String>) {
            emu.with_state(|s| {
                out.extend(s.access_tokens.keys().cloned());
                out.extend(s.refresh_tokens.keys().cloned());
            });
        }
        tokens(&self.procore, &mut values);
        tokens(&self.oauth, &mut values);
        values.extend(self.proxy.minted());
        values
    }

    /// Everything the operator published: events, statuses (as JSON text).
    pub async fn published(&self) -> String {
        let events_api = Api::<Event>::namespaced(self.cluster.client.clone(), self.ns());
        let events = retry("Event listing", || async {
            events_api.list(&ListParams::default()).await
        })
        .await;
        let creds = retry("credential listing", || async {
            self.creds_api().list(&ListParams::default()).await
        })
        .await;
        let integrations = retry("Integration listing", || async {
            self.integrations_api().list(&ListParams::default()).await
        })
        .await;
        let statuses: Vec<_> = creds.items.iter().map(|c| json!(c.status)).collect();
        let istatuses: Vec<_> = integrations.items.iter().map(|i| json!(i.status)).collect();
        format!(
            "{}\n{}\n{}",
            serde_json::to_string(&events.items).unwrap_or_default(),
            serde_json::to_string(&statuses).unwrap_or_default(),
            serde_json::to_string(&istatuses).unwrap_or_default()
        )
    }
}

fn applied<K>(event: watcher::Event<K>) -> Vec<K> {
    match event {
        watcher::Event::Apply(k) | watcher::Event::InitApply(k) => vec![k],
        _ => Vec::new(),
    }
}

/// The suffix of the operator's staging Secrets (the write-ahead of rotated refresh tokens).
const STAGING_SUFFIX: &str = ".reconnect-staging";

fn note_secret(seen: &mut Seen, secret: &Secret) {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("refresh_token"))
        .map(|t| String::from_utf8_lossy(&t.0).into_owned());
    let operators = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|m| m == "reconnect-operator");
    if operators && let Some(token) = &token {
        seen.durable
            .entry(token.clone())
            .or_insert_with(Instant::now);
    }
    if name.ends_with(STAGING_SUFFIX) {
        return;
    }
    let Some(rev) = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("reconnect.dev/revision"))
    else {
        return;
    };
    seen.target_held
        .entry(name.clone())
        .or_default()
        .entry(rev.clone())
        .or_insert_with(Instant::now);
    if let Some(token) = secret.data.as_ref().and_then(|d| d.get("refresh_token")) {
        seen.target_tokens
            .entry(name)
            .or_default()
            .insert(String::from_utf8_lossy(&token.0).into_owned());
    }
}

fn note_roll(seen: &mut Seen, d: &Deployment) {
    let name = d.metadata.name.clone().unwrap_or_default();
    let annotations = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let (Some(at), Some(revisions)) = (
        annotations.get("reconnect.dev/restartedAt"),
        annotations.get("reconnect.dev/revisions"),
    ) else {
        return;
    };
    let rolls = seen.rolls.entry(name).or_default();
    if rolls.last().is_none_or(|(last, _)| last != at) {
        rolls.push((at.clone(), revisions.clone()));
    }
}

/// Retries a test-side API call with exponential backoff (200 ms doubling to 5 s, about a
/// minute in all): a real API server under a large run's load answers the test's own
/// requests slowly, with 429 or 5xx, or times out; none of that is what the test checks.
pub async fn retry<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut wait = Duration::from_millis(200);
    for attempt in 0.. {
        match call().await {
            Ok(value) => return value,
            Err(e) if attempt < 15 => {
                eprintln!("retrying the test's {what} in {wait:?}: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => panic!("the test's {what} failed: {e}"),
        }
    }
    unreachable!("the loop returns")
}

/// `Ok` for a create that an earlier attempt made already (409 AlreadyExists).
fn created<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// One SIGKILL of the operator: just before the signal, and once the process was reaped.
/// A provider request stamped between the two may come from either life.
#[derive(Clone, Copy, Debug)]
pub struct Kill {
    pub sent: Instant,
    pub dead: Instant,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Findings {
    pub validated_swaps: usize,
    /// Weak and dead material the provider was asked about (and that was not swapped in).
    pub rejected_rotations: usize,
    /// Rotations replaced in the source before the operator asked the provider about them.
    pub overwritten_unseen: usize,
    pub unvalidated: Vec<String>,
    pub lost_tokens: Vec<String>,
    pub revalidated: Vec<String>,
    pub bad_rolls: Vec<String>,
    pub leaks: Vec<String>,
    pub rolls: usize,
    /// Successful token grants that presented a refresh token the provider minted (refreshes
    /// and re-presented rotated tokens), and grants/probes of short-token client credentials
    /// beyond their first.
    pub refreshes: usize,
    /// Revisions validated more than once, each time with a kill in between.
    pub validated_again_after_kill: usize,
    /// Refresh-token chains a kill cut inside the unavoidable window: the provider had
    /// rotated the token (the old one is spent) and the process died before the new one
    /// was persisted anywhere (staging or target Secret); with the longest time from that
    /// grant's request to the kill. A chain cut after its token was persisted is a lost
    /// token, never counted here.
    pub cut_in_window: usize,
    pub cut_in_window_max_gap: Duration,
    /// Refresh tokens presented again after the provider had spent them, outside a window a
    /// kill explains.
    pub spent_presented: Vec<String>,
    /// Spent refresh tokens presented again by the next life after a kill inside the window.
    pub spent_presented_in_window: usize,
}

/// How long after a SIGKILL a request the dead process had already sent may still reach an
/// emulator or the API server.
const ORPHAN_SLACK: Duration = Duration::from_millis(500);

/// The first kill that ended after `at` (or just before: a request the dying process sent
/// may be stamped after its death).
fn first_kill_after(kills: &[Kill], at: Instant) -> Option<&Kill> {
    kills
        .iter()
        .filter(|k| k.dead + ORPHAN_SLACK > at)
        .min_by_key(|k| k.sent)
}

/// The longest the unavoidable window (from a token grant's request to the first durable
/// write of the token it minted) may plausibly last: `RECONNECT_CHAOS_WINDOW_MS` (10,000).
/// A kill later than that after the grant does not excuse a lost chain.
pub fn window_bound() -> Duration {
    Duration::from_millis(env_or("RECONNECT_CHAOS_WINDOW_MS", 10_000))
}

impl World {
    /// The checker: run after convergence, with the recorder stopped.
    /// `kills`: when the operator was SIGKILLed (crash runs), so that a revision validated
    /// twice can be told apart: allowed only with a kill between the two validations (nothing
    /// was persisted yet), never without one.
    pub async fn check(&self, texts: &[(&str, &str)], kills: Option<&[Kill]>) -> Findings {
        let mut f = Findings::default();
        let secrets: HashMap<String, Secret> = retry("Secret listing", || async {
            self.secrets().list(&ListParams::default()).await
        })
        .await
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
        let creds: HashMap<String, ConnectorCredential> = retry("credential listing", || async {
            self.creds_api().list(&ListParams::default()).await
        })
        .await
        .items
        .into_iter()
        .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
        .collect();
        let served = self.served();
        // The peer's chains, from what its proxy saw; whether a token is still good, from the
        // peer itself (its reuse detection may have revoked a whole chain).
        let peer_children = self.proxy.children();
        let mut peer_tokens: BTreeSet<String> = peer_children.values().cloned().collect();
        for cred in self
            .creds
            .iter()
            .filter(|c| c.flavour == Flavour::PeerRefresh)
        {
            for m in &cred.history {
                peer_tokens.extend(m.get("refresh_token").map(str::to_owned));
            }
        }
        let mut peer_valid = BTreeSet::new();
        for token in &peer_tokens {
            if matches!(
                self.peer.refresh_token_state(token).await,
                RefreshTokenState::Active { .. }
            ) {
                peer_valid.insert(token.clone());
            }
        }
        let seen = lock(&self.seen);

        // Successful presentations of each material at its provider, with times.
        let mut accepted: HashMap<String, Vec<Instant>> = HashMap::new();
        let mut presented_at_all: BTreeSet<String> = BTreeSet::new();
        for s in &served {
            let key = if s.path.ends_with("token") && s.refresh_token.is_some() {
                s.refresh_token.clone()
            } else if s.path.ends_with("token") {
                s.client_id.clone()
            } else {
                s.bearer.clone()
            };
            let Some(key) = key else { continue };
            if s.status.is_some() && !s.fault {
                presented_at_all.insert(key.clone());
            }
            if s.status == Some(200) {
                accepted.entry(key).or_default().push(s.at);
            }
        }
        // Refresh-token chains: parent -> child, at each emulator.
        let mut children: HashMap<String, String> = HashMap::new();
        let mut valid: BTreeSet<String> = BTreeSet::new();
        for emu_state in [
            self.procore.with_state(|s| s.refresh_tokens.clone()),
            self.oauth.with_state(|s| s.refresh_tokens.clone()),
        ] {
            for (token, record) in emu_state {
                if let Some(parent) = &record.parent {
                    children.insert(parent.clone(), token.clone());
                }
                if !record.used && !record.revoked {
                    valid.insert(token);
                }
            }
        }
        children.extend(peer_children.clone());
        valid.extend(peer_valid);

        for cred in &self.creds {
            // Swaps and rejections, from what the target was seen holding.
            let held = seen.target_held.get(&cred.target());
            for (i, m) in cred.history.iter().enumerate() {
                let was_held = held.is_some_and(|h| h.contains_key(&m.revision));
                if i > 0 && was_held {
                    f.validated_swaps += 1;
                }
                let presented = m
                    .get("refresh_token")
                    .or(m.get("api_key"))
                    .or(m.get("client_id"))
                    .unwrap_or_default();
                if !presented_at_all.contains(presented) {
                    f.overwritten_unseen += usize::from(i > 0);
                } else if !m.kind.passes() {
                    f.rejected_rotations += 1;
                }
            }
            // 1. Nothing unvalidated ever held: every revision a target held is material
            // that passes and that its provider accepted.
            for revision in held.into_iter().flat_map(|h| h.keys()) {
                let Some(m) = cred.by_revision(revision) else {
                    f.unvalidated
                        .push(format!("{}: unknown revision {revision}", cred.name));
                    continue;
                };
                let presented = m
                    .get("refresh_token")
                    .or(m.get("api_key"))
                    .or(m.get("client_id"))
                    .unwrap_or_default();
                if !m.kind.passes() || !accepted.contains_key(presented) {
                    f.unvalidated.push(format!(
                        "{}: target held {:?} material {revision} (provider accepted it: {})",
                        cred.name,
                        m.kind,
                        accepted.contains_key(presented)
                    ));
                }
            }
            let target = secrets.get(&cred.target());
            let target_data = |key: &str| {
                target
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get(key))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            };
            let active = creds
                .get(&cred.name)
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.active_revision.clone());
            let Some(active) = active.and_then(|r| cred.by_revision(&r).cloned()) else {
                f.unvalidated
                    .push(format!("{}: no known active revision", cred.name));
                continue;
            };
            // The target's material is the active revision's.
            for key in ["client_id", "client_secret", "api_key"] {
                if active.get(key).map(str::to_owned) != target_data(key) {
                    f.unvalidated.push(format!(
                        "{}: target {key} is not the active material's",
                        cred.name
                    ));
                }
            }
            // 2. No refresh token lost: the chain from the active source token ends in the
            // token the target holds, and the provider still takes it.
            if let Some(root) = active.get("refresh_token") {
                let mut chain = vec![root.to_owned()];
                while let Some(next) = children.get(chain.last().expect("not empty")) {
                    chain.push(next.clone());
                }
                let leaf = chain.last().expect("not empty").clone();
                let holds = target_data("refresh_token");
                // The grant that minted the leaf, and the first kill after it.
                let minted_at = chain.len().checked_sub(2).and_then(|parent| {
                    served
                        .iter()
                        .filter(|s| {
                            s.status == Some(200)
                                && s.refresh_token.as_deref() == Some(chain[parent].as_str())
                        })
                        .map(|s| s.at)
                        .min()
                });
                // The first kill after that grant, and whether the leaf had been seen
                // persisted before it (a write the dying process sent may still land after
                // the kill: that is inside the window).
                let cutting = kills.and_then(|kills| first_kill_after(kills, minted_at?));
                let cut = cutting.map(|k| {
                    k.sent
                        .saturating_duration_since(minted_at.unwrap_or(k.sent))
                });
                let persisted = seen
                    .durable
                    .get(&leaf)
                    .is_some_and(|at| cutting.is_none_or(|k| *at < k.sent));
                let lost = holds.as_deref() != Some(leaf.as_str()) || !valid.contains(&leaf);
                if let (Some(gap), false, true) = (cut, persisted, lost)
                    && gap <= window_bound()
                {
                    f.cut_in_window += 1;
                    f.cut_in_window_max_gap = f.cut_in_window_max_gap.max(gap);
                } else if holds.as_deref() != Some(leaf.as_str()) || !valid.contains(&leaf) {
                    let at = holds
                        .as_ref()
                        .and_then(|h| chain.iter().position(|t| t == h));
                    for (i, token) in chain.iter().enumerate() {
                        let uses: Vec<_> = served
                            .iter()
                            .filter(|s| s.refresh_token.as_deref() == Some(token.as_str()))
                            .map(|s| (s.at.elapsed().as_millis(), s.status, s.fault))
                            .collect();
                        eprintln!(
                            "{}: token {i} presented (ms ago, status, fault): {uses:?}",
                            cred.name
                        );
                    }
                    if let Some(held) = held {
                        let mut held: Vec<_> = held
                            .iter()
                            .map(|(r, t)| (t.elapsed().as_millis(), r.clone()))
                            .collect();
                        held.sort();
                        eprintln!(
                            "{}: target held (ms ago, revision): {held:?}; history {:?}",
                            cred.name,
                            cred.history
                                .iter()
                                .map(|m| (m.kind, m.revision.clone()))
                                .collect::<Vec<_>>()
                        );
                    }
                    f.lost_tokens.push(format!(
                        "{} ({:?}): chain of {} tokens, the target holds token {at:?}; its end is a token the target {} (persisted: {persisted}; provider takes it: {}; a kill {cut:?} after its grant)",
                        cred.name,
                        cred.flavour,
                        chain.len(),
                        if seen.target_tokens.get(&cred.target()).is_some_and(|t| t.contains(&leaf)) {
                            "held once but no longer holds"
                        } else {
                            "never held"
                        },
                        valid.contains(&leaf)
                    ));
                }
            }
            // 2b. A good refresh-token rotation rejected (its token spent when presented, or
            // spent again by the provider on the way): only a kill between its grant and the
            // target write may cause that.
            let latest = cred.latest();
            let rejected = creds
                .get(&cred.name)
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.rejected.as_ref())
                .is_some_and(|r| r.revision == latest.revision);
            if latest.kind.passes() && rejected {
                // The rotation's chain may have gone on through several lives; the token lost
                // is its end, minted by the grant that spent the one before.
                let mut chain: Vec<String> = latest
                    .get("refresh_token")
                    .map(str::to_owned)
                    .into_iter()
                    .collect();
                while let Some(next) = chain.last().and_then(|t| children.get(t)) {
                    chain.push(next.clone());
                }
                let granted = chain.len().checked_sub(2).and_then(|parent| {
                    served
                        .iter()
                        .filter(|s| {
                            s.status == Some(200)
                                && s.refresh_token.as_deref() == Some(chain[parent].as_str())
                        })
                        .map(|s| s.at)
                        .min()
                });
                let cutting = kills
                    .zip(granted)
                    .and_then(|(kills, granted)| first_kill_after(kills, granted));
                let cut = cutting
                    .zip(granted)
                    .map(|(k, g)| k.sent.saturating_duration_since(g));
                let held_once = held.is_some_and(|h| h.contains_key(&latest.revision));
                // Excused only if the chain's end was not persisted before the kill.
                let persisted = chain
                    .last()
                    .filter(|_| chain.len() > 1)
                    .and_then(|leaf| seen.durable.get(leaf))
                    .is_some_and(|at| cutting.is_none_or(|k| *at < k.sent));
                match cut {
                    Some(gap) if !held_once && !persisted && gap <= window_bound() => {
                        f.cut_in_window += 1;
                        f.cut_in_window_max_gap = f.cut_in_window_max_gap.max(gap);
                    }
                    _ => {
                        let why = creds
                            .get(&cred.name)
                            .and_then(|c| c.status.as_ref())
                            .and_then(|s| s.rejected.as_ref())
                            .map(|r| format!("{:?} (spent: {}): {}", r.reason, r.spent, r.message))
                            .unwrap_or_default();
                        let presented: Vec<_> = latest
                            .get("refresh_token")
                            .map(|root| {
                                served
                                    .iter()
                                    .filter(|s| s.refresh_token.as_deref() == Some(root))
                                    .map(|s| (s.at.elapsed().as_millis(), s.status, s.fault))
                                    .collect()
                            })
                            .unwrap_or_default();
                        f.lost_tokens.push(format!(
                            "{} ({:?}): good revision {} rejected: {why} (a chain of {} tokens; its end granted: {}; the source's token presented (ms ago, status, fault): {presented:?}; a kill after: {cut:?}; held once: {held_once}; its end persisted: {persisted})",
                            cred.name,
                            cred.flavour,
                            latest.revision,
                            chain.len(),
                            granted.is_some(),
                        ))
                    }
                }
            }
            // 3b. In a crash run, a second validation needs a kill before it.
            for m in &cred.history {
                let short_client = m.kind == Kind::Short && m.get("refresh_token").is_none();
                let presented = m
                    .get("refresh_token")
                    .or(m.get("api_key"))
                    .or(m.get("client_id"))
                    .unwrap_or_default();
                let mut times = accepted.get(presented).cloned().unwrap_or_default();
                times.sort();
                if short_client {
                    f.refreshes += times.len().saturating_sub(1);
                    continue;
                }
                let Some(kills) = kills else { continue };
                if times.len() > 1 {
                    let unexplained = times
                        .windows(2)
                        .filter(|w| !kills.iter().any(|k| w[0] < k.dead && k.sent < w[1]))
                        .count();
                    if unexplained > 0 {
                        f.revalidated.push(format!(
                            "{}: {:?} revision {} validated {} times, {unexplained} of them with no kill since the one before",
                            cred.name,
                            cred.flavour,
                            m.revision,
                            times.len()
                        ));
                    } else {
                        f.validated_again_after_kill += 1;
                    }
                }
            }
            // 3. Nothing validated again once the target held it (crash or not). Short-token
            // client credentials mint a token per refresh, so only tokens' first use counts
            // for them.
            for m in &cred.history {
                let Some(since) = held.and_then(|h| h.get(&m.revision)) else {
                    continue;
                };
                let presented = m
                    .get("refresh_token")
                    .or(m.get("api_key"))
                    .or(m.get("client_id"))
                    .unwrap_or_default();
                if m.kind == Kind::Short && m.get("refresh_token").is_none() {
                    continue;
                }
                let after = accepted
                    .get(presented)
                    .map_or(0, |times| times.iter().filter(|t| *t > since).count());
                // An API key is the bearer of every probe; only the operator's probes of
                // the active key would reach it after the swap, and there are none within
                // the 24h interval.
                if after > 0 {
                    f.revalidated.push(format!(
                        "{}: {:?} revision {} accepted {after} more time(s) after the target held it",
                        cred.name, cred.flavour, m.revision
                    ));
                }
            }
        }

        // 2c. A refresh token the provider spent is never presented again, unless a kill
        // came between and the token it minted was never persisted (the unavoidable window).
        let mut spent_at: HashMap<&str, Instant> = HashMap::new();
        for s in &served {
            if s.status == Some(200)
                && let Some(token) = s.refresh_token.as_deref()
            {
                let at = spent_at.entry(token).or_insert(s.at);
                *at = (*at).min(s.at);
            }
        }
        for s in &served {
            let Some(token) = s.refresh_token.as_deref() else {
                continue;
            };
            let Some(&spent) = spent_at.get(token) else {
                continue;
            };
            if s.at <= spent {
                continue;
            }
            // A kill after the spending grant (its request may reach the provider just after
            // the process died) and before this presentation, with the minted token not seen
            // persisted before that kill: the unavoidable window.
            let cutting = kills.and_then(|kills| {
                kills
                    .iter()
                    .filter(|k| k.sent < s.at && spent < k.dead + ORPHAN_SLACK)
                    .min_by_key(|k| k.sent)
            });
            let child = children.get(token);
            let persisted_before = child
                .and_then(|c| seen.durable.get(c))
                .is_some_and(|at| *at < s.at && cutting.is_none_or(|k| *at < k.sent));
            let killed_between = cutting.is_some();
            if !persisted_before && killed_between {
                f.spent_presented_in_window += 1;
            } else {
                f.spent_presented.push(format!(
                    "a refresh token spent {} ms earlier was presented again (answer {:?}; its successor persisted before: {persisted_before}; a kill between: {killed_between})",
                    s.at.duration_since(spent).as_millis(),
                    s.status
                ));
            }
        }

        let peer_minted: BTreeSet<&String> = peer_children.values().collect();
        f.refreshes += served
            .iter()
            .filter(|s| {
                s.status == Some(200)
                    && s.refresh_token
                        .as_ref()
                        .is_some_and(|t| t.starts_with("rt-") || peer_minted.contains(t))
            })
            .count();

        // 4. Rolls: once per swap window.
        for integ in &self.integrations {
            let rolls = seen
                .rolls
                .get(&integ.deployment)
                .cloned()
                .unwrap_or_default();
            f.rolls += rolls.len();
            let mut revisions_seen = BTreeSet::new();
            for (_, revisions) in &rolls {
                if !revisions_seen.insert(revisions.clone()) {
                    f.bad_rolls.push(format!(
                        "{}: rolled twice for {revisions}",
                        integ.deployment
                    ));
                }
            }
            let current: BTreeMap<String, String> = integ
                .connectors
                .iter()
                .filter_map(|(c, i)| {
                    let name = &self.creds[*i].name;
                    let rev = creds.get(name)?.status.as_ref()?.active_revision.clone()?;
                    Some((c.clone(), rev))
                })
                .collect();
            let initial: BTreeMap<String, String> = integ
                .connectors
                .iter()
                .map(|(c, i)| (c.clone(), self.creds[*i].history[0].revision.clone()))
                .collect();
            let swaps: usize = integ
                .connectors
                .iter()
                .map(|(_, i)| {
                    let cred = &self.creds[*i];
                    seen.target_held
                        .get(&cred.target())
                        .map_or(0, |h| h.len().saturating_sub(1))
                })
                .sum();
            if rolls.len() > swaps {
                f.bad_rolls.push(format!(
                    "{}: {} rolls for {swaps} swaps",
                    integ.deployment,
                    rolls.len()
                ));
            }
            if current != initial {
                let last: BTreeMap<String, String> = rolls
                    .last()
                    .map(|(_, r)| {
                        r.split(',')
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                if last != current {
                    f.bad_rolls.push(format!(
                        "{}: last roll for {last:?}, credentials now at {current:?}",
                        integ.deployment
                    ));
                }
            }
        }

        // 5. Leaks: no secret value in what the operator wrote or said.
        let values = self.secret_values();
        let pattern = regex_lite::Regex::new(r"cnry[0-9a-z]+|(?:at|rt)-[0-9]+-[0-9]+-[0-9a-f]+")
            .expect("static pattern");
        for (what, text) in texts {
            for m in pattern.find_iter(text) {
                if values.contains(m.as_str()) {
                    let context = |at: usize| {
                        let mut at = at.min(text.len());
                        while !text.is_char_boundary(at) {
                            at -= 1;
                        }
                        at
                    };
                    let around =
                        &text[context(m.start().saturating_sub(100))..context(m.end() + 40)];
                    f.leaks
                        .push(format!("{what}: {} in …{around}…", m.as_str()));
                }
            }
        }
        // The peer's tokens are its own random base64url values, not canaries.
        let runs = regex_lite::Regex::new(r"[A-Za-z0-9_-]{32,}").expect("static pattern");
        let peer_values = self.proxy.minted();
        for (what, text) in texts {
            for m in runs.find_iter(text) {
                if peer_values.contains(m.as_str()) || peer_tokens.contains(m.as_str()) {
                    f.leaks.push(format!(
                        "{what}: a token of the OAuth peer ({} bytes)",
                        m.len()
                    ));
                }
            }
        }
        f.leaks.sort();
        f.leaks.dedup();
        f
    }
}
