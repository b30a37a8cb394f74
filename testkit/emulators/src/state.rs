//! What the emulated services remember: accounts with their permissions, OAuth clients,
//! issued tokens (a used rotating refresh token stays dead, a revoked token stays revoked) and
//! API keys. Shared by every provider flavour; each reads the parts its API exposes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::server::Request;

/// An account at the provider: a user, a service account or (Microsoft client credentials)
/// an app.
#[derive(Debug, Clone, Default)]
pub struct Account {
    /// The provider's id.
    pub id: String,
    /// Login, user principal name or display name.
    pub name: String,
    /// E-mail address, where the provider shows one.
    pub email: String,
    /// OAuth scopes (Microsoft: app roles for client credentials, delegated scopes otherwise)
    /// granted to tokens for this account.
    pub scopes: BTreeSet<String>,
    /// Provider-side permissions, in the operator's vocabulary: `company:<id>`,
    /// `project:<id>`, `<tool>:<level>`, `site:<id>`, `permission:<field>`,
    /// `organisation:<id>`.
    pub permissions: BTreeSet<String>,
    /// A deactivated, suspended or departed account: its tokens stop working.
    pub inactive: bool,
}

impl Account {
    /// An active account without scopes or permissions.
    pub fn new(id: &str, name: &str) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            email: format!("{}@example.test", name.split('@').next().unwrap_or(name)),
            ..Default::default()
        }
    }

    /// With these OAuth scopes.
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// With these provider-side permissions.
    pub fn with_permissions<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        permissions: I,
    ) -> Self {
        self.permissions = permissions.into_iter().map(Into::into).collect();
        self
    }
}

/// An OAuth client (app registration, connected app, DMSA).
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The client secret; `None` for public clients.
    pub secret: Option<String>,
    /// The account client-credentials tokens act as; `None` if the client cannot use them.
    pub account: Option<String>,
    /// The secret has expired (Microsoft AADSTS7000222).
    pub secret_expired: bool,
    /// Admin consent is missing (Microsoft AADSTS65001).
    pub consent_required: bool,
    /// Seconds the access tokens issued to this client live, instead of the provider's
    /// usual lifetime (flavours that support it: Procore, generic OAuth2).
    pub token_lifetime: Option<u64>,
}

/// What a refresh grant does with the refresh token it consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// A new refresh token each time; the used one dies (Procore, Salesforce with rotation).
    Rotate,
    /// A new refresh token each time; the used one keeps working (Microsoft).
    Reissue,
    /// No new refresh token; the same one keeps working (Dropbox, Google).
    Keep,
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The client it was issued to.
    pub client: String,
    /// The account it acts as.
    pub account: String,
    /// Scopes it carries.
    pub scopes: BTreeSet<String>,
    /// Issued by the client-credentials grant (no user).
    pub app_only: bool,
    /// Revoked.
    pub revoked: bool,
}

/// An issued refresh token.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    /// The client it was issued to.
    pub client: String,
    /// The account it acts for.
    pub account: String,
    /// Already spent (rotation).
    pub used: bool,
    /// Revoked.
    pub revoked: bool,
    /// The refresh token this one was issued in exchange for: chains can be followed back
    /// to the token a user handed over.
    pub parent: Option<String>,
}

/// A token-endpoint failure, in RFC 6749 §5.2 terms plus provider codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// Missing or malformed parameters.
    InvalidRequest,
    /// Unknown client or wrong secret.
    InvalidClient,
    /// The secret expired (Microsoft).
    SecretExpired,
    /// Consent missing (Microsoft).
    ConsentRequired,
    /// Unknown, used or revoked refresh token, or one issued to another client.
    InvalidGrant,
    /// The account is deactivated.
    InactiveAccount,
    /// Not a grant this server supports for this client.
    UnsupportedGrantType,
}

