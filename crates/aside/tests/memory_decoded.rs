//! Issue 17: the memory store keeps decoded values. A hit decodes once,
//! byte-level readers get the bytes the engine writes, and namespaces of
//! other value types or codecs on the same key never take (or panic on)
//! an entry that is not theirs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::store::{Held, Store};
use aside::{Aside, Codec, Json, MemoryStore, MessagePack, Namespace, Strategy};
use aside_testkit::fault::{FaultPlan, FaultRates, FaultStore};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
    }
}

/// JSON, counting its decodes.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl<V: Serialize + serde::de::DeserializeOwned> Codec<V> for Counting {
    fn id(&self) -> u8 {
        <Json as Codec<V>>::id(&Json)
    }
    fn encode(&self, value: &V) -> aside::Result<Vec<u8>> {
        Json.encode(value)
    }
    fn decode(&self, bytes: &[u8]) -> aside::Result<V> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Json.decode(bytes)
    }
}

fn on(store: &MemoryStore) -> Aside {
    Aside::builder().store(store.clone()).build()
}

async fn load<V: Clone + Send + Sync + 'static>(ns: &Namespace<u64, V>, value: V) -> Option<V> {
    ns.get_or_load(&1, || {
        let value = value.clone();
        async move { Ok::<_, std::io::Error>(Some(value)) }
    })
    .await
    .expect("read")
}

/// A memory store and a namespace `p` on it whose codec counts decodes.
fn counted(strategy: Strategy) -> (MemoryStore, Namespace<u64, Profile>, Counting) {
    let decodes = Counting::default();
    let store = MemoryStore::new();
    let ns = on(&store)
        .namespace::<u64, Profile>("p")
        .ttl(TTL)
        .codec(decodes.clone())
        .strategy(strategy)
        .build()
        .unwrap();
    (store, ns, decodes)
}

/// A value is decoded once, not at each hit: fails if the hit path decodes
/// every time.
#[tokio::test]
async fn hits_do_not_decode() {
    for strategy in [Strategy::Lease, Strategy::Delete] {
        let (_store, ns, decodes) = counted(strategy);
        assert_eq!(load(&ns, profile(1)).await, Some(profile(1)));
        for _ in 0..10 {
            assert_eq!(load(&ns, profile(9)).await, Some(profile(1)), "a hit");
        }
        assert_eq!(
            decodes.0.load(Ordering::SeqCst),
            1,
            "{strategy:?}: a load and 10 hits should decode once, not at each hit"
        );
        assert_eq!(ns.get(&1).await.unwrap(), Some(profile(1)));
        assert_eq!(decodes.0.load(Ordering::SeqCst), 1, "{strategy:?}: get decoded");
    }
}

/// A load's write is kept decoded from the write on
/// (`Store::adopt_decoded`): the slot holds the decoded value before any
/// read, and its bytes are gone. Fails without the adoption: the slot
/// holds the bytes until a first hit decodes them.
#[tokio::test]
async fn a_loaded_value_is_kept_decoded_from_its_write_on() {
    for strategy in [Strategy::Lease, Strategy::Delete] {
        let (store, ns, decodes) = counted(strategy);
        assert_eq!(load(&ns, profile(1)).await, Some(profile(1)));
        // An entry under `Lease`, a plain value under the others.
        let view = match strategy {
            Strategy::Lease => store.peek_shared("p:1", &|_| None),
            _ => store.get_shared("p:1", &|_| None),
        }
        .expect("a memory store answers");
        assert!(
            matches!(view.value, Some(Held::Decoded(_))),
            "{strategy:?}: the slot holds the written bytes, not the decoded value"
        );
        assert_eq!(
            decodes.0.load(Ordering::SeqCst),
            1,
            "{strategy:?}: decoded once, for the store"
        );
        assert_eq!(load(&ns, profile(9)).await, Some(profile(1)), "a hit");
        assert_eq!(
            decodes.0.load(Ordering::SeqCst),
            1,
            "{strategy:?}: the first hit decoded"
        );
    }
}

