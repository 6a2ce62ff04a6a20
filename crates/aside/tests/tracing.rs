//! The spans and events `aside` gives a `tracing` subscriber
//! (`aside::telemetry`): one span per operation with its namespace,
//! strategy, hashed key and outcome (hit, miss, coalesced, stale, error,
//! and a refused fill), and no key in clear in any span or event.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::store::Store;
use aside::telemetry::KeyHash;
use aside::{Aside, MemoryStore};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A key that must never reach a span or an event as it is.
const SECRET: &str = "ada@example.com";

type Fields = BTreeMap<String, String>;

/// Every closed span's fields and every event's fields, in order.
#[derive(Clone, Default)]
struct Captured {
    spans: Arc<Mutex<Vec<Fields>>>,
    events: Arc<Mutex<Vec<Fields>>>,
}

struct FieldsOf<'a>(&'a mut Fields);

impl Visit for FieldsOf<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        fields.insert("name".into(), attrs.metadata().name().into());
        attrs.record(&mut FieldsOf(&mut fields));
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        let fields = extensions.get_mut::<Fields>().unwrap();
        values.record(&mut FieldsOf(fields));
    }
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldsOf(&mut fields));
        self.events.lock().unwrap().push(fields);
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        if let Some(fields) = span.extensions_mut().remove::<Fields>() {
            self.spans.lock().unwrap().push(fields);
        }
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    /// The closed `aside` spans of operation `op`.
    fn ops(&self, op: &str) -> Vec<Fields> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["name"] == "aside" && f.get("op").map(String::as_str) == Some(op))
            .cloned()
            .collect()
    }

    fn outcomes(&self, op: &str) -> Vec<String> {
        self.ops(op)
            .iter()
            .map(|f| f.get("outcome").cloned().unwrap_or_default())
            .collect()
    }

    /// No span or event holds the secret key in any field.
    fn assert_no_clear_key(&self) {
        for fields in self
            .spans
            .lock()
            .unwrap()
            .iter()
            .chain(self.events.lock().unwrap().iter())
        {
            for (name, value) in fields {
                assert!(!value.contains(SECRET), "{name} = {value} shows the key");
            }
        }
    }
}

async fn found(_: &str) -> Result<Option<String>, std::io::Error> {
    tokio::task::yield_now().await;
    Ok(Some("Ada".to_owned()))
}

#[tokio::test]
async fn each_read_has_a_span_with_its_namespace_strategy_hashed_key_and_outcome() {
    let captured = Captured::default();
    let _guard = captured.install();
    let names = Aside::builder()
        .build()
        .namespace::<String, String>("name")
        .build()
        .unwrap();
    let key = SECRET.to_owned();
    names.get_or_load(&key, || found(SECRET)).await.unwrap();
    names.get_or_load(&key, || found(SECRET)).await.unwrap();
    // Two concurrent reads of a missing key: one loads, the other joins it.
    names.invalidate(&key).await.unwrap();
    let (a, b) = tokio::join!(names.fetch(&key, || found(SECRET)), names.fetch(&key, || found(SECRET)));
    a.unwrap();
    b.unwrap();
    let failing = names
        .get_or_load(&"other".to_owned(), || async {
            Err::<Option<String>, _>(std::io::Error::other("the database is down"))
        })
        .await;
    assert!(failing.is_err());
    names.peek(&key).await.unwrap();

    assert_eq!(captured.outcomes("get_or_load"), ["miss", "hit", "error"]);
    let mut joined = captured.outcomes("fetch");
    joined.sort();
    assert_eq!(joined, ["coalesced", "miss"]);
    assert_eq!(captured.outcomes("peek"), ["hit"]);
    assert_eq!(captured.ops("invalidate").len(), 1);
    let first = &captured.ops("get_or_load")[0];
    assert_eq!(first["namespace"], "name");
    assert_eq!(first["strategy"], "lease");
    assert_eq!(first["otel.name"], "aside.get_or_load");
    let full = names.store_key(&key).unwrap();
    assert_eq!(first["key"], KeyHash(&full).to_string());
    captured.assert_no_clear_key();
}

/// The in-process fast paths (an L1 hit, a key refused before any
/// lookup) have their spans and outcomes too while a subscriber listens.
#[tokio::test]
async fn an_l1_hit_and_a_refused_key_have_their_spans() {
    let captured = Captured::default();
    let _guard = captured.install();
    let names = Aside::builder()
        .build()
        .namespace::<String, String>("name")
        .l1(100, Duration::from_secs(60))
        .build()
        .unwrap();
    let key = SECRET.to_owned();
    names.get_or_load(&key, || found(SECRET)).await.unwrap();
    let hit = names.fetch(&key, || found(SECRET)).await.unwrap();
    assert_eq!(hit.source, aside::Source::Hit);
    let refused = names.get_or_load(&"a b".to_owned(), || found(SECRET)).await;
    assert!(refused.is_err(), "a key with a space is refused");
    assert_eq!(captured.outcomes("get_or_load"), ["miss", "error"]);
    assert_eq!(captured.outcomes("fetch"), ["hit"]);
    captured.assert_no_clear_key();
}

