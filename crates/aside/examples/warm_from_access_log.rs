//! Warming the cache from an access log before serving: the hit ratio of
//! the first requests after a deploy, with and without warm-up.
//!
//! Needs nothing outside the example (no feature, no server):
//!
//! ```sh
//! cargo run --example warm_from_access_log
//! ```
//!
//! It writes yesterday's access log (20,000 lines of `GET /users/{id}`
//! over 5,000 users, a few popular: Zipf 1.0) to a temporary file, reads
//! it back, and warms the 500 most requested ids with `Namespace::warm`
//! (batches of 100, one database query per batch). Then the first 2,000
//! requests of the day, drawn from the same distribution, are served by a
//! cold cache and by the warmed one. It prints both hit ratios and the
//! database queries, removes the file and exits. `aside warm --from FILE
//! --pattern REGEX --top N` does the same warm-up from the command line.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use aside::{Aside, Namespace, WarmOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const USERS: u64 = 5_000;
const TOP: usize = 500;

/// The database: a name per user id, and a count of its queries.
struct Db {
    queries: AtomicU64,
}

impl Db {
    async fn user(&self, id: u64) -> Result<Option<String>, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        Ok((id <= USERS).then(|| format!("user {id}")))
    }
    async fn users(&self, ids: Vec<u64>) -> Result<HashMap<u64, String>, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        Ok(ids
            .into_iter()
            .filter(|id| *id <= USERS)
            .map(|id| (id, format!("user {id}")))
            .collect())
    }
}

/// Ids drawn from a Zipf distribution of exponent 1 over 1..=USERS.
struct Zipf {
    cumulative: Vec<f64>,
    rng: StdRng,
}

impl Zipf {
    fn new(seed: u64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=USERS)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Zipf {
            cumulative,
            rng: StdRng::seed_from_u64(seed),
        }
    }
    fn next_id(&mut self) -> u64 {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let drawn = self.rng.random::<f64>() * total;
        self.cumulative.partition_point(|c| *c < drawn) as u64 + 1
    }
}

/// The ids of `GET /users/{id}` lines, most requested first.
fn top_ids(log: &std::path::Path, top: usize) -> std::io::Result<Vec<u64>> {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for line in std::io::BufReader::new(std::fs::File::open(log)?).lines() {
        let line = line?;
        let id = line
            .split_once("\"GET /users/")
            .and_then(|(_, rest)| rest.split_once(' '))
            .and_then(|(id, _)| id.parse::<u64>().ok());
        if let Some(id) = id {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut ranked: Vec<(u64, u64)> = counts.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(ranked.into_iter().take(top).map(|(id, _)| id).collect())
}

/// Serves `requests` and returns the hit ratio over them.
async fn serve(users: &Namespace<u64, String>, cache: &Aside, db: &Db, requests: &[u64]) -> aside::Result<f64> {
    let hits_before = cache.stats().hits;
    for id in requests {
        users.get_or_load(id, || db.user(*id)).await?;
    }
    Ok((cache.stats().hits - hits_before) as f64 / requests.len() as f64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log = std::env::temp_dir().join(format!("aside-example-access-{}.log", std::process::id()));
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&log)?);
        let mut yesterday = Zipf::new(1);
        for second in 0..20_000 {
            writeln!(
                out,
                "10.0.0.{} - - [05/Dec/2026:{:02}:{:02}:{:02} +0000] \"GET /users/{} HTTP/1.1\" 200 412",
                second % 250,
                second / 3600 % 24,
                second / 60 % 60,
                second % 60,
                yesterday.next_id()
            )?;
        }
        out.flush()?;
    }
    let top = top_ids(&log, TOP);
    std::fs::remove_file(&log)?;
    let top = top?;
    let mut today = Zipf::new(2);
    let first_requests: Vec<u64> = (0..2_000).map(|_| today.next_id()).collect();

    let mut results = Vec::new();
    for warm in [false, true] {
        let db = Db {
            queries: AtomicU64::new(0),
        };
        let cache = Aside::builder().build();
        let users = cache.namespace::<u64, String>("example:user").build()?;
        let mut warm_queries = 0;
        if warm {
            let found = users
                .warm(
                    &top,
                    WarmOptions::default().batch_size(100),
                    |ids| db.users(ids),
                    |_| {},
                )
                .await?;
            warm_queries = db.queries.swap(0, Ordering::Relaxed);
            println!("warmed {found} users (the {TOP} most requested in the log) in {warm_queries} queries");
        }
        let ratio = serve(&users, &cache, &db, &first_requests).await?;
        results.push((warm, ratio, db.queries.load(Ordering::Relaxed), warm_queries));
    }
    for (warm, ratio, queries, warm_queries) in results {
        println!(
            "{:<16} first {} requests: hit ratio {ratio:.3}, database queries {queries}{}",
            if warm { "warmed cache:" } else { "cold cache:" },
            first_requests.len(),
            if warm {
                format!(" (+{warm_queries} for the warm-up)")
            } else {
                String::new()
            },
        );
    }
    Ok(())
}