/// A byte-level reader of a decoded slot gets the bytes the engine wrote.
#[tokio::test]
async fn byte_readers_of_a_decoded_slot_get_the_engines_bytes() {
    let store = MemoryStore::new();
    let ns = on(&store).namespace::<u64, Profile>("p").ttl(TTL).build().unwrap();
    assert_eq!(load(&ns, profile(1)).await, Some(profile(1)));
    let written = store.peek_entry("p:1").await.unwrap().value.expect("filled");
    // Hit: the slot now holds the decoded entry.
    assert_eq!(load(&ns, profile(9)).await, Some(profile(1)));
    let view = store.peek_entry("p:1").await.unwrap();
    assert_eq!(view.value.as_ref(), Some(&written), "peek_entry of a decoded slot");
    assert_eq!(store.get_entry("p:1").await.unwrap(), Some((written.clone(), false)));
    assert_eq!(
        store.peek_many(&["p:1".to_owned()]).await.unwrap()[0].value.as_ref(),
        Some(&written)
    );
    // Tombstones too (negative caching).
    let neg = on(&store)
        .namespace::<u64, Profile>("n")
        .ttl(TTL)
        .negative_ttl(TTL)
        .build()
        .unwrap();
    let none = neg
        .get_or_load(&1, || async { Ok::<_, std::io::Error>(None) })
        .await
        .unwrap();
    assert_eq!(none, None);
    let written = store.peek_entry("n:1").await.unwrap().value.expect("tombstone");
    assert_eq!(
        neg.get_or_load(&1, || async { Ok::<_, std::io::Error>(Some(profile(2))) })
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.peek_entry("n:1").await.unwrap().value, Some(written));
}

/// Two namespaces of one name on one store, with different value types or
/// codecs: each takes only its own entries (the other's read as
/// undecodable: a miss, deleted, loaded again), and nothing panics.
#[tokio::test]
async fn other_types_and_codecs_on_one_key_are_misses_not_panics() {
    let store = MemoryStore::new();
    let profiles = on(&store).namespace::<u64, Profile>("x").ttl(TTL).build().unwrap();
    let numbers = on(&store).namespace::<u64, u32>("x").ttl(TTL).build().unwrap();
    let packed = on(&store)
        .namespace::<u64, Profile>("x")
        .ttl(TTL)
        .codec(MessagePack)
        .build()
        .unwrap();
    assert_eq!(load(&profiles, profile(1)).await, Some(profile(1)));
    assert_eq!(load(&profiles, profile(9)).await, Some(profile(1)), "decoded now");
    // Another type: the decoded entry is not its own; its bytes do not decode.
    assert_eq!(load(&numbers, 7).await, Some(7));
    assert_eq!(load(&numbers, 8).await, Some(7), "its own, decoded");
    assert_eq!(load(&profiles, profile(2)).await, Some(profile(2)));
    assert_eq!(load(&profiles, profile(9)).await, Some(profile(2)));
    // The same type in another codec must not take the JSON entry.
    assert_eq!(
        load(&packed, profile(3)).await,
        Some(profile(3)),
        "took another codec's entry"
    );
    assert_eq!(load(&packed, profile(9)).await, Some(profile(3)));
    // Corrupt bytes: a miss, loaded again.
    store
        .put_entry("x:1", Bytes::from_static(b"\x00garbage"), TTL)
        .await
        .unwrap();
    assert_eq!(load(&profiles, profile(4)).await, Some(profile(4)));
    assert_eq!(load(&profiles, profile(9)).await, Some(profile(4)));
    // Batches read decoded slots of either type.
    let many = numbers
        .get_many_or_load(&[1, 2], |keys| async move {
            Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, 5u32)).collect())
        })
        .await
        .unwrap();
    assert_eq!(many.get(&1), Some(&5));
}

