//! Canary secrets never show up in errors (Display, Debug), results (Debug) or logs (every
//! tracing level, every target), on any provider's failure paths.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reconnect_emulators::{
    Account, DropboxEmulator, Emulator, Fault, Flavor, GoogleEmulator, MicrosoftEmulator,
    OAuth2Emulator, ProcoreEmulator, SafetyCultureEmulator, SalesforceEmulator, SimproEmulator,
};
use reconnect_operator::api::ConnectorCredentialSpec;
use reconnect_operator::providers::{CredentialMaterial, Providers};

const SECRET: &str = "canary-client-secret-5e1f9a";
const WRONG_SECRET: &str = "canary-wrong-secret-3b8d07";
const REFRESH: &str = "canary-refresh-token-77b3c1";
const KEY: &str = "canary-api-key-d04e22";
const CANARIES: [&str; 4] = [SECRET, WRONG_SECRET, REFRESH, KEY];

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs every failure path (and the success path) for one credential, returning what a user
/// or log reader could see, plus the access tokens the emulator issued.
async fn exercise<F: Flavor>(
    emu: &Emulator<F>,
    spec: &ConnectorCredentialSpec,
    good: &CredentialMaterial,
    bad: &CredentialMaterial,
    probe: &str,
    token: Option<&str>,
) -> (String, Vec<String>) {
    let providers = Providers::new();
    let mut seen = format!("{good:?}\n{bad:?}\n");
    let mut run = async |material: &CredentialMaterial, required: &[&str], timeout: Duration| {
        let result = verify_with(&providers, spec, material, &set(required), timeout).await;
        seen.push_str(&format!("{result:?}\n"));
        if let Err(e) = &result {
            seen.push_str(&format!("{e}\n{}\n", e.reason()));
        }
        let refreshed = providers
            .refresh(&reconnect_operator::providers::VerifyRequest {
                key: "acme/canary",
                spec,
                material,
                required: &set(required),
                timeout,
            })
            .await;
        seen.push_str(&format!("{refreshed:?}\n"));
        if let Err(e) = refreshed.as_result() {
            seen.push_str(&format!("{e}\n"));
        }
    };
    run(good, &[], TIMEOUT).await;
    run(bad, &[], TIMEOUT).await;
    run(good, &["not-held:admin"], TIMEOUT).await;
    let mut paths = vec![probe.to_owned()];
    paths.extend(token.map(str::to_owned));
    for path in &paths {
        for fault in [
            Fault::RateLimited {
                retry_after_secs: 0,
            },
            Fault::Status(503),
            Fault::MalformedJson,
            Fault::DropConnection,
        ] {
            emu.fail_next_on(path, 1, fault);
            run(good, &[], TIMEOUT).await;
        }
        emu.fail_next_on(path, 1, Fault::Latency(Duration::from_secs(5)));
        run(good, &[], Duration::from_millis(200)).await;
    }
    let mut unknown_param = spec.clone();
    unknown_param.params.insert("bogus".into(), "1".into());
    let result = verify_with(&providers, &unknown_param, good, &set(&[]), TIMEOUT).await;
    seen.push_str(&format!("{result:?}\n"));
    let issued = emu.with_state(|s| s.access_tokens.keys().cloned().collect());
    (seen, issued)
}

