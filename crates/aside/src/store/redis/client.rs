//! How a `redis::Client` is made from a URL and [`RedisTls`]: the one place
//! where [`RedisStore`](super::RedisStore), its fill subscription and
//! [`RedisBus`](crate::bus::redis::RedisBus) get their client, so TLS and
//! credentials work the same for all three.
//!
//! Owns the TLS settings (a CA to trust instead of the system's roots, a
//! client certificate and key for mTLS) and the errors of a connect, which
//! name the server and the cause but never the URL's password. TLS is
//! rustls (on ring) behind the `redis-tls` feature; `rediss://` and
//! `valkeys://` URLs turn it on, and the ACL user and password go in the
//! URL (`rediss://user:password@host:port`).

use super::super::{StoreError, StoreResult, masked_url};

/// TLS settings of a Redis connection, for a `rediss://` or `valkeys://` URL.
///
/// Empty (the default): the server's certificate is checked against the
/// system's roots and no client certificate is sent. The PEM contents are
/// never printed (`Debug` says only which parts are set).
///
/// Needs the `redis-tls` feature to connect; without it a TLS URL is refused
/// with an error that says so.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    /// PEM certificates to trust instead of the system's roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain this client presents (mTLS); needs [`Self::client_key_pem`].
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM private key of [`Self::client_cert_pem`].
    pub client_key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<Vec<u8>>| if v.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("RedisTls")
            .field("ca_pem", &set(&self.ca_pem))
            .field("client_cert_pem", &set(&self.client_cert_pem))
            .field("client_key_pem", &set(&self.client_key_pem))
            .finish()
    }
}

impl RedisTls {
    /// No custom CA, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the certificates in `pem` instead of the system's roots.
    #[must_use]
    pub fn with_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents `cert_pem` (a certificate chain) with its key `key_pem` (mTLS).
    #[must_use]
    pub fn with_client_identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.client_cert_pem = Some(cert_pem.into());
        self.client_key_pem = Some(key_pem.into());
        self
    }

    /// True when nothing is set: a TLS URL then uses the system's roots.
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.client_cert_pem.is_none() && self.client_key_pem.is_none()
    }
}

/// `url`'s password (or the lone user part, which redis-rs takes as the
/// password), to scrub from messages that quote a client error.
fn secret_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let secret = match parsed.password() {
        Some(p) => p.to_owned(),
        None => parsed.username().to_owned(),
    };
    let decoded = url::form_urlencoded::parse(format!("s={secret}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned());
    Some(decoded.unwrap_or(secret)).filter(|s| !s.is_empty())
}

/// The error of a failed connect to `url`: the server (password masked) and
/// the cause, with redis-rs's error kept as the source. The cause is
/// redis-rs's message with the URL's password scrubbed out, in case a
/// server or library ever quotes it.
pub(crate) fn connect_error(what: &str, url: &str, e: redis::RedisError) -> StoreError {
    let cause = scrubbed(url, &e);
    let hint = if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("NOAUTH") {
        " (authentication failed: check the user and password)"
    } else if cause.contains("invalid peer certificate") {
        " (the server's TLS certificate is not trusted: check --redis-ca)"
    } else if is_tls(url) && cause.contains("alert") {
        " (the server refused the TLS handshake: check the client certificate, --redis-cert and --redis-key)"
    } else if is_tls(url) && (e.is_connection_dropped() || e.is_io_error()) {
        " (the TLS handshake failed: is the server listening with TLS on this port?)"
    } else if !is_tls(url) && e.is_connection_dropped() {
        " (the server closed the connection: if it wants TLS, use a rediss:// URL)"
    } else {
        ""
    };
    StoreError::connection(format!("{what} {}: {cause}{hint}", masked_url(url))).with_source(e)
}

/// `e`'s message without `url`'s password, raw or percent-decoded.
fn scrubbed(url: &str, e: &redis::RedisError) -> String {
    let mut text = e.to_string();
    if let Some(secret) = secret_of(url) {
        text = text.replace(&secret, "***");
    }
    if let Some(raw) = url::Url::parse(url).ok().and_then(|u| u.password().map(str::to_owned))
        && !raw.is_empty()
    {
        text = text.replace(&raw, "***");
    }
    text
}

fn is_tls(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

/// PINGs a new connection, bounded by `within`: redis-rs connects without a
/// command when the URL has no credentials, so a server that wants a
/// password (`NOAUTH`) would otherwise be found out only by the first read.
pub(crate) async fn check<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    within: std::time::Duration,
) -> Result<(), redis::RedisError> {
    match tokio::time::timeout(within, redis::cmd("PING").exec_async(conn)).await {
        Ok(answer) => answer,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer to PING within the connect timeout",
        ))),
    }
}

