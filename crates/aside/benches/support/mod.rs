//! What the benches share: one cached read through `get_or_load`, whose
//! loader counts its calls so a bench can prove every timed read was a hit.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aside::Namespace;
use criterion::{BenchmarkGroup, measurement::WallTime};
use tokio::runtime::Runtime;

/// Registers `name`: one `get_or_load` of `key` through `ns`, on `rt`.
/// Returns how many times its loader ran (0 when every read hit).
pub fn bench_get_or_load<V>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    ns: &Namespace<u64, V>,
    key: u64,
) -> Arc<AtomicUsize>
where
    V: Clone + Send + Sync + 'static,
{
    let loads = Arc::new(AtomicUsize::new(0));
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let loads = loads.clone();
            async move {
                let v = ns
                    .get_or_load(black_box(&key), || {
                        loads.fetch_add(1, Ordering::Relaxed);
                        async { Ok::<_, std::io::Error>(None) }
                    })
                    .await
                    .expect("get_or_load");
                debug_assert!(v.is_some());
                black_box(v)
            }
        });
    });
    loads
}
