//! `reconnect-operator check`: every exit code through the library, and the real binary
//! against an emulator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reconnect_emulators::{Account, Fault, ProcoreEmulator, SafetyCultureEmulator};
use reconnect_operator::check::{self, CheckOptions};
use reconnect_operator::providers::Providers;

/// Check inputs written to a scratch folder of their own, removed when dropped (tests read
/// them through `Deref` as [`CheckOptions`]).
struct Inputs {
    options: CheckOptions,
    dir: PathBuf,
}

impl std::ops::Deref for Inputs {
    type Target = CheckOptions;
    fn deref(&self) -> &CheckOptions {
        &self.options
    }
}

impl std::ops::DerefMut for Inputs {
    fn deref_mut(&mut self) -> &mut CheckOptions {
        &mut self.options
    }
}

impl Drop for Inputs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "reconnect-check-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn credential_yaml(provider: &str, auth: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "apiVersion: reconnect.dev/v1alpha1
kind: ConnectorCredential
metadata:
  name: sync
  namespace: acme
spec:
  provider: {provider}
  auth: {auth}
  secretRef:
    name: sync-source
  endpoint: {endpoint}
{extra}"
    )
}

fn secret_yaml(string_data: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sync-source\n  namespace: acme\nstringData:\n",
    );
    for (k, v) in string_data {
        yaml.push_str(&format!("  {k}: {v}\n"));
    }
    yaml
}

fn write(credential: &str, secret: &str) -> Inputs {
    let dir = dir();
    let c = dir.join("credential.yaml");
    let s = dir.join("secret.yaml");
    std::fs::write(&c, credential).unwrap();
    std::fs::write(&s, secret).unwrap();
    Inputs {
        options: CheckOptions {
            credential: c,
            secret: s,
            require: Vec::new(),
            timeout: None,
            rotated_secret: None,
        },
        dir,
    }
}

async fn safetyculture() -> SafetyCultureEmulator {
    let emu = SafetyCultureEmulator::start().await;
    emu.add_account(Account::new("user_1", "Sam Service").with_permissions(["organisation:org_1"]));
    emu.add_api_key("sc-token", "user_1");
    emu
}

fn sc_options(emu: &SafetyCultureEmulator, key: &str, required: &str) -> Inputs {
    let extra = format!("  requiredPermissions: [{required}]\n");
    write(
        &credential_yaml("safetyculture", "ApiKey", &emu.base_url(), &extra),
        &secret_yaml(&[("api_key", key)]),
    )
}

#[tokio::test]
async fn working_credential_exits_0_with_account_and_expiry() {
    let emu = safetyculture().await;
    let report = check::check(
        &sc_options(&emu, "sc-token", "organisation:org_1"),
        &Providers::new(),
    )
    .await;
    assert_eq!(report.exit_code, check::EXIT_OK, "{report:?}");
    assert_eq!(report.verdict, "Connected");
    assert_eq!(report.credential, "acme/sync");
    assert_eq!(report.account.as_ref().unwrap().id, "user_1");
    assert!(report.credential_expires_at.is_some());
    let text = report.to_text();
    assert!(
        text.contains("Sam Service") && text.contains("organisation:org_1"),
        "{text}"
    );
}

#[tokio::test]
async fn rejected_credential_exits_3() {
    let emu = safetyculture().await;
    let report = check::check(&sc_options(&emu, "revoked-token", ""), &Providers::new()).await;
    assert_eq!(report.exit_code, check::EXIT_CONNECTION_LOST, "{report:?}");
    assert_eq!(report.verdict, "ConnectionLost");
}

#[tokio::test]
async fn missing_permission_exits_4_and_lists_it() {
    let emu = safetyculture().await;
    let report = check::check(
        &sc_options(&emu, "sc-token", "organisation:org_2"),
        &Providers::new(),
    )
    .await;
    assert_eq!(
        report.exit_code,
        check::EXIT_PERMISSION_MISMATCH,
        "{report:?}"
    );
    assert_eq!(report.missing_permissions, vec!["organisation:org_2"]);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["missingPermissions"][0], "organisation:org_2");
    assert_eq!(json["account"]["id"], "user_1");
}