/// A user profile with a field [`Summary`] does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Full {
    id: u64,
    nick: Option<String>,
}

/// [`Full`] without its `nick`: it decodes `Full`'s bytes (serde ignores
/// the unknown field), and encodes to shorter ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Summary {
    id: u64,
}

/// Found by review: a reader of a type with fewer fields decoded the
/// entry first, the slot was swapped to its decoded value, and the writer's
/// own namespace then read the re-encoded, shorter bytes (`nick: None`) as
/// a hit. A slot is now kept decoded only when the decoded value encodes
/// back to the same bytes.
#[tokio::test]
async fn a_reader_of_fewer_fields_never_loses_the_writers_data() {
    let store = MemoryStore::new();
    let (writer, reader) = (on(&store), on(&store));
    let full: Namespace<u64, Full> = writer.namespace("u").ttl(TTL).build().unwrap();
    let summary: Namespace<u64, Summary> = reader.namespace("u").ttl(TTL).build().unwrap();
    let ada = Full {
        id: 1,
        nick: Some("ada".into()),
    };
    assert_eq!(load(&full, ada.clone()).await, Some(ada.clone()));
    for _ in 0..2 {
        assert_eq!(load(&summary, Summary { id: 9 }).await, Some(Summary { id: 1 }));
    }
    for _ in 0..2 {
        assert_eq!(
            load(&full, Full { id: 9, nick: None }).await,
            Some(ada.clone()),
            "the writer's entry lost a field to another type's reader"
        );
    }
}

/// Found by review: a raw namespace reading a counter swapped its slot to
/// the decoded number, and every `incr` after that failed ("not an
/// integer"). `incr` now reads a decoded slot's bytes.
#[tokio::test]
async fn a_counter_read_by_a_raw_namespace_still_increments() {
    let store = MemoryStore::new();
    let aside = on(&store);
    let counts: Namespace<String, u64> = aside.namespace("c").raw().ttl(TTL).build().unwrap();
    assert_eq!(store.incr("c:hits", TTL).await.unwrap(), 1);
    for _ in 0..2 {
        assert_eq!(counts.get(&"hits".to_owned()).await.unwrap(), Some(1));
    }
    assert_eq!(store.incr("c:hits", TTL).await.unwrap(), 2, "a read broke the counter");
    assert_eq!(counts.get(&"hits".to_owned()).await.unwrap(), Some(2));
}

/// The test kit's fault layer over a `MemoryStore`, with shared reads on,
/// passes its synchronous reads through, so the history checker's memory
/// campaigns cover the hit path a plain `MemoryStore` gives (they did not:
/// every read there went through the async calls). A hit through the
/// layer makes no async store call, under both families of strategies
/// (`peek_shared` for `Lease`, `get_shared` for the others). Off, the
/// layer keeps every read an async call, where faults are drawn.
#[tokio::test]
async fn the_fault_layer_keeps_the_synchronous_hit_path() {
    assert!(!FaultStore::memory(FaultPlan::new(7, FaultRates::none())).shares_decoded());
    for strategy in [Strategy::Lease, Strategy::Delete] {
        let (store, aside, ns) = through_the_fault_layer(FaultPlan::new(7, FaultRates::none()), strategy);
        assert!(store.shares_decoded());
        let load = || async { Ok::<_, std::io::Error>(Some(profile(1))) };
        assert_eq!(ns.get_or_load(&1, load).await.unwrap(), Some(profile(1)));
        // The first hit may decode the filled bytes; from then on the
        // value is held decoded.
        assert_eq!(ns.get_or_load(&1, load).await.unwrap(), Some(profile(1)));
        let calls = store.calls();
        for _ in 0..10 {
            assert_eq!(ns.get_or_load(&1, load).await.unwrap(), Some(profile(1)));
        }
        assert_eq!(store.calls(), calls, "{strategy:?}: a hit went through the async calls");
        assert_eq!(aside.stats().hits, 11, "{strategy:?}");
    }
}