#[tokio::test(flavor = "current_thread")]
async fn no_failure_path_shows_credential_material_in_errors_results_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut seen = String::new();
    let mut issued = Vec::new();
    let oauth = |secret: &str| refresh_token("client", Some(secret), REFRESH);
    let cc = |secret: &str| client_credentials("client", secret);

    macro_rules! oauth_case {
        ($emu:ty, $provider:expr, $auth:expr, $params:expr, $probe:expr, $token:expr, $account:expr, $setup:expr) => {{
            let emu = <$emu>::start().await;
            emu.add_account($account);
            emu.add_client("client", SECRET, Some("acct"));
            emu.add_refresh_token(REFRESH, "client", "acct");
            let setup: &dyn Fn(&$emu) = &$setup;
            setup(&emu);
            let spec = spec($provider, $auth, Some(&emu.base_url()), $params);
            let (good, bad) = if $auth == "RefreshToken" {
                (oauth(SECRET), oauth(WRONG_SECRET))
            } else {
                (cc(SECRET), cc(WRONG_SECRET))
            };
            let (s, i) = exercise(&emu, &spec, &good, &bad, $probe, Some($token)).await;
            seen.push_str(&s);
            issued.extend(i);
        }};
    }

    let account = || {
        Account::new("acct", "Canary Account").with_permissions([
            "company:1",
            "documents:admin",
            "organisation:o1",
        ])
    };
    oauth_case!(
        ProcoreEmulator,
        "procore",
        "RefreshToken",
        &[("companyId", "1")],
        "/rest/v1.0/me",
        "/oauth/token",
        account(),
        |_| {}
    );
    oauth_case!(
        ProcoreEmulator,
        "procore",
        "ClientCredentials",
        &[("companyId", "1")],
        "/rest/v1.0/me",
        "/oauth/token",
        account(),
        |_| {}
    );
    oauth_case!(
        MicrosoftEmulator,
        "microsoft",
        "ClientCredentials",
        &[("tenantId", "contoso-tenant")],
        "/v1.0/organization",
        "/contoso-tenant/oauth2/v2.0/token",
        account().with_scopes(["Sites.Read.All"]),
        |_| {}
    );
    oauth_case!(
        MicrosoftEmulator,
        "microsoft",
        "RefreshToken",
        &[("tenantId", "contoso-tenant")],
        "/v1.0/me",
        "/contoso-tenant/oauth2/v2.0/token",
        account().with_scopes(["User.Read"]),
        |_| {}
    );
    oauth_case!(
        SalesforceEmulator,
        "salesforce",
        "RefreshToken",
        &[],
        "/services/oauth2/userinfo",
        "/services/oauth2/token",
        account().with_scopes(["api"]),
        |_| {}
    );
    oauth_case!(
        DropboxEmulator,
        "dropbox",
        "RefreshToken",
        &[],
        "/2/users/get_current_account",
        "/oauth2/token",
        account().with_scopes(["account_info.read"]),
        |_| {}
    );
    oauth_case!(
        GoogleEmulator,
        "google",
        "RefreshToken",
        &[],
        "/drive/v3/about",
        "/token",
        account().with_scopes(["https://www.googleapis.com/auth/drive"]),
        |_| {}
    );
    oauth_case!(
        OAuth2Emulator,
        "oauth2",
        "ClientCredentials",
        &[],
        "/introspect",
        "/token",
        account().with_scopes(["read"]),
        |e: &OAuth2Emulator| e.advertise_introspection(true)
    );

    let simpro = SimproEmulator::start().await;
    simpro.add_account(Account::new("acct", "Canary").with_permissions(["company:0"]));
    simpro.add_api_key(KEY, "acct");
    let s = spec("simpro", "ApiKey", Some(&simpro.base_url()), &[]);
    seen.push_str(
        &exercise(
            &simpro,
            &s,
            &api_key(KEY),
            &api_key(WRONG_SECRET),
            "/api/v1.0/currentUser/",
            None,
        )
        .await
        .0,
    );

    let sc = SafetyCultureEmulator::start().await;
    sc.add_account(Account::new("acct", "Canary").with_permissions(["organisation:o1"]));
    sc.add_api_key(KEY, "acct");
    let s = spec("safetyculture", "ApiKey", Some(&sc.base_url()), &[]);
    seen.push_str(
        &exercise(
            &sc,
            &s,
            &api_key(KEY),
            &api_key(WRONG_SECRET),
            "/accounts/user/v1/user:WhoAmI",
            None,
        )
        .await
        .0,
    );

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("credential not verified"),
        "the failure paths were logged"
    );
    assert!(
        logs.contains("provider answered"),
        "debug-level events were captured too"
    );
    assert!(
        seen.contains("ProviderUnreachable")
            && seen.contains("ConnectionLost")
            && seen.contains("PermissionMismatch")
    );
    assert!(
        issued.len() > 10,
        "the success paths minted access tokens: {}",
        issued.len()
    );
    for secret in CANARIES
        .iter()
        .copied()
        .chain(issued.iter().map(String::as_str))
    {
        assert!(
            !seen.contains(secret),
            "secret {secret:?} leaked into an error or result"
        );
        assert!(
            !logs.contains(secret),
            "secret {secret:?} leaked into the logs"
        );
    }
}
