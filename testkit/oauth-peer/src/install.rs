//! Installs the peer's npm dependencies once per lock file, under the workspace target dir.
//!
//! `{target}/oauth-peer/node/` receives `package.json` and `package-lock.json` (compiled into
//! this crate, so a changed lock file means a new install) and `npm ci` fills its
//! `node_modules`. A stamp file holding the lock file it was installed from makes later runs
//! skip npm; an exclusive lock on `{target}/oauth-peer/install.lock` (flock, the same lock
//! `.ci/oauth-peer` takes) keeps concurrent test processes from installing over each other.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const PACKAGE_JSON: &str = include_str!("../node/package.json");
pub(crate) const PACKAGE_LOCK: &str = include_str!("../node/package-lock.json");
const STAMP: &str = ".installed-from-package-lock.json";

/// The workspace's cargo target dir: `CARGO_TARGET_DIR` when set, else the nearest ancestor of
/// this executable that cargo marked with `CACHEDIR.TAG` (test binaries live in
/// `{target}/{profile}/deps`), else `target/` at the workspace root.
pub(crate) fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    from_exe.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Makes sure `node_modules` matches the compiled-in lock file; returns the directory that
/// holds it.
pub(crate) fn ensure_installed() -> Result<PathBuf, String> {
    let base = target_dir().join("oauth-peer");
    let dest = base.join("node");
    fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let lock_path = base.join("install.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let installed = fs::read_to_string(dest.join(STAMP)).ok();
    if installed.as_deref() == Some(PACKAGE_LOCK)
        && dest
            .join("node_modules/oidc-provider/package.json")
            .is_file()
    {
        return Ok(dest);
    }
    // `lock` is held until this function returns.
    install(&dest).map_err(|e| format!("installing the OAuth peer's npm packages failed: {e}"))?;
    Ok(dest)
}

fn install(dest: &Path) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        fs::write(dest.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    let _ = fs::remove_file(dest.join(STAMP));
    write("package.json", PACKAGE_JSON)?;
    write("package-lock.json", PACKAGE_LOCK)?;
    let output = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(dest)
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "npm is not on PATH (Node.js 20 or later is needed)".into(),
            _ => format!("cannot run npm: {e}"),
        })?;
    if !output.status.success() {
        return Err(format!(
            "`npm ci` in {} exited with {}:\n{}",
            dest.display(),
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 30)
        ));
    }
    write(STAMP, PACKAGE_LOCK)
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
