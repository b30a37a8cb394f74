//! The node process: started with a pipe on stdin that only we hold, so it exits when this
//! process ends however it ends (drop, `process::exit`, panic, a signal); killed on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/node/peer.mjs");
const READY: &str = "OAUTH_PEER_READY ";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the server's own output are kept to explain a failed start.
const LOG_LINES: usize = 40;

#[derive(Deserialize)]
pub(crate) struct Ready {
    pub issuer: String,
}

pub(crate) struct NodeProcess {
    child: Child,
    // Held, never written: node exits when it closes.
    _stdin: ChildStdin,
}

impl NodeProcess {
    /// Starts `node peer.mjs` with the installed modules and waits for its ready line.
    pub fn start(modules: &Path) -> Result<(Self, Ready), String> {
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .arg("--modules")
            .arg(modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "node is not on PATH (Node.js 20 or later is needed)".to_owned()
                }
                _ => format!("cannot start node: {e}"),
            })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));

        // Both pipes are drained for the life of the process (a full pipe would block node);
        // the ready line is handed over, everything else is kept as a short log.
        let (ready_tx, ready_rx) = mpsc::channel();
        drain(stdout, Arc::clone(&log), Some(ready_tx));
        drain(stderr, Arc::clone(&log), None);

        let mut process = Self {
            child,
            _stdin: stdin,
        };
        let line = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                process.kill();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => "did not get ready in 30 s",
                    mpsc::RecvTimeoutError::Disconnected => "exited before it was ready",
                };
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                let log = log.iter().cloned().collect::<Vec<_>>().join("\n");
                return Err(format!("the OAuth peer {why}; its output:\n{log}"));
            }
        };
        let ready = serde_json::from_str(&line)
            .map_err(|e| format!("unreadable ready line from the OAuth peer ({e}): {line}"))?;
        Ok((process, ready))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn drain(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<VecDeque<String>>>,
    mut ready: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix(READY)
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(json.to_owned());
                continue;
            }
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}
