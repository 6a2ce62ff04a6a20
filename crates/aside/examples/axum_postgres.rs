//! An axum + sqlx service with cache-aside on PostgreSQL, through
//! `#[aside::cached]`: `GET /products/{id}` reads through the cache,
//! `PUT /products/{id}` writes the row then invalidates.
//!
//! Needs: PostgreSQL at `postgres://postgres@127.0.0.1:5432/test` (or the
//! URL in `ASIDE_EXAMPLE_POSTGRES`), and the `macros` feature:
//!
//! ```sh
//! cargo run --example axum_postgres --features aside/macros
//! ```
//!
//! It creates a table of its own (`aside_example_products_{pid}`), starts
//! the service on a free loopback port, sends it a few requests, prints
//! what each cost (cache hit or database query), drops the table and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "support/local_server.rs"]
mod local_server;

use aside::Aside;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use local_server::LocalServer;
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
}

/// What every handler shares.
struct App {
    cache: Aside,
    db: Db,
}

/// The database, with a count of the queries that reached it.
struct Db {
    pool: PgPool,
    table: String,
    queries: AtomicU64,
}

/// The loader is the function's body: it runs on a miss only, once per key
/// however many requests miss together. `None` (no row) is not cached.
#[aside::cached(namespace = "example:product", key = id, ttl = "5m", aside = cache)]
async fn product(cache: &Aside, db: &Db, id: i64) -> Result<Option<Product>, sqlx::Error> {
    db.queries.fetch_add(1, Ordering::Relaxed);
    let sql = format!("SELECT id, name, price_cents FROM {} WHERE id = $1", db.table);
    let row: Option<(i64, String, i64)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|(id, name, price_cents)| Product { id, name, price_cents }))
}

async fn get_product(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Result<String, StatusCode> {
    match product(&app.cache, &app.db, id).await {
        Ok(Some(found)) => serde_json::to_string(&found).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR),
        Ok(None) => Err(StatusCode::NOT_FOUND),
        Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// The write path of cache-aside: the database first, then the invalidation
/// (lease-fenced: no load in flight can put the old row back).
async fn put_price(State(app): State<Arc<App>>, Path(id): Path<i64>, body: String) -> StatusCode {
    let Ok(price_cents) = body.trim().parse::<i64>() else {
        return StatusCode::BAD_REQUEST;
    };
    let sql = format!("UPDATE {} SET price_cents = $1 WHERE id = $2", app.db.table);
    if sqlx::query(AssertSqlSafe(sql))
        .bind(price_cents)
        .bind(id)
        .execute(&app.db.pool)
        .await
        .is_err()
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let products = app.cache.namespace::<String, Product>("example:product").build();
    match products {
        Ok(products) if products.invalidate(&id.to_string()).await.is_ok() => StatusCode::NO_CONTENT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("ASIDE_EXAMPLE_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
    let table = format!("aside_example_products_{}", std::process::id());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    let outcome = serve_and_drive(pool.clone(), table.clone()).await;
    // The table goes whatever happened.
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    println!("table {table} dropped");
    outcome
}

async fn serve_and_drive(pool: PgPool, table: String) -> Result<(), Box<dyn std::error::Error>> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (id, name, price_cents) VALUES (1, 'kettle', 2999), (2, 'teapot', 1999)"
    )))
    .execute(&pool)
    .await?;
    let app = Arc::new(App {
        cache: Aside::builder().build(),
        db: Db {
            pool,
            table,
            queries: AtomicU64::new(0),
        },
    });
    let router = Router::new()
        .route("/products/{id}", get(get_product).put(put_price))
        .with_state(app.clone());
    let server = LocalServer::start(router).await?;
    let base = server.base.clone();

    let client = reqwest::Client::new();
    let requests: [(&str, &str, Option<&str>); 7] = [
        ("GET", "/products/1", None),
        ("GET", "/products/1", None),
        ("GET", "/products/2", None),
        ("GET", "/products/3", None),
        ("PUT", "/products/1", Some("2499")),
        ("GET", "/products/1", None),
        ("GET", "/products/1", None),
    ];
    for (method, path, body) in requests {
        let before = (app.cache.stats(), app.db.queries.load(Ordering::Relaxed));
        let request = match body {
            Some(body) => client.put(format!("{base}{path}")).body(body.to_owned()),
            None => client.get(format!("{base}{path}")),
        };
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let after = (app.cache.stats(), app.db.queries.load(Ordering::Relaxed));
        println!(
            "{method} {path:<12} -> {} {text:<48} hits +{} misses +{} db reads +{}",
            status.as_u16(),
            after.0.hits - before.0.hits,
            after.0.misses - before.0.misses,
            after.1 - before.1,
        );
    }
    let stats = app.cache.stats();
    println!(
        "total: {} hits, {} misses, {} database reads for 6 GETs (hit ratio {:.2})",
        stats.hits,
        stats.misses,
        app.db.queries.load(Ordering::Relaxed),
        stats.hit_ratio()
    );
    server.stop().await
}