impl GrantError {
    /// The RFC 6749 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::InvalidRequest => "invalid_request",
            GrantError::InvalidClient | GrantError::SecretExpired => "invalid_client",
            GrantError::ConsentRequired => "invalid_grant",
            GrantError::InvalidGrant | GrantError::InactiveAccount => "invalid_grant",
            GrantError::UnsupportedGrantType => "unsupported_grant_type",
        }
    }

    /// The HTTP status RFC 6749 suggests (401 for client authentication failures).
    pub fn status(&self) -> u16 {
        match self {
            GrantError::InvalidClient | GrantError::SecretExpired => 401,
            _ => 400,
        }
    }
}

/// Tokens from a successful grant.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access token.
    pub access_token: String,
    /// A refresh token, when one was issued.
    pub refresh_token: Option<String>,
    /// The scopes granted.
    pub scopes: BTreeSet<String>,
    /// The account.
    pub account: Account,
    /// The client id.
    pub client: String,
    /// Client credentials (no user).
    pub app_only: bool,
    /// The client's own access-token lifetime, when it has one ([`Client::token_lifetime`]).
    pub expires_in: Option<u64>,
}

/// Makes an access token value: (state, account, client id, app-only, scopes) -> token.
pub type MintAccess<'a> =
    dyn Fn(&mut State, &Account, &str, bool, &BTreeSet<String>) -> String + 'a;

/// All the state of one emulator.
#[derive(Debug)]
pub struct State {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Accounts by id.
    pub accounts: BTreeMap<String, Account>,
    /// Clients by id.
    pub clients: HashMap<String, Client>,
    /// Access tokens.
    pub access_tokens: HashMap<String, AccessToken>,
    /// Refresh tokens.
    pub refresh_tokens: HashMap<String, RefreshToken>,
    /// API keys and the account each belongs to; revoked keys are removed.
    pub api_keys: HashMap<String, String>,
    /// What refresh grants do.
    pub refresh_policy: RefreshPolicy,
    /// Token requests by the client id they presented (granted or not).
    pub grant_attempts: HashMap<String, usize>,
    serial: u64,
}

impl State {
    pub(crate) fn new(base_url: String) -> Self {
        Self {
            base_url,
            accounts: BTreeMap::new(),
            clients: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            api_keys: HashMap::new(),
            refresh_policy: RefreshPolicy::Keep,
            grant_attempts: HashMap::new(),
            serial: 0,
        }
    }

    /// A fresh opaque token value, unique across the emulators of a test process (the port
    /// is part of it), so a checker can tell whose token it holds.
    pub fn mint(&mut self, prefix: &str) -> String {
        self.serial += 1;
        let port = self.base_url.rsplit(':').next().unwrap_or_default();
        format!(
            "{prefix}-{port}-{}-{:08x}",
            self.serial,
            self.serial.wrapping_mul(0x9e37_79b9)
        )
    }

