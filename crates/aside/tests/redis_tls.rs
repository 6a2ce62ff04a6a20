//! Redis as managed services run it (issue 14): TLS with a private CA,
//! mTLS, and an ACL user, for the store, its fill subscription and the bus.
//! Every failure to connect is an error that names its cause, never the
//! password, and comes within a bound; none panics.
#![cfg(feature = "redis-tls")]

mod common;

use std::time::Duration;

use aside::Aside;
use aside::bus::redis::RedisBus;
use aside::store::redis::{RedisConfig, RedisStore, RedisTls};
use aside::store::{FillOutcome, LeaseOutcome, LeaseToken, Store, StoreError};
use aside_testkit::tls::{ClientAuth, SecureOptions, SecureRedisServer, TestCa};
use bytes::Bytes;
use common::{Db, User, eventually};

const PASSWORD: &str = "s3cret-Pa55word";
/// A connect that fails must fail within this (the connect timeout is
/// 500 ms; the bound is generous for a loaded machine).
const FAILS_WITHIN: Duration = Duration::from_secs(20);

/// The default settings with `tls`, and commands that may take
/// `common::PATIENT` to answer (a connect is bounded by its own timeout).
fn config(tls: RedisTls) -> RedisConfig {
    let mut config = RedisConfig::default();
    config.tls = tls;
    config.response_timeout = common::PATIENT;
    config
}

fn trusting(server: &SecureRedisServer) -> RedisTls {
    RedisTls::new().with_ca(server.ca_pem())
}

fn with_client_cert(server: &SecureRedisServer) -> RedisTls {
    let id = server.client_identity();
    trusting(server).with_client_identity(id.cert_pem.clone(), id.key_pem.clone())
}

async fn connect(url: &str, tls: RedisTls) -> Result<RedisStore, StoreError> {
    tokio::time::timeout(FAILS_WITHIN, RedisStore::connect_with(url, config(tls)))
        .await
        .expect("a connect ends within its bound")
}

/// The error's message and its whole source chain, Display and Debug.
fn whole(err: &StoreError) -> String {
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text += &format!(" {e} {e:?}");
        source = e.source();
    }
    text
}

/// Fails with a connection error whose message (not only its source)
/// contains one of `causes`, and nowhere the password.
async fn fails_naming(url: &str, tls: RedisTls, causes: &[&str]) -> String {
    let err = connect(url, tls).await.expect_err("the connect fails");
    assert!(matches!(err, StoreError::Connection { .. }), "{err:?}");
    let message = err.to_string().to_lowercase();
    assert!(
        causes.iter().any(|c| message.contains(c)),
        "the message names the cause ({causes:?}): {err}"
    );
    // Shown with --nocapture, to read what a user would.
    println!("{err}");
    let text = whole(&err);
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    err.to_string()
}

async fn aside_on(url: &str, tls: RedisTls) -> Aside {
    common::patient_builder()
        .store(connect(url, tls).await.unwrap())
        .build()
}