#[tokio::test]
async fn extra_required_permissions_are_checked_too() {
    let emu = safetyculture().await;
    let mut options = sc_options(&emu, "sc-token", "");
    options.require = vec!["organisation:org_9".into()];
    let report = check::check(&options, &Providers::new()).await;
    assert_eq!(
        report.exit_code,
        check::EXIT_PERMISSION_MISMATCH,
        "{report:?}"
    );
}

#[tokio::test]
async fn unreachable_provider_exits_5_with_retry_after() {
    let emu = safetyculture().await;
    emu.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 9,
        },
    );
    let report = check::check(&sc_options(&emu, "sc-token", ""), &Providers::new()).await;
    assert_eq!(
        report.exit_code,
        check::EXIT_PROVIDER_UNREACHABLE,
        "{report:?}"
    );
    assert_eq!(report.retry_after_seconds, Some(9));
}

#[tokio::test]
async fn timeout_override_applies_and_exits_5() {
    let emu = safetyculture().await;
    emu.fail_next(1, Fault::Latency(Duration::from_secs(5)));
    let mut options = sc_options(&emu, "sc-token", "");
    options.timeout = Some(Duration::from_millis(200));
    let report = check::check(&options, &Providers::new()).await;
    assert_eq!(
        report.exit_code,
        check::EXIT_PROVIDER_UNREACHABLE,
        "{report:?}"
    );
}

#[tokio::test]
async fn secret_without_the_needed_key_exits_6_naming_the_key() {
    let emu = safetyculture().await;
    let options = write(
        &credential_yaml("safetyculture", "ApiKey", &emu.base_url(), ""),
        &secret_yaml(&[("token", "sc-token")]),
    );
    let report = check::check(&options, &Providers::new()).await;
    assert_eq!(report.exit_code, check::EXIT_MISCONFIGURED, "{report:?}");
    assert_eq!(report.verdict, "MissingKey");
    assert!(
        report.message.as_deref().unwrap().contains("\"api_key\""),
        "{report:?}"
    );
    assert_eq!(emu.total_requests(), 0);
}

#[tokio::test]
async fn renamed_secret_key_is_honoured() {
    let emu = safetyculture().await;
    let extra = "  secretRef:\n    name: sync-source\n    keys: {apiKey: token}\n";
    let credential = credential_yaml("safetyculture", "ApiKey", &emu.base_url(), "")
        .replace("  secretRef:\n    name: sync-source\n", extra);
    let report = check::check(
        &write(&credential, &secret_yaml(&[("token", "sc-token")])),
        &Providers::new(),
    )
    .await;
    assert_eq!(report.exit_code, check::EXIT_OK, "{report:?}");
}

#[tokio::test]
async fn bad_input_files_exit_2() {
    let emu = safetyculture().await;
    let good_secret = secret_yaml(&[("api_key", "sc-token")]);
    let good_credential = credential_yaml("safetyculture", "ApiKey", &emu.base_url(), "");
    for (credential, secret) in [
        ("not: [valid".to_owned(), good_secret.clone()),
        (
            good_credential.replace("kind: ConnectorCredential", "kind: Integration"),
            good_secret.clone(),
        ),
        (
            good_credential.clone(),
            good_secret.replace("name: sync-source", "name: other"),
        ),
        (
            good_credential.clone(),
            good_secret.replace("kind: Secret", "kind: ConfigMap"),
        ),
    ] {
        let report = check::check(&write(&credential, &secret), &Providers::new()).await;
        assert_eq!(report.exit_code, check::EXIT_INVALID_INPUT, "{report:?}");
        assert_eq!(report.verdict, "InvalidInput");
    }
    let mut missing = write(&good_credential, &good_secret);
    missing.secret = missing.secret.with_file_name("absent.yaml");
    assert_eq!(
        check::check(&missing, &Providers::new()).await.exit_code,
        check::EXIT_INVALID_INPUT
    );
    assert_eq!(emu.total_requests(), 0);
}

