//! The client's address: the TCP peer, unless the peer is a trusted proxy,
//! in which case the right-most address in `X-Forwarded-For` that is not
//! itself a trusted proxy (anything left of it could be forged by the
//! client).

use std::net::IpAddr;

use axum::http::HeaderMap;

pub use crate::config::TrustedProxies;

impl TrustedProxies {
    /// Whether the client reached us over HTTPS: TLS ended here, or a
    /// trusted proxy that ended it says so in `X-Forwarded-Proto`. From
    /// anyone else the header means nothing.
    pub fn is_https(&self, tls: bool, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
        tls || peer.is_some_and(|peer| {
            self.contains(peer)
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
        })
    }

    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.contains(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.contains(*ip))
            .or(Some(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        let peer = |s: &str| Some(s.parse().unwrap());
        let h = headers("6.6.6.6, 203.0.113.9, 10.1.2.3");
        assert_eq!(proxies.client_ip(peer("10.9.9.9"), &h), peer("203.0.113.9"));
        assert_eq!(
            proxies.client_ip(peer("198.51.100.7"), &h),
            peer("198.51.100.7")
        );
        assert_eq!(
            proxies.client_ip(peer("192.168.1.1"), &HeaderMap::new()),
            peer("192.168.1.1")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy".into()]).is_err());
    }
}
