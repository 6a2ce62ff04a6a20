//! Two services in one process, each with its own `Aside` and an L1 (an
//! in-process first tier) over one shared store: the "orders" service
//! writes a price and invalidates; the "catalog" service's L1 is evicted
//! over NATS, so its next read sees the new price. A third `Aside` with an
//! L1 and no bus shows what the bus saves: it keeps the old price until
//! its L1 TTL.
//!
//! Needs: a NATS server at `nats://127.0.0.1:4222` (or the URL in
//! `ASIDE_EXAMPLE_NATS`), and the `nats` feature:
//!
//! ```sh
//! cargo run --example nats_two_services --features aside/nats
//! ```
//!
//! The shared store is an in-process `MemoryStore` here; in production it
//! is Redis or memcached, which the services share the same way. Each run
//! uses a subject of its own. It prints each read and where it came from,
//! and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::bus::nats::NatsBus;
use aside::{Aside, MemoryStore, Namespace, Store};

/// The database both services read: one price, and a count of its reads.
struct Db {
    price_cents: AtomicU64,
    reads: AtomicU64,
}

impl Db {
    async fn price(&self) -> Result<Option<u64>, std::io::Error> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(Some(self.price_cents.load(Ordering::Relaxed)))
    }
}

/// One service: an `Aside` on the shared store, with or without the bus,
/// and its namespace of prices with an L1 of one minute.
async fn service(store: &Arc<dyn Store>, bus: Option<NatsBus>) -> aside::Result<(Aside, Namespace<u64, u64>)> {
    let mut builder = Aside::builder().shared_store(store.clone());
    if let Some(bus) = bus {
        builder = builder.bus(bus);
    }
    let cache = builder.build();
    let prices = cache
        .namespace::<u64, u64>("example:price")
        .l1(1_000, Duration::from_secs(60))
        .build()?;
    Ok((cache, prices))
}

async fn read(who: &str, cache: &Aside, prices: &Namespace<u64, u64>, db: &Db) -> aside::Result<()> {
    let l1_before = cache.stats().l1_hits;
    let fetched = prices.fetch(&42, || db.price()).await?;
    let tier = match fetched.source {
        _ if cache.stats().l1_hits > l1_before => "its L1",
        aside::Source::Loaded => "the database",
        aside::Source::Hit => "the shared store",
        _ => "another caller's load",
    };
    println!("{who:<24} reads price of item 42: {:?} (from {tier})", fetched.value);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("ASIDE_EXAMPLE_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let subject = format!("aside.example.{}", std::process::id());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let db = Db {
        price_cents: AtomicU64::new(1999),
        reads: AtomicU64::new(0),
    };
    let (orders, orders_prices) = service(&store, Some(NatsBus::connect_on(&url, &subject).await?)).await?;
    let (catalog, catalog_prices) = service(&store, Some(NatsBus::connect_on(&url, &subject).await?)).await?;
    let (no_bus, no_bus_prices) = service(&store, None).await?;
    let mut catalog_events = catalog.invalidations().ok_or("the catalog has a bus")?;

    // An L1 takes values only once its bus subscription is up (else it
    // could miss an invalidation): read until the catalog's L1 serves.
    for _ in 0..200 {
        let l1_before = catalog.stats().l1_hits;
        catalog_prices.get_or_load(&42, || db.price()).await?;
        if catalog.stats().l1_hits > l1_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    read("catalog", &catalog, &catalog_prices, &db).await?;
    no_bus_prices.get_or_load(&42, || db.price()).await?;
    read("no-bus service", &no_bus, &no_bus_prices, &db).await?;

    println!("orders: UPDATE price = 2499, then invalidate");
    db.price_cents.store(2499, Ordering::Relaxed);
    orders_prices.invalidate(&42).await?;

    // The catalog's listener evicts its L1 before it passes the message on.
    let event = tokio::time::timeout(Duration::from_secs(5), catalog_events.recv()).await??;
    println!("catalog: invalidation of {:?} arrived over NATS", event.keys);
    read("catalog", &catalog, &catalog_prices, &db).await?;
    read("catalog", &catalog, &catalog_prices, &db).await?;
    read("no-bus service", &no_bus, &no_bus_prices, &db).await?;
    println!(
        "database reads: {} (the no-bus service keeps the old price until its L1 TTL, 60 s)",
        db.reads.load(Ordering::Relaxed)
    );
    orders.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
