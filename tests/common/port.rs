//! The one way tests (and the benchmark examples that start test peers) get a port.

/// A 127.0.0.1 port that was free a moment ago (bound and released): for a listener the test
/// starts, or as a port where connections are refused.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}
