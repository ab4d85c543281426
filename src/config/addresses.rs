//! Addresses named in the configuration, parsed where it is loaded so that
//! a bad one stops the start with one clear line: trusted proxies, object
//! store URLs, the syslog target and the mail relay. They live here, below the modules that
//! use them, so that the configuration imports nothing above it.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Trusted proxies: single addresses or CIDR blocks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let (addr, bits) = match entry.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (entry.as_str(), None),
            };
            let addr: IpAddr = addr.trim().parse().map_err(|_| {
                format!("trusted proxy {entry:?} is not an IP address or CIDR block")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("trusted proxy {entry:?} has a bad prefix length"))?,
            };
            nets.push((addr, bits));
        }
        Ok(TrustedProxies(nets))
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

/// Where a store lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    Local(std::path::PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!("{url}: a file:// store needs an absolute path"));
            }
            return Ok(StoreUrl::Local(path.into()));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(format!(
                "object store URL {url:?}: use file:///path or s3://bucket/prefix?endpoint=…&region=…"
            ));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.len() < 3 || bucket.len() > 63 {
            return Err(format!("{url}: the bucket name must be 3-63 characters"));
        }
        let mut endpoint = None;
        let mut region = None;
        for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map_err(|e| format!("{url}: {e}"))?
        {
            match k.as_str() {
                "endpoint" => endpoint = Some(v),
                "region" => region = Some(v),
                other => {
                    return Err(format!(
                        "{url}: unknown parameter {other:?} (endpoint and region are known)"
                    ));
                }
            }
        }
        Ok(StoreUrl::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint,
            region,
        })
    }
}

/// Where syslog messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTarget {
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl SyslogTarget {
    pub fn parse(url: &str) -> Result<SyslogTarget, String> {
        let bad = || format!("syslog_url {url:?} must be udp://host:port or tcp://host:port");
        let (scheme, address) = url.split_once("://").ok_or_else(bad)?;
        let address = address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad)?;
        match scheme {
            "udp" => Ok(SyslogTarget::Udp(address)),
            "tcp" => Ok(SyslogTarget::Tcp(address)),
            _ => Err(bad()),
        }
    }
}

/// How the mail relay is reached (`smtp_url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    Plain,
    StartTls,
    Tls,
}

/// A parsed `smtp_url`: `smtp://` (plain), `smtp+starttls://` or `smtps://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpRelay {
    pub security: SmtpSecurity,
    pub host: String,
    pub port: u16,
}

impl SmtpRelay {
    pub fn parse(url: &str) -> Result<SmtpRelay, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("smtp_url {url:?} is not smtp://, smtp+starttls:// or smtps://")
        })?;
        let (security, default_port) = match scheme {
            "smtp" => (SmtpSecurity::Plain, 25),
            "smtp+starttls" => (SmtpSecurity::StartTls, 587),
            "smtps" => (SmtpSecurity::Tls, 465),
            other => {
                return Err(format!(
                    "smtp_url scheme {other:?} is not smtp, smtp+starttls or smtps"
                ));
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "smtp_url {url:?} must be scheme://host[:port] (credentials are smtp_username and \
                 smtp_password)"
            ));
        }
        // `[v6 address]:port`, `host:port`, or either without its port.
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| format!("smtp_url {url:?} has an unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("smtp_url {url:?} has no valid port"))?,
        };
        if host.is_empty() {
            return Err(format!("smtp_url {url:?} names no host"));
        }
        Ok(SmtpRelay {
            security,
            host: host.to_owned(),
            port,
        })
    }

    /// Whether the relay is on this machine (where plain SMTP is safe).
    pub fn is_local(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_parse_with_their_default_ports() {
        assert_eq!(
            SmtpRelay::parse("smtp://127.0.0.1:2525").unwrap(),
            SmtpRelay {
                security: SmtpSecurity::Plain,
                host: "127.0.0.1".into(),
                port: 2525
            }
        );
        let starttls = SmtpRelay::parse("smtp+starttls://mail.example.com").unwrap();
        assert_eq!(
            (starttls.security, starttls.port),
            (SmtpSecurity::StartTls, 587)
        );
        assert!(!starttls.is_local());
        let tls = SmtpRelay::parse("smtps://mail.example.com/").unwrap();
        assert_eq!((tls.security, tls.port), (SmtpSecurity::Tls, 465));
        let v6 = SmtpRelay::parse("smtp://[::1]:25").unwrap();
        assert_eq!(v6.host, "::1");
        assert!(v6.is_local());
    }

    #[test]
    fn bad_relays_say_why() {
        for bad in [
            "mail.example.com",
            "http://mail.example.com",
            "smtp://user:pw@mail.example.com",
            "smtp://mail.example.com:0",
            "smtp://mail.example.com:x",
            "smtp://",
            "smtp://host/path",
            "smtp://[::1",
        ] {
            assert!(SmtpRelay::parse(bad).is_err(), "{bad}");
        }
        let err = SmtpRelay::parse("smtp://u:p@host").unwrap_err();
        assert!(err.contains("smtp_password"), "{err}");
    }
}
