//! Reading claims from a JWT access token without verifying it.
//!
//! We only read what the provider just told us about our own token (Microsoft `roles`/`scp`);
//! the token came straight from the provider over TLS, and nothing is authorised on the
//! strength of these claims except the decision to refuse a rotation. Tokens that do not parse
//! as a JWT (Microsoft warns Graph tokens may not) yield no claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::secret::Redacted;

/// The payload claims, or `None` when the token is not a readable JWT.
pub(crate) fn claims(token: &Redacted) -> Option<Map<String, Value>> {
    let mut parts = token.expose().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A string claim.
pub(crate) fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_payload_of_an_unsigned_token() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"roles":["Sites.Read.All"],"tid":"t"}"#);
        let token = Redacted::new(format!("e30.{payload}.sig"));
        let claims = claims(&token).unwrap();
        assert_eq!(string(&claims, "tid"), Some("t"));
        assert_eq!(claims["roles"][0], "Sites.Read.All");
    }

    #[test]
    fn opaque_tokens_have_no_claims() {
        assert!(claims(&Redacted::new("EwBwA8l6BAAU-opaque")).is_none());
        assert!(claims(&Redacted::new("a.!!!.c")).is_none());
        assert!(claims(&Redacted::new("a.e30.c.d")).is_none());
    }
}