fn run_binary(args: Vec<String>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
        .arg("check")
        .args(args)
        .output()
        .expect("run the binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_checks_a_procore_dmsa_and_prints_json() {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(
        Account::new("4567", "svc-sync@acme.com")
            .with_permissions(["company:1234", "documents:admin"]),
    );
    emu.add_client("dmsa", "dmsa-secret-value", Some("4567"));
    let extra = "  params: {companyId: \"1234\"}\n  requiredPermissions: [documents:standard]\n";
    let options = write(
        &credential_yaml("procore", "ClientCredentials", &emu.base_url(), extra),
        &secret_yaml(&[
            ("client_id", "dmsa"),
            ("client_secret", "dmsa-secret-value"),
        ]),
    );
    let args = vec![
        options.credential.display().to_string(),
        "--secret".into(),
        options.secret.display().to_string(),
        "--output".into(),
        "json".into(),
    ];
    let ok = tokio::task::spawn_blocking({
        let args = args.clone();
        move || run_binary(args)
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8(ok.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["verdict"], "Connected");
    assert_eq!(json["account"]["name"], "svc-sync@acme.com");
    assert!(!stdout.contains("dmsa-secret-value"));

    // The same check with one more required permission than the account holds.
    let mut args = args;
    args.extend(["--require".into(), "budget:admin".into()]);
    let denied = tokio::task::spawn_blocking(move || run_binary(args))
        .await
        .unwrap();
    assert_eq!(denied.status.code(), Some(4));
    assert!(
        String::from_utf8(denied.stdout)
            .unwrap()
            .contains("budget:admin")
    );
    assert_eq!(emu.count("/rest/v1.0/me"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reports_a_revoked_api_key_as_connection_lost() {
    let emu = safetyculture().await;
    let options = sc_options(&emu, "sc-token", "");
    emu.revoke("sc-token");
    let args = vec![
        options.credential.display().to_string(),
        "--secret".into(),
        options.secret.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || run_binary(args))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("safetyculture acme/sync: ConnectionLost"),
        "{text}"
    );
}

#[tokio::test]
async fn rotating_refresh_token_needs_somewhere_to_put_the_new_one() {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(Account::new("900", "jane@acme.com").with_permissions(["company:1"]));
    emu.add_client("app", "app-secret", None);
    let old = emu.issue_refresh_token("app", "900");
    let mut options = write(
        &credential_yaml(
            "procore",
            "RefreshToken",
            &emu.base_url(),
            "  secretRef:\n    name: sync-source\n    keys: {refreshToken: rt}\n",
        )
        .replacen("  secretRef:\n    name: sync-source\n", "", 1),
        &secret_yaml(&[
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("rt", &old),
        ]),
    );
    let refused = check::check(&options, &Providers::new()).await;
    assert_eq!(refused.exit_code, check::EXIT_INVALID_INPUT, "{refused:?}");
    assert!(
        refused
            .message
            .as_deref()
            .unwrap()
            .contains("--rotated-secret")
    );
    assert_eq!(emu.total_requests(), 0, "the refresh token was not spent");

    let out = options.secret.with_file_name("rotated.yaml");
    options.rotated_secret = Some(out.clone());
    let report = check::check(&options, &Providers::new()).await;
    assert_eq!(report.exit_code, check::EXIT_OK, "{report:?}");
    assert_eq!(report.rotated_secret.as_ref(), Some(&out));
    assert!(!emu.refresh_token_valid(&old));

    // The written Secret carries the new token under the renamed key, and checks again.
    let written = std::fs::read_to_string(&out).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_saphyr::from_str(&written).unwrap();
    let new = String::from_utf8(secret.data.unwrap()["rt"].0.clone()).unwrap();
    assert!(emu.refresh_token_valid(&new));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    options.secret = out.clone();
    options.rotated_secret = Some(out.with_file_name("rotated-again.yaml"));
    assert_eq!(
        check::check(&options, &Providers::new()).await.exit_code,
        check::EXIT_OK
    );
}