    /// Runs a token request (`grant_type` client_credentials or refresh_token), with client
    /// authentication by Basic header or form fields. `mint_access` makes the access token
    /// value (opaque or a JWT).
    pub fn grant(
        &mut self,
        req: &Request,
        mint_access: &MintAccess<'_>,
    ) -> Result<Issued, GrantError> {
        let form = req.form();
        let (client_id, secret) = match req.basic() {
            Some((id, secret)) => (id, Some(secret)),
            None => (
                form.get("client_id")
                    .cloned()
                    .ok_or(GrantError::InvalidClient)?,
                form.get("client_secret").cloned(),
            ),
        };
        *self.grant_attempts.entry(client_id.clone()).or_default() += 1;
        let client = self
            .clients
            .get(&client_id)
            .cloned()
            .ok_or(GrantError::InvalidClient)?;
        match (&client.secret, &secret) {
            (Some(expected), Some(given)) if expected == given => {}
            (None, None) => {}
            _ => return Err(GrantError::InvalidClient),
        }
        if client.secret_expired {
            return Err(GrantError::SecretExpired);
        }
        if client.consent_required {
            return Err(GrantError::ConsentRequired);
        }
        let (account_id, app_only, refresh) = match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {
                let account = client
                    .account
                    .clone()
                    .ok_or(GrantError::UnsupportedGrantType)?;
                (account, true, None)
            }
            Some("refresh_token") => {
                let token = form
                    .get("refresh_token")
                    .ok_or(GrantError::InvalidRequest)?;
                let record = self
                    .refresh_tokens
                    .get(token)
                    .ok_or(GrantError::InvalidGrant)?;
                if record.used || record.revoked || record.client != client_id {
                    return Err(GrantError::InvalidGrant);
                }
                (record.account.clone(), false, Some(token.clone()))
            }
            Some(_) => return Err(GrantError::UnsupportedGrantType),
            None => return Err(GrantError::InvalidRequest),
        };
        let account = self
            .accounts
            .get(&account_id)
            .cloned()
            .ok_or(GrantError::InvalidGrant)?;
        if account.inactive {
            return Err(GrantError::InactiveAccount);
        }
        let new_refresh = match (refresh, self.refresh_policy) {
            (None, _) => None,
            (Some(_), RefreshPolicy::Keep) => None,
            (Some(old), policy) => {
                if policy == RefreshPolicy::Rotate
                    && let Some(record) = self.refresh_tokens.get_mut(&old)
                {
                    record.used = true;
                }
                let next = self.issue_refresh_token(&client_id, &account_id);
                if let Some(record) = self.refresh_tokens.get_mut(&next) {
                    record.parent = Some(old);
                }
                Some(next)
            }
        };
        let scopes = account.scopes.clone();
        let access = mint_access(self, &account, &client_id, app_only, &scopes);
        self.access_tokens.insert(
            access.clone(),
            AccessToken {
                client: client_id.clone(),
                account: account_id,
                scopes: scopes.clone(),
                app_only,
                revoked: false,
            },
        );
        Ok(Issued {
            access_token: access,
            refresh_token: new_refresh,
            scopes,
            account,
            client: client_id,
            app_only,
            expires_in: client.token_lifetime,
        })
    }

    /// The valid access token on a request (bearer), and its account. `None` for unknown,
    /// revoked, or inactive-account tokens.
    pub fn bearer(&self, req: &Request) -> Option<(AccessToken, Account)> {
        let token = self.access_tokens.get(req.bearer()?)?;
        let account = self.accounts.get(&token.account)?;
        (!token.revoked && !account.inactive).then(|| (token.clone(), account.clone()))
    }

    /// The account of a valid API key on a request (bearer).
    pub fn api_key(&self, req: &Request) -> Option<Account> {
        let account = self.accounts.get(self.api_keys.get(req.bearer()?)?)?;
        (!account.inactive).then(|| account.clone())
    }

    /// Issues a refresh token for `client` acting for `account`.
    pub fn issue_refresh_token(&mut self, client: &str, account: &str) -> String {
        let token = self.mint("rt");
        self.add_refresh_token(&token, client, account);
        token
    }

    /// Registers a refresh token with a chosen value.
    pub fn add_refresh_token(&mut self, token: &str, client: &str, account: &str) {
        self.refresh_tokens.insert(
            token.into(),
            RefreshToken {
                client: client.into(),
                account: account.into(),
                used: false,
                revoked: false,
                parent: None,
            },
        );
    }

    /// Revokes a token of any kind (access, refresh, API key). Revoked stays revoked.
    pub fn revoke(&mut self, token: &str) {
        if let Some(t) = self.access_tokens.get_mut(token) {
            t.revoked = true;
        }
        if let Some(t) = self.refresh_tokens.get_mut(token) {
            t.revoked = true;
        }
        self.api_keys.remove(token);
    }

    /// Whether a refresh token would still be accepted.
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.refresh_tokens
            .get(token)
            .is_some_and(|t| !t.used && !t.revoked)
    }
}

