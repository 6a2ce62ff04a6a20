//! Every read entry point passes the L1: each one answers from it, and each
//! one fills it, after a store hit and after a load.
//!
//! Before, `fetch_owned`, `get_many_or_load` and `warm` neither read nor
//! filled the L1, and `get` read it but never filled it. How the tests see
//! the L1 alone: the entry is deleted from the store behind the namespace's
//! back (no eviction reaches the L1), so a value that comes back without a
//! load can only have come from the L1, and the L1 hit counter says so.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use aside::{Aside, FetchOptions, Namespace, WarmOptions};
use common::{Db, DbDown, User};

/// The read entry points of a namespace.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Fetch,
    GetOrLoad,
    FetchWith,
    FetchOwned,
    GetManyOrLoad,
    Warm,
    Get,
}

fn cache() -> (Aside, Namespace<u64, User>) {
    let aside = Aside::builder().build();
    let users = common::users_with_l1(&aside);
    (aside, users)
}

/// Deletes `id`'s entry from the store without telling the namespace.
async fn delete_behind_its_back(aside: &Aside, users: &Namespace<u64, User>, id: u64) {
    aside.store().delete(&users.store_key(&id).unwrap()).await.unwrap();
}

/// What one call of the batch loader returns.
type BatchLoad = Pin<Box<dyn Future<Output = Result<HashMap<u64, User>, DbDown>>>>;

fn batch_loader(db: &Db) -> impl Fn(Vec<u64>) -> BatchLoad {
    let db = db.clone();
    move |ids| {
        let db = db.clone();
        Box::pin(async move {
            let mut found = HashMap::new();
            for id in ids {
                if let Some(user) = db.get(id).await? {
                    found.insert(id, user);
                }
            }
            Ok(found)
        })
    }
}

/// Reads `id` through `entry`. `Warm` returns no value: its answer is how
/// many keys it found, and `Some(found)` of the first user stands for 1.
async fn read(users: &Namespace<u64, User>, db: &Db, entry: Entry, id: u64) -> Option<User> {
    match entry {
        Entry::Fetch => users.fetch(&id, || db.get(id)).await.unwrap().value,
        Entry::GetOrLoad => users.get_or_load(&id, || db.get(id)).await.unwrap(),
        Entry::FetchWith => {
            users
                .fetch_with(&id, FetchOptions::default(), || db.get(id))
                .await
                .unwrap()
                .value
        }
        Entry::FetchOwned => {
            let db = db.clone();
            users
                .fetch_owned(&id, move || {
                    let db = db.clone();
                    async move { db.get(id).await }
                })
                .await
                .unwrap()
                .value
        }
        Entry::GetManyOrLoad => users
            .get_many_or_load(&[id], batch_loader(db))
            .await
            .unwrap()
            .remove(&id),
        Entry::Warm => {
            let found = users
                .warm(&[id], WarmOptions::default(), batch_loader(db), |_| {})
                .await
                .unwrap();
            (found == 1).then(|| db.get_now(id)).flatten()
        }
        Entry::Get => users.get(&id).await.unwrap(),
    }
}

/// `entry` answers from the L1 once `fetch` filled it: with the store's
/// entry gone, it returns the value without a load.
async fn reads_the_l1(entry: Entry) {
    let (aside, users) = cache();
    let db = Db::with_users(1);
    assert_eq!(read(&users, &db, Entry::Fetch, 1).await, Some(User::new(1, 0)));
    delete_behind_its_back(&aside, &users, 1).await;
    let (queries, l1_hits) = (db.queries(), aside.stats().l1_hits);

    assert_eq!(
        read(&users, &db, entry, 1).await,
        Some(User::new(1, 0)),
        "{entry:?} did not answer from the L1"
    );
    assert_eq!(db.queries(), queries, "{entry:?} loaded a value the L1 holds");
    assert_eq!(aside.stats().l1_hits, l1_hits + 1, "{entry:?} counted no L1 hit");
}

/// `entry` fills the L1 with what it found in the store (key 1, written by
/// `set`) and, but `get`, with what it loaded (key 2): with the store's
/// entries gone, `fetch` still answers both without a load.
async fn fills_the_l1_after_a_store_hit_and_a_load(entry: Entry) {
    let (aside, users) = cache();
    let db = Db::with_users(2);
    users.set(&1, &User::new(1, 0)).await.unwrap();
    assert_eq!(read(&users, &db, entry, 1).await, Some(User::new(1, 0)));
    // `get` never loads: it has only the store hit to keep.
    let kept: &[u64] = if matches!(entry, Entry::Get) { &[1] } else { &[1, 2] };
    if kept.contains(&2) {
        assert_eq!(read(&users, &db, entry, 2).await, Some(User::new(2, 0)));
    }
    for &id in kept {
        delete_behind_its_back(&aside, &users, id).await;
    }
    let (queries, l1_hits) = (db.queries(), aside.stats().l1_hits);

    for &id in kept {
        assert_eq!(read(&users, &db, Entry::Fetch, id).await, Some(User::new(id, 0)));
    }
    assert_eq!(
        db.queries(),
        queries,
        "{entry:?} left the L1 without what it read (keys {kept:?})"
    );
    assert_eq!(aside.stats().l1_hits, l1_hits + kept.len() as u64);
}

/// One test of each kind per entry point, so that each reports on its own.
macro_rules! entry_point_tests {
    ($($name:ident: $entry:expr),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn reads_the_l1() {
                    super::reads_the_l1($entry).await;
                }

                #[tokio::test]
                async fn fills_the_l1() {
                    super::fills_the_l1_after_a_store_hit_and_a_load($entry).await;
                }
            }
        )*
    };
}

entry_point_tests! {
    fetch: Entry::Fetch,
    get_or_load: Entry::GetOrLoad,
    fetch_with: Entry::FetchWith,
    fetch_owned: Entry::FetchOwned,
    get_many_or_load: Entry::GetManyOrLoad,
    warm: Entry::Warm,
    get: Entry::Get,
}
