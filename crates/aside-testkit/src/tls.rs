//! A Redis the way managed services run it: TLS with a CA and certificates
//! made in the test ([`TestCa`], with rcgen), optionally requiring a client
//! certificate (mTLS), and optionally an ACL user with a password and the
//! default user turned off ([`SecureRedisServer`]).
//!
//! Owns making the test PKI and starting such servers; process control is
//! the crate's shared one (kill, restart, freeze, thaw, killed on drop).
//! Certificates are ECDSA P-256, valid for `127.0.0.1` and `localhost`, and
//! written to the server's temporary directory, where tests and the CLI
//! find them as files too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::{free_port, reap, require_binary, signal, spawn_until_ready, start_on_a_free_port, wait_until_stopped};

/// A certificate authority made in the test, which issues server and client
/// certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    ///
    /// # Panics
    /// When rcgen cannot make the key or certificate (it does not on a sane system).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// The CA's certificate, PEM: what a client trusts.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self) -> Identity {
        self.issue("aside test server", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mTLS).
    pub fn client(&self) -> Identity {
        self.issue("aside test client", ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Identity {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed certificate");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Whether a TLS server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A client may present one (`--tls-auth-clients optional`).
    Optional,
    /// A client must present one signed by the CA (`--tls-auth-clients yes`).
    Required,
}

/// An ACL user's name and password.
#[derive(Debug, Clone)]
pub struct AclUser {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
}

/// The rights the test ACL user gets: every key, the `aside:*` channels
/// (fill notifications and the bus), and the command categories aside uses
/// (data commands, scripts, `MULTI`/`EXEC`, pub/sub, connection
/// commands, `TIME`), nothing of
/// `@admin` or `@dangerous`.
pub const ACL_RIGHTS: &[&str] = &[
    "~*",
    "&aside:*",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@scripting",
    "+@transaction",
    "+@pubsub",
    "+@connection",
    "+time",
    "-@dangerous",
];

/// What a [`SecureRedisServer`] turns on.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SecureOptions {
    /// TLS only (the plaintext port is off), and whether a client
    /// certificate is asked for. `None`: plaintext.
    pub tls: Option<ClientAuth>,
    /// An ACL user (rights [`ACL_RIGHTS`]); the default user is then off.
    pub acl_user: Option<AclUser>,
}

impl SecureOptions {
    /// TLS, with client certificates optional.
    pub fn tls() -> Self {
        SecureOptions {
            tls: Some(ClientAuth::Optional),
            acl_user: None,
        }
    }

    /// Asks clients for a certificate as `auth` says (and turns TLS on).
    #[must_use]
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.tls = Some(auth);
        self
    }

    /// Adds the ACL user `name` with `password`, and turns the default user off.
    #[must_use]
    pub fn acl_user(mut self, name: &str, password: &str) -> Self {
        self.acl_user = Some(AclUser {
            name: name.to_owned(),
            password: password.to_owned(),
        });
        self
    }
}

/// A `redis-server` with TLS and/or an ACL user; its CA, server and client
/// certificates live in its temporary directory.
pub struct SecureRedisServer {
    port: u16,
    options: SecureOptions,
    dir: tempfile::TempDir,
    ca: String,
    client: Identity,
    child: Option<Child>,
}

impl SecureRedisServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `redis-server` is not installed, has no TLS, or does not start.
    pub fn start(options: SecureOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("aside test CA");
        let server = ca.server();
        let client = ca.client();
        let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).expect("write a PEM");
        write("ca.pem", &ca.cert_pem());
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        write("client.pem", &client.cert_pem);
        write("client.key", &client.key_pem);
        let mut redis = SecureRedisServer {
            port: 0,
            options,
            ca: ca.cert_pem(),
            client,
            dir,
            child: None,
        };
        start_on_a_free_port(|| {
            redis.port = free_port();
            redis.spawn()
        });
        redis
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let dir = self.dir.path();
        let mut cmd = Command::new(bin);
        let port = self.port.to_string();
        match self.options.tls {
            Some(auth) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(dir.join("server.pem"))
                    .arg("--tls-key-file")
                    .arg(dir.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.join("ca.pem"))
                    .args([
                        "--tls-auth-clients",
                        match auth {
                            ClientAuth::Optional => "optional",
                            ClientAuth::Required => "yes",
                        },
                    ]);
            }
            None => {
                cmd.args(["--port", &port]);
            }
        }
        if let Some(user) = &self.options.acl_user {
            let acl = format!(
                "user default off\nuser {} on >{} {}\n",
                user.name,
                user.password,
                ACL_RIGHTS.join(" ")
            );
            std::fs::write(dir.join("users.acl"), acl).expect("write the ACL file");
            cmd.arg("--aclfile").arg(dir.join("users.acl"));
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--logfile", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir);
        self.child = Some(spawn_until_ready(
            cmd,
            "Ready to accept connections",
            "redis-server (TLS/ACL)",
        )?);
        Ok(())
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL a client uses: `rediss://` with TLS, with the ACL user and
    /// password when there is one.
    pub fn url(&self) -> String {
        match &self.options.acl_user {
            Some(user) => self.url_as(&user.name, &user.password),
            None => format!("{}://127.0.0.1:{}", self.scheme(), self.port),
        }
    }

    /// The URL with `user` and `password` (e.g. a wrong one).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("{}://{user}:{password}@127.0.0.1:{}", self.scheme(), self.port)
    }

    /// `redis://` on the same port, without credentials: a plaintext
    /// client knocking on the TLS port.
    pub fn plaintext_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.options.tls.is_some() { "rediss" } else { "redis" }
    }

    /// The CA certificate that signed the server's and the client's, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca
    }

    /// A client certificate and key the server accepts.
    pub fn client_identity(&self) -> &Identity {
        &self.client
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The client certificate's file.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client key's file.
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

process_controls!(
    SecureRedisServer,
    "on the same port, with the same certificates (no data kept)"
);
