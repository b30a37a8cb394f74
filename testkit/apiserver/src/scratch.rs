//! Files and child processes of the test support, and their cleanup however the test process
//! ends.
//!
//! Everything the test support writes (the control plane's etcd data, certificates, logs,
//! kubeconfigs) lives in one directory per process, `$TMPDIR/reconnect-test-<pid>-<hex>`.
//! cargo's test harness ends with `process::exit`, so statics are never dropped; and a test
//! process can also be killed. Three mechanisms cover that:
//!
//! - Child processes are forked by one thread that never ends and get
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills them when this process ends, for
//!   whatever reason (the signal fires when the *forking thread* ends, hence the dedicated
//!   thread).
//! - A supervisor (`/bin/sh`, in its own process group so a Ctrl-C meant for the test run
//!   does not reach it, ignoring INT/TERM/HUP) reads its stdin, a pipe whose write end only
//!   this process holds. The pipe reaches end-of-file when this process ends, however it
//!   ends; the supervisor then removes the directory (retrying while the dying children
//!   release it) and exits.
//! - An `atexit` handler does the same at once on a normal exit (libtest's
//!   `process::exit` runs it): kill and reap the children, remove the directory. The
//!   supervisor then finds nothing left to do.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError, mpsc};

/// Removes the directory named by `$1` once stdin reaches end-of-file.
const SUPERVISOR: &str = r#"trap '' INT TERM HUP PIPE
while read -r _; do :; done
n=0
while [ -e "$1" ] && [ "$n" -lt 100 ]; do
  rm -rf -- "$1" 2>/dev/null || sleep 0.1
  n=$((n + 1))
done
"#;

struct Scratch {
    dir: PathBuf,
    /// The supervisor's stdin. Never written to and never closed: the kernel closes it when
    /// this process ends, which is what the supervisor waits for.
    _supervisor_stdin: ChildStdin,
}

static SCRATCH: OnceLock<Result<Scratch, String>> = OnceLock::new();
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);
static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's scratch directory, created (with its supervisor and exit handler) on first
/// use.
pub(crate) fn dir() -> Result<&'static Path, String> {
    match SCRATCH.get_or_init(create) {
        Ok(scratch) => Ok(&scratch.dir),
        Err(e) => Err(e.clone()),
    }
}

fn create() -> Result<Scratch, String> {
    let base = std::env::temp_dir();
    let mut attempt = 0u32;
    let dir = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = base.join(format!(
            "reconnect-test-{}-{:x}",
            std::process::id(),
            nanos ^ attempt
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    };
    let supervisor = Command::new("/bin/sh")
        .arg("-c")
        .arg(SUPERVISOR)
        .arg("reconnect-test-supervisor")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut supervisor = match supervisor {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("starting the cleanup supervisor (/bin/sh): {e}"));
        }
    };
    let stdin = supervisor.stdin.take().expect("stdin is piped");
    // The supervisor outlives this process on purpose; its handle is not needed.
    drop(supervisor);
    // SAFETY: registers a plain `extern "C"` function with no preconditions.
    unsafe {
        libc::atexit(cleanup_at_exit);
    }
    Ok(Scratch {
        dir,
        _supervisor_stdin: stdin,
    })
}

extern "C" fn cleanup_at_exit() {
    // Never block at exit: a lock held elsewhere leaves the work to PDEATHSIG and the
    // supervisor.
    let children = match CHILDREN.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    if let Some(mut children) = children {
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    if let Some(Ok(scratch)) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(&scratch.dir);
    }
}

/// A child process started by [`spawn`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChildId(usize);

/// Starts a child that dies with this process (SIGKILL through `PR_SET_PDEATHSIG`) and is
/// killed and reaped on a normal exit.
pub(crate) fn spawn(mut command: Command) -> io::Result<ChildId> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    let (reply, response) = mpsc::channel();
    lock(spawner())
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let child = response
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))??;
    let mut children = lock(&CHILDREN);
    children.push(child);
    Ok(ChildId(children.len() - 1))
}

/// The thread every child is forked from. It waits for requests forever: its sender lives in
/// a static, so it ends only with the process, and with it the children (PDEATHSIG).
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("reconnect-test-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(requests)
    })
}

/// The child's exit status once it has ended.
pub(crate) fn exited(id: ChildId) -> Option<ExitStatus> {
    lock(&CHILDREN)
        .get_mut(id.0)
        .and_then(|c| c.try_wait().ok().flatten())
}

/// Kills and reaps a child (used when a start attempt is abandoned).
pub(crate) fn kill(id: ChildId) {
    if let Some(child) = lock(&CHILDREN).get_mut(id.0) {
        let _ = child.kill();
        let _ = child.wait();
    }
}
