//! The fault layer's buses let go of what they subscribed to once their own
//! subscriber is gone, with no message to find it out by.

use std::sync::Arc;

use aside::bus::Bus;
use aside_testkit::fault::{FaultBus, FaultPlan, FaultRates, SilentBus};

/// Issue 15, the fault layer's half, found by `aside soak`: a `FaultBus`
/// forwarded its inner subscription until a message failed to reach a
/// subscriber that was gone; on a quiet per-program channel none came, and
/// the task, the program's `FaultPlan` (its whole journal) and the inner
/// subscription (a Redis pub/sub connection) lived for good.
#[tokio::test]
async fn a_fault_bus_lets_go_of_the_inner_subscription_when_its_subscriber_goes() {
    let inner = SilentBus::default();
    let bus = FaultBus::new(Arc::new(inner.clone()), FaultPlan::new(1, FaultRates::none()), 0);
    let events = bus.subscribe().await.unwrap();
    assert_eq!(inner.subscriptions(), (1, 1));
    drop(events);
    inner.until_let_go(1, "the inner subscription is let go of").await;
}
