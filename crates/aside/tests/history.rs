//! The history checker of issue 12 on every store: random programs over
//! every public operation, three `Aside` instances sharing one store and one
//! bus through the test kit's fault layer, and the invariants of DESIGN
//! section 8 checked on the recorded history (see `aside_testkit::history`).
//!
//! A bounded budget per store by default; `ASIDE_HISTORY_CASES=N` runs N
//! programs per store, `ASIDE_HISTORY_SEED=<seed>` replays one program (the
//! seed a failure printed); see `CampaignConfig::from_env` for the rest.
//! The stores run one after another. The test fails while any promise is
//! broken: the summary line says how many programs ran and how many faults
//! were injected, and each failing seed is printed with its violations, the
//! history around them and the shrunk program.

use std::sync::Arc;
use std::time::Duration;

use aside_testkit::RedisServer;
use aside_testkit::history::{self, CampaignConfig, StoreSpec};

/// Programs per store by default (about half a second each, plus shrinking).
const DEFAULT_CASES: usize = 80;
/// Without `ASIDE_HISTORY_CASES`, no program starts after this long: the
/// default budget stays about two minutes per store on a busy machine.
const DEFAULT_BUDGET: Duration = Duration::from_secs(120);

/// One store at a time: the programs are timing-sensitive, and the machine small.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn campaign(store: StoreSpec) {
    let _one_at_a_time = SERIAL.lock().await;
    let mut config = CampaignConfig::from_env(store, DEFAULT_CASES);
    if std::env::var_os("ASIDE_HISTORY_CASES").is_none() && config.time_budget.is_none() {
        config.time_budget = Some(DEFAULT_BUDGET);
    }
    config.progress = Some(Arc::new(|p: &history::Progress| {
        eprintln!(
            "history {}{} {}/{} seed={} {}: {} ops, {} faults, {} failures, {} measured, {} ms",
            p.store,
            if p.shrinking { " (shrinking)" } else { "" },
            p.done,
            p.total,
            p.seed,
            p.config,
            p.operations,
            p.faults,
            p.failures,
            p.measured,
            p.elapsed_ms
        );
    }));
    let report = history::run_campaign(&config).await;
    println!("{}", report.summary());
    for failure in &report.failures {
        println!("{failure}");
    }
    assert!(report.programs > 0, "no program ran: {}", report.summary());
    assert!(
        report.passed(),
        "{}\n\n{}",
        report.summary(),
        report.failures.first().map(ToString::to_string).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_on_memory() {
    campaign(StoreSpec::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_on_redis() {
    let server = RedisServer::start();
    let url = server.url();
    campaign(StoreSpec::Redis {
        // The server is this test's own: FLUSHALL is its restart.
        restart: Some(history::redis_flushall(&url)),
        url,
    })
    .await;
    drop(server);
}

#[cfg(feature = "memcached")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_on_memcached() {
    use std::sync::Mutex;

    use aside::store::Store;
    use aside::store::memcached::MemcachedStore;
    use aside_testkit::MemcachedServer;
    let server = Arc::new(Mutex::new(MemcachedServer::start()));
    let addr = server.lock().unwrap_or_else(|e| e.into_inner()).addr();
    let connect: history::ConnectFn = Arc::new(move || {
        let addr = addr.clone();
        Box::pin(async move { Ok(Arc::new(MemcachedStore::connect(&addr).await?) as Arc<dyn Store>) })
    });
    let restarted = server.clone();
    // A real restart: memcached comes back empty, its CAS counter from the start.
    let restart: aside_testkit::fault::RestartFn = Arc::new(move || {
        let server = restarted.clone();
        Box::pin(async move {
            let _ =
                tokio::task::spawn_blocking(move || server.lock().unwrap_or_else(|e| e.into_inner()).restart()).await;
            None
        })
    });
    campaign(StoreSpec::Custom {
        name: "memcached".into(),
        connect,
        restart: Some(restart),
    })
    .await;
}