/// The redis-rs client for `url` with `tls`, as [`RedisStore`](super::RedisStore)
/// and [`RedisBus`](crate::bus::redis::RedisBus) make it: for callers that
/// need a connection of their own to the same server (tools, benches). A
/// TLS URL with an empty `tls` uses the system's roots.
///
/// # Errors
/// [`StoreError::Connection`] naming the masked URL when it does not parse,
/// when TLS settings come with a plaintext URL, when only one of the client
/// certificate and key is given, or when a PEM does not parse.
pub fn client(url: &str, tls: &RedisTls) -> StoreResult<redis::Client> {
    client_over(url, tls, None)
}

/// [`client`] with the TCP settings of a store's [`RedisConfig`](super::RedisConfig)
/// (keepalive, user timeout) on every socket: what the store, its fill
/// subscription and the bus connect with.
pub(crate) fn client_for(url: &str, config: &super::RedisConfig) -> StoreResult<redis::Client> {
    client_over(url, &config.tls, Some(super::conn::tcp_settings(config)))
}

fn client_over(url: &str, tls: &RedisTls, tcp: Option<redis::io::tcp::TcpSettings>) -> StoreResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let invalid = |why: &str| StoreError::connection(format!("invalid Redis URL {}: {why}", masked_url(url)));
    let info = url
        .into_connection_info()
        .map_err(|e| invalid(&scrubbed(url, &e)).with_source(e))?;
    let info = match tcp {
        Some(tcp) => info.set_tcp_settings(tcp),
        None => info,
    };
    if tls.is_empty() {
        return redis::Client::open(info).map_err(|e| invalid(&scrubbed(url, &e)).with_source(e));
    }
    if !is_tls(url) {
        return Err(invalid(
            "a CA or client certificate is given but the URL is not rediss:// or valkeys://",
        ));
    }
    let holds = |pem: &Option<Vec<u8>>, label: &str| {
        pem.as_deref()
            .is_none_or(|pem| String::from_utf8_lossy(pem).contains(&format!("-----BEGIN {label}")))
    };
    if tls.client_cert_pem.is_some() != tls.client_key_pem.is_some() {
        return Err(invalid("a client certificate needs its key, and a key its certificate"));
    }
    if !holds(&tls.ca_pem, "CERTIFICATE") {
        return Err(invalid("the CA holds no PEM certificate"));
    }
    if !holds(&tls.client_cert_pem, "CERTIFICATE") {
        return Err(invalid("the client certificate is not a PEM certificate"));
    }
    with_tls(info, tls).map_err(|e| invalid(&scrubbed(url, &e)).with_source(e))
}

#[cfg(feature = "redis-tls")]
impl RedisTls {
    /// These settings as redis-rs's certificates, for the connections a
    /// client builder makes itself (a cluster's nodes); `None` when empty.
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.is_empty() {
            return None;
        }
        let client_tls = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            _ => None,
        };
        Some(redis::TlsCertificates {
            client_tls,
            root_cert: self.ca_pem.clone(),
        })
    }
}

#[cfg(feature = "redis-tls")]
fn with_tls(info: redis::ConnectionInfo, tls: &RedisTls) -> Result<redis::Client, redis::RedisError> {
    use redis::{ClientTlsConfig, ErrorKind, TlsCertificates};
    let client_tls = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        (None, None) => None,
        _ => {
            return Err(redis::RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a client certificate needs its key, and a key its certificate",
            )));
        }
    };
    redis::Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls,
            root_cert: tls.ca_pem.clone(),
        },
    )
}

#[cfg(not(feature = "redis-tls"))]
fn with_tls(_info: redis::ConnectionInfo, _tls: &RedisTls) -> Result<redis::Client, redis::RedisError> {
    Err(redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "TLS needs aside's `redis-tls` feature",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_with_a_plaintext_url_are_refused_without_the_password() {
        let tls = RedisTls::new().with_ca("not even a pem");
        let err = client("redis://ada:hunter2@127.0.0.1:1/", &tls).expect_err("plaintext with a CA");
        let text = format!("{err} {err:?}");
        assert!(text.contains("rediss://") && !text.contains("hunter2"), "{text}");
    }

    #[test]
    fn debug_never_prints_the_pem() {
        let tls = RedisTls::new().with_client_identity("CERTBYTES", "SECRETKEY");
        let text = format!("{tls:?}");
        assert!(!text.contains("SECRETKEY") && !text.contains("CERTBYTES"), "{text}");
    }

    #[test]
    fn the_secret_is_found_in_both_url_forms() {
        assert_eq!(secret_of("rediss://u:p%40ss@h:1").as_deref(), Some("p@ss"));
        assert_eq!(secret_of("redis://tok@h:1").as_deref(), Some("tok"));
        assert_eq!(secret_of("redis://h:1"), None);
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let tls = RedisTls {
            client_cert_pem: Some(b"x".to_vec()),
            ..RedisTls::default()
        };
        let err = client("rediss://127.0.0.1:1", &tls).expect_err("cert without key");
        assert!(err.to_string().contains("needs its key"), "{err}");
    }
}