/// Methods every emulator has, whatever the provider.
impl<F: crate::server::Flavor> crate::server::Emulator<F> {
    /// Adds (or replaces) an account.
    pub fn add_account(&self, account: Account) {
        self.with_state(|s| s.accounts.insert(account.id.clone(), account));
    }

    /// Adds a confidential client; `account` is what client-credentials tokens act as
    /// (`None`: the client can only refresh user tokens).
    pub fn add_client(&self, id: &str, secret: &str, account: Option<&str>) {
        self.with_state(|s| {
            s.clients.insert(
                id.into(),
                Client {
                    secret: Some(secret.into()),
                    account: account.map(Into::into),
                    ..Default::default()
                },
            )
        });
    }

    /// Adds a public client (no secret; PKCE apps).
    pub fn add_public_client(&self, id: &str) {
        self.with_state(|s| s.clients.insert(id.into(), Client::default()));
    }

    /// Issues a refresh token for `client` acting for `account`.
    pub fn issue_refresh_token(&self, client: &str, account: &str) -> String {
        self.with_state(|s| s.issue_refresh_token(client, account))
    }

    /// Registers a refresh token with a chosen value (canary tests).
    pub fn add_refresh_token(&self, token: &str, client: &str, account: &str) {
        self.with_state(|s| s.add_refresh_token(token, client, account));
    }

    /// Adds an API key for `account`.
    pub fn add_api_key(&self, key: &str, account: &str) {
        self.with_state(|s| s.api_keys.insert(key.into(), account.into()));
    }

    /// Revokes a token or key; it stays revoked.
    pub fn revoke(&self, token: &str) {
        self.with_state(|s| s.revoke(token));
    }

    /// Whether a refresh token would still be accepted.
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.with_state(|s| s.refresh_token_valid(token))
    }

    /// Makes the access tokens issued to `client` live `secs` seconds.
    pub fn set_token_lifetime(&self, client: &str, secs: u64) {
        self.with_state(|s| {
            if let Some(c) = s.clients.get_mut(client) {
                c.token_lifetime = Some(secs);
            }
        });
    }

    /// Replaces an account's provider-side permissions.
    pub fn set_permissions<I: IntoIterator<Item = S>, S: Into<String>>(
        &self,
        account: &str,
        permissions: I,
    ) {
        let permissions = permissions.into_iter().map(Into::into).collect();
        self.with_state(|s| {
            if let Some(a) = s.accounts.get_mut(account) {
                a.permissions = permissions;
            }
        });
    }

    /// Replaces an account's OAuth scopes (affects tokens issued afterwards).
    pub fn set_scopes<I: IntoIterator<Item = S>, S: Into<String>>(&self, account: &str, scopes: I) {
        let scopes = scopes.into_iter().map(Into::into).collect();
        self.with_state(|s| {
            if let Some(a) = s.accounts.get_mut(account) {
                a.scopes = scopes;
            }
        });
    }

    /// Deactivates an account: grants fail and its tokens and keys stop working.
    pub fn deactivate(&self, account: &str) {
        self.with_state(|s| {
            if let Some(a) = s.accounts.get_mut(account) {
                a.inactive = true;
            }
        });
    }

    /// Sets what refresh grants do with the refresh token they consume.
    pub fn set_refresh_policy(&self, policy: RefreshPolicy) {
        self.with_state(|s| s.refresh_policy = policy);
    }

    /// How many access tokens were issued.
    pub fn access_tokens_issued(&self) -> usize {
        self.with_state(|s| s.access_tokens.len())
    }

    /// How many token requests presented `client_id`, granted or refused.
    pub fn grant_attempts(&self, client_id: &str) -> usize {
        self.with_state(|s| s.grant_attempts.get(client_id).copied().unwrap_or(0))
    }
}