#[tokio::test]
async fn a_stale_value_served_and_a_refused_fill_show_in_the_span() {
    let captured = Captured::default();
    let _guard = captured.install();
    // Two processes' worth of `Aside` over one store: a reader of the
    // second finds the first's lease, and is served the stale value.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let process = || {
        Aside::builder()
            .shared_store(store.clone())
            .build()
            .namespace::<String, String>("name")
            .serve_stale_while_loading(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (names, elsewhere) = (process(), process());
    let key = SECRET.to_owned();
    names.set(&key, &"Ada".to_owned()).await.unwrap();
    names.invalidate(&key).await.unwrap();
    let (a, b) = tokio::join!(
        names.fetch(&key, || found(SECRET)),
        elsewhere.fetch(&key, || found(SECRET))
    );
    a.unwrap();
    b.unwrap();
    let mut outcomes = captured.outcomes("fetch");
    outcomes.sort();
    assert_eq!(outcomes, ["miss", "stale"]);

    // A load during which the key is invalidated: its fill is refused.
    let other = "grace@example.com".to_owned();
    names
        .get_or_load(&other, || {
            let names = names.clone();
            let other = other.clone();
            async move {
                names.invalidate(&other).await.unwrap();
                Ok::<_, std::io::Error>(Some("Grace".to_owned()))
            }
        })
        .await
        .unwrap();
    let refused = captured.ops("get_or_load");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].get("fill_refused").map(String::as_str), Some("true"));
    assert_eq!(refused[0]["outcome"], "miss");
    captured.assert_no_clear_key();
}

#[tokio::test]
async fn a_queued_invalidation_and_its_replay_log_the_key_hashed() {
    let captured = Captured::default();
    let _guard = captured.install();
    let store = common::Instrumented::new(MemoryStore::new(), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
    let hooks = store.hooks.clone();
    let aside = Aside::builder().shared_store(Arc::new(store) as Arc<dyn Store>).build();
    let names = aside.namespace::<String, String>("name").build().unwrap();
    let key = SECRET.to_owned();
    hooks.fail("invalidate");
    assert!(names.invalidate(&key).await.is_err());
    hooks.heal("invalidate");
    let report = aside.shutdown(Duration::from_secs(60)).await;
    assert_eq!(report.replayed, 1);
    assert_eq!(captured.outcomes("invalidate"), ["error"]);
    let full = names.store_key(&key).unwrap();
    let hashed = KeyHash(&full).to_string();
    let events = captured.events.lock().unwrap().clone();
    let message = |m: &str| {
        events
            .iter()
            .find(|e| e.get("message").is_some_and(|v| v.contains(m)))
            .cloned()
            .unwrap_or_else(|| panic!("no event {m:?} in {events:?}"))
    };
    assert_eq!(message("queued for replay")["key"], hashed);
    assert_eq!(message("queued invalidation replayed")["key"], hashed);
    captured.assert_no_clear_key();
}

thread_local! {
    /// What happened on this test's thread, in order: a span made, a value
    /// cloned out of a cache.
    static ORDER: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A value whose clones are logged in [`ORDER`]: a hit clones the value
/// out of the L1 or the store, inside the lookup.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Marked(String);

impl Clone for Marked {
    fn clone(&self) -> Self {
        ORDER.with_borrow_mut(|order| order.push("clone"));
        Marked(self.0.clone())
    }
}

/// Logs in [`ORDER`] the making of each `aside` span, and each time a
/// span is entered (the read's future, instrumented, enters its span on
/// every poll; an in-process hit answers before that future is built).
struct SpansMade;

impl<S: Subscriber> Layer<S> for SpansMade {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "aside" {
            ORDER.with_borrow_mut(|order| order.push("span"));
        }
    }
    fn on_enter(&self, _: &Id, _: Context<'_, S>) {
        ORDER.with_borrow_mut(|order| order.push("enter"));
    }
}

/// An in-process hit (the L1's, the memory store's) makes its span before
/// its lookup, so the span's life covers the lookup (review finding: it
/// was made after it), and answers before the read's future is built (the
/// span is never entered). The lookup shows as the clone of the value it
/// serves. The third subject is the test kit's fault layer with shared
/// reads over a `MemoryStore`, as the history campaigns run it: its hits
/// must take the same synchronous path (`Store::shares_decoded`), not the
/// read path's own synchronous look, which runs inside the entered span.
#[tokio::test]
async fn an_in_process_hits_span_is_made_before_its_lookup() {
    use aside_testkit::fault::{FaultPlan, FaultRates, FaultStore};
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(SpansMade));
    for subject in ["memory", "l1", "fault-layer"] {
        let aside = match subject {
            "fault-layer" => Aside::builder()
                .store(FaultStore::memory(FaultPlan::new(3, FaultRates::none())).with_shared_reads())
                .build(),
            _ => Aside::builder().build(),
        };
        let mut builder = aside.namespace::<u64, Marked>("marked").ttl(Duration::from_secs(60));
        if subject == "l1" {
            builder = builder.l1(100, Duration::from_secs(60));
        }
        let marked = builder.build().unwrap();
        let load = || async { Ok::<_, std::io::Error>(Some(Marked("Ada".to_owned()))) };
        // A miss, then a hit that may decode the filled bytes.
        marked.get_or_load(&1, load).await.unwrap();
        marked.get_or_load(&1, load).await.unwrap();
        ORDER.with_borrow_mut(Vec::clear);
        let hit = marked.fetch(&1, load).await.unwrap();
        assert_eq!(hit.source, aside::Source::Hit, "{subject}");
        let order = ORDER.with_borrow(Clone::clone);
        assert_eq!(order.first(), Some(&"span"), "{subject}: {order:?}");
        assert!(
            order.contains(&"clone"),
            "{subject}: the hit cloned no value: {order:?}"
        );
        assert!(
            !order.contains(&"enter"),
            "{subject}: the hit took the read's future: {order:?}"
        );
    }
}
