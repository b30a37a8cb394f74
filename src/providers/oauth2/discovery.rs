//! Authorization-server metadata (RFC 8414 / OpenID discovery) and its cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::providers::error::VerifyError;
use crate::providers::http::{Reply, parse_endpoint};

/// How long discovery metadata is kept when the server does not say.
pub(super) const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(3600);
/// The longest a server may ask us to keep it.
pub(super) const MAX_METADATA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Issuers remembered at once.
pub(super) const METADATA_CACHE_SIZE: usize = 256;

/// Authorization-server metadata by issuer, shared by every verification and refresh of one
/// `Providers`: each fetch costs two requests when only the OpenID document exists, and a
/// refresh should cost one. An entry lives as long as the document's `Cache-Control: max-age`
/// (at most a day; `no-store`, `no-cache` or `max-age=0` keep it out), an hour when the server
/// says nothing, and is dropped when a token or introspection call suggests the endpoints
/// moved. Failed fetches are not cached.
#[derive(Clone, Default)]
pub(crate) struct DiscoveryCache(pub(super) Arc<Mutex<HashMap<String, Cached>>>);

pub(super) struct Cached {
    metadata: Metadata,
    expires_at: jiff::Timestamp,
}

impl DiscoveryCache {
    pub(super) fn get(&self, issuer: &Url, now: jiff::Timestamp) -> Option<Metadata> {
        let entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(issuer.as_str())
            .filter(|c| c.expires_at > now)
            .map(|c| c.metadata.clone())
    }

    pub(super) fn put(
        &self,
        issuer: &Url,
        metadata: Metadata,
        ttl: Duration,
        now: jiff::Timestamp,
    ) {
        let Some(expires_at) = jiff::SignedDuration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl).ok())
        else {
            return;
        };
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !entries.contains_key(issuer.as_str()) && entries.len() >= METADATA_CACHE_SIZE {
            entries.retain(|_, c| c.expires_at > now);
            if entries.len() >= METADATA_CACHE_SIZE
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires_at)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(
            issuer.as_str().to_owned(),
            Cached {
                metadata,
                expires_at,
            },
        );
    }

    pub(super) fn forget(&self, issuer: &Url) {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if entries.remove(issuer.as_str()).is_some() {
            tracing::debug!("forgot the cached authorization server metadata");
        }
    }
}

/// How long a discovery answer may be kept, from its `Cache-Control`; zero = not at all.
pub(super) fn metadata_ttl(reply: &Reply) -> Duration {
    let Some(value) = reply
        .headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return DEFAULT_METADATA_TTL;
    };
    let mut ttl = DEFAULT_METADATA_TTL;
    for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(secs) = directive
            .strip_prefix("max-age=")
            .and_then(|s| s.trim_matches('"').parse::<u64>().ok())
        {
            ttl = Duration::from_secs(secs).min(MAX_METADATA_TTL);
        }
    }
    ttl
}

#[derive(Clone, Deserialize)]
pub(super) struct Metadata {
    #[serde(default)]
    pub(super) issuer: Option<String>,
    #[serde(default)]
    pub(super) token_endpoint: Option<String>,
    #[serde(default)]
    pub(super) introspection_endpoint: Option<String>,
    #[serde(default)]
    pub(super) token_endpoint_auth_methods_supported: Vec<String>,
}

impl Metadata {
    pub(super) fn introspection_url(
        &self,
        provider: crate::api::Provider,
    ) -> Result<Option<Url>, VerifyError> {
        self.introspection_endpoint
            .as_deref()
            .map(|u| parse_endpoint(provider, "introspection_endpoint in the metadata", u))
            .transpose()
    }
}
