//! Helpers shared by the integration tests: a fake database and waiting on conditions.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub avatar: String,
}

impl User {
    pub fn new(id: u64, version: u64) -> Self {
        User {
            id,
            name: format!("user {id} v{version}"),
            email: format!("u{id}@example.com"),
            avatar: format!("https://img.example.com/{id}.png"),
        }
    }
}

/// The source of truth of the tests: a map plus a query counter.
#[derive(Debug, Default, Clone)]
pub struct Db {
    rows: Arc<Mutex<HashMap<u64, User>>>,
    pub queries: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
pub struct DbDown;

impl Db {
    pub fn with_users(n: u64) -> Self {
        let db = Db::default();
        for id in 1..=n {
            db.put(User::new(id, 0));
        }
        db
    }

    pub fn put(&self, user: User) {
        self.rows.lock().unwrap().insert(user.id, user);
    }

    pub fn get_now(&self, id: u64) -> Option<User> {
        self.rows.lock().unwrap().get(&id).cloned()
    }

    pub async fn get(&self, id: u64) -> Result<Option<User>, DbDown> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        Ok(self.get_now(id))
    }

    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

/// Waits until `check` holds, polling every 10 ms, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
