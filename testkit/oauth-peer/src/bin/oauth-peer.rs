//! Runs the OAuth peer by hand, for exploring it with curl: prints the issuer and the admin
//! base URL, then serves until stdin closes (Ctrl-D).
//!
//! `oauth-peer --exit` prints `pid=<node pid>` and ends this process with `process::exit`,
//! without dropping the peer: the test that node never outlives its owner runs it.

use std::io::Read;

use reconnect_oauth_peer::OAuthPeer;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let peer = OAuthPeer::start().await;
    if std::env::args().any(|a| a == "--exit") {
        println!("pid={}", peer.pid());
        std::process::exit(0);
    }
    println!("issuer: {}", peer.issuer());
    println!(
        "admin:  {}/admin/ (see testkit/oauth-peer/README.md)",
        peer.issuer()
    );
    println!("serving until stdin closes");
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
}
