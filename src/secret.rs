//! Credential material in a type that cannot leak by accident.
//!
//! [`Redacted`] prints `[redacted]` through `Debug` and `Display`, is not `Serialize`, and
//! gives its value out only through [`Redacted::expose`], so every place that reads a secret
//! value is a grep away.

use std::fmt;

/// A secret value (client secret, refresh token, API key, access token).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Redacted(String);

impl Redacted {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call only where the value is sent to its provider or written
    /// to the target Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an empty Secret key counts as missing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Redacted {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Redacted::new("canary-8d1f0c");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(secret.expose(), "canary-8d1f0c");
    }
}
