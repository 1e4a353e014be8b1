//! The backend replicas a builder may dial, and which one it is talking to now.
//!
//! A builder given several backend URLs (replicas sharing one database and one object store)
//! dials them in turn: the connection moves to the next one whenever a connection fails. The
//! URLs a backend hands out for a job (its source, its uploads) name the replica that assigned
//! it; when that replica dies mid-job the same URLs are served by every other one, so an HTTP
//! call to one of the configured replicas goes to the replica of the current connection
//! instead. URLs of other hosts (a source on a registry) are left alone.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::enrol::api_base_url;

#[derive(Debug)]
pub struct Backends {
    /// The connect URLs (`ws[s]://…/api/v1/builders/connect`), in the operator's order.
    connect_urls: Vec<String>,
    /// The HTTP(S) base of each, without a trailing slash.
    bases: Vec<String>,
    /// Index of the replica the connection dials or talks to.
    current: AtomicUsize,
}

impl Backends {
    /// `connect_urls` must not be empty (the configuration refuses that).
    pub fn new(connect_urls: Vec<String>) -> Backends {
        assert!(!connect_urls.is_empty(), "a builder needs a backend URL");
        let bases = connect_urls
            .iter()
            .map(|url| api_base_url(url).trim_end_matches('/').to_owned())
            .collect();
        Backends {
            connect_urls,
            bases,
            current: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.connect_urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connect_urls.is_empty()
    }

    /// The connect URL of the current replica.
    pub fn current_connect_url(&self) -> &str {
        &self.connect_urls[self.current_index()]
    }

    pub fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.connect_urls.len()
    }

    /// Moves to the next replica in the list (wrapping); returns its connect URL.
    pub fn advance(&self) -> &str {
        let next = (self.current_index() + 1) % self.connect_urls.len();
        self.current.store(next, Ordering::Relaxed);
        &self.connect_urls[next]
    }

    /// `url` sent to the current replica when it names one of the configured replicas;
    /// unchanged otherwise, and always with a single backend.
    pub fn route(&self, url: &str) -> String {
        if self.bases.len() > 1 {
            let current = &self.bases[self.current_index()];
            for base in &self.bases {
                if let Some(rest) = url.strip_prefix(base.as_str()) {
                    // Only a whole origin (and prefix) matches: `http://a:80` is no prefix of
                    // `http://a:8000/…`.
                    if rest.is_empty() || rest.starts_with(['/', '?']) {
                        return format!("{current}{rest}");
                    }
                }
            }
        }
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::connect_url;

    fn three() -> Backends {
        Backends::new(
            ["ws://a:8000", "ws://b:8000/bf", "wss://c"]
                .iter()
                .map(|u| connect_url(u).unwrap())
                .collect(),
        )
    }

    #[test]
    fn advancing_goes_round_the_list() {
        let backends = three();
        assert_eq!(
            backends.current_connect_url(),
            "ws://a:8000/api/v1/builders/connect"
        );
        assert_eq!(backends.advance(), "ws://b:8000/bf/api/v1/builders/connect");
        assert_eq!(backends.advance(), "wss://c/api/v1/builders/connect");
        assert_eq!(backends.advance(), "ws://a:8000/api/v1/builders/connect");
    }

    #[test]
    fn urls_of_a_configured_replica_go_to_the_current_one() {
        let backends = three();
        backends.advance();
        assert_eq!(
            backends.route("http://a:8000/api/v1/jobs/7/artifacts"),
            "http://b:8000/bf/api/v1/jobs/7/artifacts"
        );
        backends.advance();
        assert_eq!(
            backends.route("http://b:8000/bf/api/v1/sources/ab"),
            "https://c/api/v1/sources/ab"
        );
    }

    #[test]
    fn other_urls_are_left_alone() {
        let backends = three();
        backends.advance();
        for url in [
            "https://static.crates.io/crates/itoa/itoa-1.0.0.crate",
            "http://a:80001/api/v1/sources/ab",
            "http://a:8000x/y",
            "https://a:8000/api/v1/sources/ab",
        ] {
            assert_eq!(backends.route(url), url);
        }
    }

    #[test]
    fn a_single_backend_never_rewrites() {
        let backends = Backends::new(vec![connect_url("ws://a:8000").unwrap()]);
        assert_eq!(
            backends.route("http://a:8000/api/v1/jobs/1/artifacts"),
            "http://a:8000/api/v1/jobs/1/artifacts"
        );
    }
}