#[tokio::test]
async fn the_right_ca_connects_and_every_strategy_round_trips() {
    let server = SecureRedisServer::start(SecureOptions::tls());
    assert!(server.url().starts_with("rediss://"));
    common::miss_hit_invalidate_every_strategy(&aside_on(&server.url(), trusting(&server)).await).await;
    // `valkeys://` is the same thing.
    let valkeys = server.url().replace("rediss://", "valkeys://");
    aside_on(&valkeys, trusting(&server))
        .await
        .store()
        .ping()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_wrong_ca_the_system_roots_and_a_plaintext_client_fail_clearly() {
    let server = SecureRedisServer::start(SecureOptions::tls());
    let stranger = TestCa::new("not the server's CA");
    let wrong_ca = RedisTls::new().with_ca(stranger.cert_pem());
    let shown = fails_naming(&server.url(), wrong_ca, &["certificate"]).await;
    assert!(shown.contains(&server.url()), "names the server: {shown}");
    // No CA given: the system's roots do not know the test CA either.
    fails_naming(&server.url(), RedisTls::new(), &["certificate"]).await;
    // A plaintext client on the TLS port.
    fails_naming(&server.plaintext_url(), RedisTls::new(), &["tls"]).await;
    // TLS settings with a plaintext URL are a mistake, said at once.
    fails_naming(&server.plaintext_url(), trusting(&server), &["rediss://"]).await;
    // A CA that is not PEM.
    fails_naming(&server.url(), RedisTls::new().with_ca("garbage"), &["pem certificate"]).await;
}

#[tokio::test]
async fn mtls_works_with_a_client_certificate_and_fails_clearly_without() {
    let server = SecureRedisServer::start(SecureOptions::tls().client_auth(ClientAuth::Required));
    let store = connect(&server.url(), with_client_cert(&server)).await.unwrap();
    store.ping().await.unwrap();
    let aside = common::patient_builder().store(store).build();
    common::miss_hit_invalidate_every_strategy(&aside).await;
    // Without one, the server ends the handshake (TLS 1.3 reports it on
    // the first read, so the connect's first command fails).
    fails_naming(&server.url(), trusting(&server), &["client certificate"]).await;
    // A client certificate from another CA is refused the same way.
    let other = TestCa::new("another CA").client();
    let foreign = trusting(&server).with_client_identity(other.cert_pem, other.key_pem);
    fails_naming(&server.url(), foreign, &["client certificate"]).await;
}

#[tokio::test]
async fn a_wrong_password_fails_clearly_and_never_shows_the_password() {
    let server = SecureRedisServer::start(SecureOptions::tls().acl_user("cache", PASSWORD));
    let wrong = server.url_as("cache", &format!("{PASSWORD}x"));
    // The wrong password contains the right one: neither may show.
    let shown = fails_naming(&wrong, trusting(&server), &["authentication", "wrongpass", "password"]).await;
    assert!(shown.contains("***"), "the URL is shown masked: {shown}");
    // No user at all: the default user is off.
    let anonymous = server.url().replace(&format!("cache:{PASSWORD}@"), "");
    fails_naming(&anonymous, trusting(&server), &["authentication", "noauth", "auth"]).await;
    // The bus says the same.
    let err = RedisBus::connect_with(&wrong, "aside:invalidations", &trusting(&server))
        .await
        .expect_err("the bus refuses a wrong password");
    assert!(!whole(&err).contains(PASSWORD), "{}", whole(&err));
    assert!(err.to_string().to_lowercase().contains("authentication"), "{err}");
}

/// The ACL user of a managed Redis (keys, scripts, `&aside:*` channels,
/// nothing admin) runs every script of the lease cycle, and its fill
/// subscription comes up, over TLS.
#[tokio::test]
async fn an_acl_user_runs_the_whole_lease_cycle_over_tls() {
    let server = SecureRedisServer::start(SecureOptions::tls().acl_user("cache", PASSWORD));
    let store = connect(&server.url(), trusting(&server)).await.unwrap();
    assert!(!format!("{store:?}").contains(PASSWORD));
    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(60);
    let (a, b) = (LeaseToken(1), LeaseToken(2));

    assert!(matches!(
        store.lookup_or_lease("k", a, LEASE).await.unwrap(),
        LeaseOutcome::Granted { .. }
    ));
    assert!(matches!(
        store.lookup_or_lease("k", b, LEASE).await.unwrap(),
        LeaseOutcome::Busy { .. }
    ));
    assert!(store.renew_lease("k", a, LEASE).await.unwrap());
    assert_eq!(
        store.fill("k", a, Bytes::from_static(b"v1"), TTL).await.unwrap(),
        FillOutcome::Stored
    );
    assert!(matches!(
        store.lookup_or_lease("k", b, LEASE).await.unwrap(),
        LeaseOutcome::Hit(v) if v == "v1"
    ));
    store.invalidate("k", Some(TTL)).await.unwrap();
    assert!(matches!(
        store.lease_for_refresh("k", b, LEASE).await.unwrap(),
        Some(_) | None
    ));
    store.release("k", b).await.unwrap();
    store.put_entry("k", Bytes::from_static(b"v2"), TTL).await.unwrap();
    store.invalidate("k", None).await.unwrap();
    store.set("plain", Bytes::from_static(b"p"), TTL).await.unwrap();
    assert_eq!(store.get("plain").await.unwrap().as_deref(), Some(&b"p"[..]));
    assert_eq!(store.incr("n", TTL).await.unwrap(), 1);

    // The fill subscription is up: the user has the channel.
    eventually("the fill subscription is live", Duration::from_secs(20), || async {
        store.watch_fill("k").is_some_and(|w| w.is_live())
    })
    .await;

    // And the engine on it, every strategy.
    let aside = common::patient_builder().store(store).build();
    common::miss_hit_invalidate_every_strategy(&aside).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_delivers_an_invalidation_over_tls_with_an_acl_user() {
    let server = SecureRedisServer::start(
        SecureOptions::tls()
            .client_auth(ClientAuth::Required)
            .acl_user("cache", PASSWORD),
    );
    let url = server.url();
    let tls = with_client_cert(&server);
    let engine = || async {
        let aside = common::patient_builder()
            .store(connect(&url, tls.clone()).await.unwrap())
            .bus(RedisBus::connect_with(&url, "aside:invalidations", &tls).await.unwrap())
            .build();
        let users = common::users_with_l1(&aside);
        (aside, users)
    };
    let (_a, users_a) = engine().await;
    let (b, users_b) = engine().await;
    let mut events = b.invalidations().unwrap();
    let db = Db::with_users(2);
    users_b.fetch(&1, || db.get(1)).await.unwrap();
    db.put(User::new(1, 1));
    // Publish until B's listener hears one (its subscription may still be
    // coming up); each wait is on the message itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        users_a.invalidate(&1).await.unwrap();
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            assert!(message.keys.iter().any(|k| k.ends_with("user:1")), "{message:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bus never delivered");
    }
    assert_eq!(
        users_b.fetch(&1, || db.get(1)).await.unwrap().value,
        Some(User::new(1, 1)),
        "B's L1 copy was evicted"
    );
}
