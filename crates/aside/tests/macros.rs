//! `#[aside::cached]` at run time, on the in-process memory store: the
//! body runs on misses only, keys are the named arguments, the `Aside`
//! comes from an argument or the global registration.

use std::sync::atomic::{AtomicUsize, Ordering};

use aside::{Aside, ErrorKind};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("no database today")]
struct DbDown;

/// A stand-in database that counts its queries.
#[derive(Default)]
struct Db {
    queries: AtomicUsize,
}

impl Db {
    fn query(&self) -> usize {
        self.queries.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

#[aside::cached(namespace = "macro:user", key = id, ttl = "10m", aside = cache)]
async fn user(cache: &Aside, db: &Db, id: u64) -> Result<User, DbDown> {
    db.query();
    Ok(User {
        id,
        name: format!("user {id}"),
    })
}

#[tokio::test]
async fn two_calls_run_the_body_once() {
    let (cache, db) = (Aside::builder().build(), Db::default());
    let first = user(&cache, &db, 7).await.unwrap();
    let second = user(&cache, &db, 7).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(db.queries(), 1);
    // What the body returned is in the namespace the attribute names.
    let users = cache.namespace::<String, User>("macro:user").build().unwrap();
    assert_eq!(users.peek(&"7".to_owned()).await.unwrap(), Some(first));
}

#[aside::cached(namespace = "macro:pair", key = (a, b), aside = cache)]
async fn pair(cache: &Aside, db: &Db, a: String, b: String) -> Result<String, DbDown> {
    db.query();
    Ok(format!("{a}|{b}"))
}

/// Arguments are escaped in a key of several: `("x:y", "z")` and
/// `("x", "y:z")` joined plainly by `:` were one key, and the second call
/// was handed the first one's value.
#[tokio::test]
async fn argument_lists_that_join_to_the_same_text_do_not_share_a_key() {
    let (cache, db) = (Aside::builder().build(), Db::default());
    let first = pair(&cache, &db, "x:y".into(), "z".into()).await.unwrap();
    let second = pair(&cache, &db, "x".into(), "y:z".into()).await.unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("x:y|z", "x|y:z"));
    assert_eq!(db.queries(), 2);
    let percent = pair(&cache, &db, "x%3Ay".into(), "z".into()).await.unwrap();
    assert_eq!(percent, "x%3Ay|z", "an escape in the text is escaped too");
    assert_eq!(db.queries(), 3);
}

#[tokio::test]
async fn different_keys_load_separately() {
    let (cache, db) = (Aside::builder().build(), Db::default());
    assert_eq!(user(&cache, &db, 1).await.unwrap().name, "user 1");
    assert_eq!(user(&cache, &db, 2).await.unwrap().name, "user 2");
    assert_eq!(db.queries(), 2);
    user(&cache, &db, 1).await.unwrap();
    user(&cache, &db, 2).await.unwrap();
    assert_eq!(db.queries(), 2);
}

#[tokio::test]
async fn an_invalidation_through_a_namespace_of_the_same_name_reloads() {
    let (cache, db) = (Aside::builder().build(), Db::default());
    user(&cache, &db, 3).await.unwrap();
    let users = cache.namespace::<String, User>("macro:user").build().unwrap();
    users.invalidate(&"3".to_owned()).await.unwrap();
    user(&cache, &db, 3).await.unwrap();
    assert_eq!(db.queries(), 2);
}

#[tokio::test]
async fn each_aside_has_its_own_cache() {
    let db = Db::default();
    let (one, other) = (Aside::builder().build(), Aside::builder().build());
    user(&one, &db, 9).await.unwrap();
    user(&other, &db, 9).await.unwrap();
    user(&one, &db, 9).await.unwrap();
    assert_eq!(
        db.queries(),
        2,
        "one load per Aside; back on the first, its store still has the entry"
    );
}

#[aside::cached(namespace = "macro:member", key = (org, id), strategy = "versioned", aside = cache)]
async fn member(cache: Aside, db: &Db, org: String, id: u32) -> Result<Option<String>, DbDown> {
    let query = db.query();
    Ok((id != 0).then(|| format!("{org}/{id} (query {query})")))
}

#[tokio::test]
async fn a_key_of_several_arguments_joins_them_and_none_is_not_cached() {
    let (cache, db) = (Aside::builder().build(), Db::default());
    let found = member(cache.clone(), &db, "acme".into(), 5).await.unwrap();
    assert_eq!(found.as_deref(), Some("acme/5 (query 1)"));
    assert_eq!(member(cache.clone(), &db, "acme".into(), 5).await.unwrap(), found);
    let members = cache.namespace::<String, String>("macro:member").build().unwrap();
    assert_eq!(
        members.strategy(),
        aside::Strategy::Lease,
        "a namespace built apart has its own settings"
    );
    // Absent rows are not cached: both calls query.
    assert_eq!(member(cache.clone(), &db, "acme".into(), 0).await.unwrap(), None);
    assert_eq!(member(cache.clone(), &db, "acme".into(), 0).await.unwrap(), None);
    assert_eq!(db.queries(), 3);
}

#[aside::cached(namespace = "macro:failing", key = id, aside = cache)]
async fn failing(cache: &Aside, db: &Db, id: u64) -> Result<u64, DbDown> {
    db.query();
    if id > 0 {
        return Err(DbDown);
    }
    Ok(id)
}

#[tokio::test]
async fn a_body_error_is_a_loader_error_and_is_not_cached() {
    let (cache, db) = (Aside::builder().build(), Db::default());
    let error = failing(&cache, &db, 4).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Loader);
    assert!(
        error.loader_error::<DbDown>().is_some(),
        "the body's own error: {error}"
    );
    failing(&cache, &db, 4).await.unwrap_err();
    assert_eq!(db.queries(), 2);
}

struct Service {
    cache: Aside,
    db: Db,
}

impl Service {
    #[aside::cached(namespace = "macro:greeting", key = name, aside = cache)]
    async fn greeting(&self, cache: &Aside, mut name: String) -> Result<String, DbDown> {
        self.db.query();
        name.insert_str(0, "hello ");
        Ok(name)
    }
}

#[tokio::test]
async fn a_method_with_self_caches_too() {
    let service = Service {
        cache: Aside::builder().build(),
        db: Db::default(),
    };
    for _ in 0..2 {
        assert_eq!(
            service.greeting(&service.cache, "ada".into()).await.unwrap(),
            "hello ada"
        );
    }
    assert_eq!(service.db.queries(), 1);
}

static GLOBAL_DB: Db = Db {
    queries: AtomicUsize::new(0),
};

#[aside::cached(namespace = "macro:global", global)]
async fn on_the_global(id: u64) -> Result<u64, DbDown> {
    GLOBAL_DB.query();
    Ok(id * 2)
}

/// The only test of this binary that registers the global `Aside`: a call
/// before the registration is an error that says what to do.
#[tokio::test]
async fn the_global_aside_is_used_once_registered() {
    let error = on_the_global(21).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("aside::global::set"), "{error}");
    assert_eq!(GLOBAL_DB.queries(), 0);

    aside::global::set(Aside::builder().build()).unwrap();
    assert_eq!(on_the_global(21).await.unwrap(), 42);
    assert_eq!(on_the_global(21).await.unwrap(), 42);
    assert_eq!(GLOBAL_DB.queries(), 1);
}
