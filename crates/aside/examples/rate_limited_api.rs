//! An external HTTP API with a rate limit as the data source: how many
//! outbound calls the cache saves, and how many requests the limit would
//! have refused without it.
//!
//! Needs nothing outside the example (no feature, no server):
//!
//! ```sh
//! cargo run --example rate_limited_api
//! ```
//!
//! It starts a small axum server on a free loopback port standing for the
//! external API (`GET /rates/{currency}`, at most 25 calls per second, a
//! `429 Too Many Requests` past it, every call counted), then sends 300
//! lookups over 12 currencies (the popular ones more often) twice: straight
//! to the API, then through aside. It prints both runs' counts and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/local_server.rs"]
mod local_server;

use aside::{Aside, Namespace};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use local_server::LocalServer;

const LIMIT_PER_SECOND: u64 = 25;
const CURRENCIES: [&str; 12] = [
    "EUR", "USD", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "CZK",
];

/// The API's side: calls in the current one-second window, and in total.
struct Limiter {
    window: std::sync::Mutex<(Instant, u64)>,
    calls: AtomicU64,
    refused: AtomicU64,
}

async fn rate(State(limiter): State<Arc<Limiter>>, Path(currency): Path<String>) -> Result<String, StatusCode> {
    limiter.calls.fetch_add(1, Ordering::Relaxed);
    {
        let mut window = limiter.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        if window.1 > LIMIT_PER_SECOND {
            limiter.refused.fetch_add(1, Ordering::Relaxed);
            return Err(StatusCode::TOO_MANY_REQUESTS);
        }
    }
    let position = CURRENCIES
        .iter()
        .position(|c| *c == currency)
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(format!("{:.4}", 1.0 + position as f64 / 10.0))
}

/// Why a lookup failed: the API's answer, or the network.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("the API answered {0}")]
    Status(u16),
    #[error("the API could not be reached: {0}")]
    Network(#[from] reqwest::Error),
}

/// One outbound call.
async fn fetch_rate(client: &reqwest::Client, base: &str, currency: &str) -> Result<Option<String>, ApiError> {
    let response = client.get(format!("{base}/rates/{currency}")).send().await?;
    match response.status() {
        StatusCode::OK => Ok(Some(response.text().await?)),
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(ApiError::Status(other.as_u16())),
    }
}

/// 300 lookups, the popular currencies more often (weights 1/rank).
fn lookups() -> Vec<&'static str> {
    let weights: Vec<f64> = (1..=CURRENCIES.len()).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut out = Vec::new();
    for (currency, weight) in CURRENCIES.iter().zip(&weights) {
        let times = (300.0 * weight / total).round() as usize;
        out.extend(std::iter::repeat_n(*currency, times));
    }
    // Interleave so that every currency's first lookup is not at the start.
    let mut mixed = Vec::with_capacity(out.len());
    let stride = 7;
    for start in 0..stride {
        mixed.extend(out.iter().skip(start).step_by(stride).copied());
    }
    mixed
}

/// Counts of one run.
struct Run {
    ok: u64,
    refused: u64,
    calls: u64,
}

async fn run(limiter: &Limiter, through: Option<&Namespace<str, String>>, client: &reqwest::Client, base: &str) -> Run {
    let calls_before = limiter.calls.load(Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for currency in lookups() {
        let answer = match through {
            Some(rates) => rates
                .get_or_load(currency, || fetch_rate(client, base, currency))
                .await
                .map_err(|e| e.to_string()),
            None => fetch_rate(client, base, currency).await.map_err(|e| e.to_string()),
        };
        match answer {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    Run {
        ok,
        refused,
        calls: limiter.calls.load(Ordering::Relaxed) - calls_before,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limiter = Arc::new(Limiter {
        window: std::sync::Mutex::new((Instant::now(), 0)),
        calls: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/rates/{currency}", get(rate))
        .with_state(limiter.clone());
    let server = LocalServer::start(router).await?;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let total = lookups().len();

    let direct = run(&limiter, None, &client, &base).await;
    // A fresh window for the second run, so both start equal.
    *limiter.window.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), 0);
    let cache = Aside::builder().build();
    let rates = cache
        .namespace::<str, String>("example:rate")
        .ttl(Duration::from_secs(60))
        .build()?;
    let cached = run(&limiter, Some(&rates), &client, &base).await;

    println!("{total} lookups of 12 currencies; the API allows {LIMIT_PER_SECOND} calls per second");
    for (name, counts) in [("straight to the API", &direct), ("through aside", &cached)] {
        println!(
            "{name:<20} answered {:>3}, refused (429) {:>3}, outbound calls {:>3}",
            counts.ok, counts.refused, counts.calls
        );
    }
    let stats = cache.stats();
    println!(
        "aside: {} hits, {} loads; outbound calls saved: {} of {total}",
        stats.hits,
        stats.loads,
        direct.calls - cached.calls
    );
    println!(
        "the API refused {} calls in all",
        limiter.refused.load(Ordering::Relaxed)
    );
    server.stop().await
}