/// A namespace of profiles with `strategy` over the test kit's fault layer
/// on a `MemoryStore`, shared reads on, drawing from `plan`.
fn through_the_fault_layer(plan: FaultPlan, strategy: Strategy) -> (Arc<FaultStore>, Aside, Namespace<u64, Profile>) {
    let store = Arc::new(FaultStore::memory(plan).with_shared_reads());
    let aside = Aside::builder().shared_store(store.clone()).build();
    let ns = aside
        .namespace("layered")
        .ttl(TTL)
        .strategy(strategy)
        .build()
        .expect("namespace");
    (store, aside, ns)
}

/// A store that shares decoded values answers every key: a batch read
/// takes a `None` for a key after its first as a miss. Under a plan of
/// delays only (which never make a real store miss), cached keys read in
/// batches through the fault layer with shared reads on are all hits and
/// load nothing (review finding: a layer that declined its synchronous
/// reads when it drew a fault turned 57 of 200 such reads into misses and
/// loads).
#[tokio::test]
async fn cached_keys_read_in_batches_through_the_fault_layer_are_all_hits() {
    for strategy in [Strategy::Lease, Strategy::Delete] {
        let rates = FaultRates {
            delay: 0.5,
            ..FaultRates::none()
        };
        let plan = FaultPlan::new(11, rates);
        plan.set_enabled(false);
        let (_store, _aside, ns) = through_the_fault_layer(plan.clone(), strategy);
        let keys: Vec<u64> = (1..=20).collect();
        let loads = Arc::new(AtomicUsize::new(0));
        let load = |missing: Vec<u64>| {
            let loads = loads.clone();
            async move {
                loads.fetch_add(missing.len(), Ordering::SeqCst);
                Ok::<_, std::io::Error>(missing.into_iter().map(|k| (k, profile(k))).collect())
            }
        };
        ns.get_many_or_load(&keys, load).await.unwrap();
        let filled = loads.load(Ordering::SeqCst);
        assert_eq!(filled, keys.len());
        plan.set_enabled(true);
        for _ in 0..10 {
            let found = ns.get_many_or_load(&keys, load).await.unwrap();
            assert_eq!(found.len(), keys.len());
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            filled,
            "{strategy:?}: a cached key was loaded again"
        );
    }
}

/// A value first read after its logical expiry, while the store still
/// holds it (fail-safe keeps it past its TTL), is not a fresh hit: the
/// loader is asked, on every strategy that reads decoded values. The hit
/// judged freshness at the instant of its lookup, which comes before the
/// decode, and the decode gave an expired entry a deadline of its own
/// decoding time: the entry was served as fresh (fails without
/// `FreshUntil::Past`).
#[tokio::test]
async fn a_value_first_read_after_its_expiry_is_not_a_fresh_hit() {
    const LIFE: Duration = Duration::from_millis(50);
    for strategy in [Strategy::Lease, Strategy::Delete] {
        let store = MemoryStore::new();
        let aside = on(&store);
        let ns = aside
            .namespace::<u64, Profile>(&format!("expired-{strategy}"))
            .strategy(strategy)
            .ttl(LIFE)
            .jitter(0.0)
            .fail_safe(Duration::from_secs(60), Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(load(&ns, profile(1)).await, Some(profile(1)));
        let filled = std::time::Instant::now();
        // Past its life on every clock, and never read meanwhile (so never decoded).
        while let Some(left) = (filled + LIFE * 2).checked_duration_since(std::time::Instant::now()) {
            tokio::time::sleep(left).await;
        }
        let fetched = ns
            .fetch(&1, || async { Ok::<_, std::io::Error>(Some(profile(2))) })
            .await
            .unwrap();
        assert_eq!(
            (fetched.value, fetched.source),
            (Some(profile(2)), aside::Source::Loaded),
            "{strategy}: the expired value was served"
        );
    }
}
