//! Single flight for refresh-token grants: overlapping grants for the same credential and
//! material share one request, so a rotating refresh token is never spent twice, and a grant
//! answered after every caller gave up is kept for the next one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::dispatch;
use super::error::{TransientKind, VerifyError};
use super::grant::Grant;
use super::material::CredentialMaterial;
use super::rules::Cx;
use super::{Providers, VerifyRequest};
use crate::api::AuthType;

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    key: String,
    material: CredentialMaterial,
}

pub(super) type Flight = Shared<BoxFuture<'static, Result<Grant, VerifyError>>>;

/// How long a refresh-token grant goes on in the background, in multiples of its caller's
/// timeout: a rotating provider that answers late has spent the old token all the same, and
/// its answer holds the new one. Bounded both ways: a provider that hangs holds the
/// credential's grants (which join it rather than present the token a second time) that long.
pub(super) const GRANT_PATIENCE: u32 = 4;
pub(super) const GRANT_PATIENCE_MIN: Duration = Duration::from_secs(10);
pub(super) const GRANT_PATIENCE_MAX: Duration = Duration::from_secs(60);

/// How long a grant answered after its callers gave up is kept for the next attempt.
pub(super) const LANDED_FOR: Duration = Duration::from_secs(15 * 60);

impl Providers {
    /// Obtains tokens; refresh-token grants go through the single-flight map.
    pub(super) async fn grant(&self, req: &VerifyRequest<'_>) -> Result<Grant, VerifyError> {
        if req.spec.auth != AuthType::RefreshToken {
            return dispatch::obtain(&self.cx(req)).await;
        }
        self.single_flight(req).await
    }

    fn single_flight(
        &self,
        req: &VerifyRequest<'_>,
    ) -> impl Future<Output = Result<Grant, VerifyError>> + use<> {
        let flight_key = FlightKey {
            key: req.key.to_owned(),
            material: req.material.clone(),
        };
        let provider = req.spec.provider;
        let timeout = req.timeout;
        // The caller waits for its timeout; the grant itself may go on (GRANT_PATIENCE).
        let within = move |flight: Flight| {
            async move {
                tokio::time::timeout(timeout, flight)
                    .await
                    .unwrap_or_else(|_| {
                        Err(VerifyError::transient(
                            provider,
                            "token grant",
                            TransientKind::Timeout,
                            None,
                            None,
                            None,
                        ))
                    })
            }
            .boxed()
        };
        {
            let mut landed = self.landed.lock().unwrap_or_else(|e| e.into_inner());
            landed.retain(|_, (at, _)| at.elapsed() < LANDED_FOR);
            if let Some((_, grant)) = landed.remove(&flight_key) {
                tracing::debug!("taking up a token grant answered after its caller gave up");
                return futures::future::ready(Ok(grant)).boxed();
            }
        }
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(&flight_key) {
            tracing::debug!("joining an in-flight token grant");
            return within(flight.clone());
        }
        // The grant runs in its own task, so a caller that gives up (timeout, shutdown) does
        // not abort a request that may already have spent the refresh token: whoever still
        // waits receives the new one, and when nobody does, the next grant takes it up.
        let mut http = self.http(req);
        http.timeout = req
            .timeout
            .saturating_mul(GRANT_PATIENCE)
            .clamp(GRANT_PATIENCE_MIN, GRANT_PATIENCE_MAX)
            .max(req.timeout);
        let discovery = self.discovery.clone();
        let spec = req.spec.clone();
        let material = req.material.clone();
        let required = req.required.clone();
        let key = flight_key.clone();
        let map = Arc::clone(&self.flights);
        let landed = Arc::clone(&self.landed);
        let task = tokio::spawn(async move {
            let cx = Cx::new(http, discovery, &spec, &material, &required);
            let result = dispatch::obtain(&cx).await;
            if let Ok(grant) = &result
                && grant.tokens.refresh_token.is_some()
            {
                landed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), (std::time::Instant::now(), grant.clone()));
            }
            map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            result
        });
        let received = Arc::clone(&self.landed);
        let key = flight_key.clone();
        let flight = async move {
            let result = task.await.unwrap_or_else(|_| {
                Err(VerifyError::transient(
                    provider,
                    "token grant",
                    TransientKind::Connection,
                    None,
                    None,
                    None,
                ))
            });
            // A caller receives it: nothing is left for the next grant to take up.
            received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            result
        }
        .boxed()
        .shared();
        flights.insert(flight_key, flight.clone());
        within(flight)
    }
}
