//! Nagle's algorithm is off on every connection between a real builder and the backend (the
//! builder's WebSocket and its HTTP calls, and the backend's accepted sockets): the
//! protocol's small back-to-back frames would otherwise wait for delayed ACKs, up to 40 ms
//! each on Linux. Checked on the sockets themselves, both ends live in this test process.
// getsockopt/getsockname on this process's own descriptors: no safe API reads TCP_NODELAY
// of a socket the code under test owns.
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::Duration;

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    small_source, start_server, upload_source, wait_outcome, E2eBuilder, QUICK_RECIPE,
};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    every_builder_connection_has_tcp_nodelay_on_both_ends,
}

async fn every_builder_connection_has_tcp_nodelay_on_both_ends(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "no-nagle", |_| {}).await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let id = server
        .submit(json!({ "source_url": null, "source_sha256": digest, "recipe": QUICK_RECIPE }))
        .await;
    // The job fetched its source and uploaded an artifact over HTTP, besides the WebSocket.
    wait_outcome(&server, id, "succeeded", Duration::from_secs(30)).await;

    let port = server.addr.port();
    let sockets = tcp_sockets_touching(port);
    let accepted = sockets.iter().filter(|s| s.local_port == port).count();
    let dialled = sockets.iter().filter(|s| s.peer_port == port).count();
    assert!(
        accepted >= 1 && dialled >= 1,
        "expected the builder's connections from both ends: {sockets:?}"
    );
    let delayed: Vec<_> = sockets.iter().filter(|s| !s.nodelay).collect();
    assert!(
        delayed.is_empty(),
        "sockets with Nagle still on: {delayed:?}"
    );
    builder.stop().await;
    server.shutdown().await;
}

#[derive(Debug)]
struct Socket {
    local_port: u16,
    peer_port: u16,
    nodelay: bool,
}

/// This process's connected TCP sockets with `port` at either end.
fn tcp_sockets_touching(port: u16) -> Vec<Socket> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        else {
            continue;
        };
        let (Some(local_port), Some(peer_port)) = (port_of(fd, false), port_of(fd, true)) else {
            continue;
        };
        if local_port != port && peer_port != port {
            continue;
        }
        let mut value: libc::c_int = 0;
        let mut len =
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("small size");
        // SAFETY: `value` and `len` are valid for the call; a stale fd only yields an error.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                std::ptr::addr_of_mut!(value).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            found.push(Socket {
                local_port,
                peer_port,
                nodelay: value != 0,
            });
        }
    }
    found
}

/// The local or peer port of an IPv4 TCP socket `fd`, if it is one.
fn port_of(fd: RawFd, peer: bool) -> Option<u16> {
    // SAFETY: zeroed sockaddr_in is a valid value; the call writes at most `len` bytes.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).ok()?;
    let target = std::ptr::addr_of_mut!(addr).cast::<libc::sockaddr>();
    // SAFETY: as above.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, target, &mut len)
        } else {
            libc::getsockname(fd, target, &mut len)
        }
    };
    (rc == 0 && i32::from(addr.sin_family) == libc::AF_INET).then(|| u16::from_be(addr.sin_port))
}
