//! What `aside` tells a [`tracing`] subscriber: a span per operation, and
//! keys as hashes.
//!
//! Owns the span every public operation of a [`crate::Namespace`] runs in,
//! and [`KeyHash`], the form in which a key appears in spans and log
//! events. Every span is named `aside`, at `DEBUG` level with target
//! `aside::op`, and carries:
//!
//! | field | value |
//! |---|---|
//! | `op` | the method: `get_or_load`, `fetch`, `get`, `set`, `update`, ... |
//! | `otel.name` | `aside.<op>`: the span's name when exported to OpenTelemetry (`tracing-opentelemetry` reads this field) |
//! | `namespace` | the namespace's name |
//! | `strategy` | `lease`, `versioned`, `delete` or `double-delete` |
//! | `key` | [`KeyHash`] of the full store key: never the key itself |
//! | `outcome` | reads: `hit`, `miss` (this call loaded), `coalesced`, `stale`; every operation: `error` when it failed |
//! | `fill_refused` | `true` when the value loaded was not cached because an invalidation revoked the lease |
//!
//! **Cost.** With no subscriber, or one that does not want `DEBUG` spans of
//! `aside::op`, a span is a check of its callsite's cached interest: the
//! fields (the key's hash included) are computed only for a span that is
//! enabled. The outcome is recorded from the operation's result, not from
//! inside the engine, so the hit path holds no tracing call besides the
//! span itself. `tests/tracing.rs` checks the fields, and that no key ever
//! reaches a span or an event in clear.

use std::fmt;

use futures::future::Either;
use tracing::Span;
use tracing::instrument::{Instrument, Instrumented};

use crate::engine::state::{Fetched, Source};
use crate::policy::Strategy;

/// A key as spans and log events show it: the first 16 hex digits (64
/// bits) of its SHA-1. The same key hashes the same in every process, so
/// an operator can follow one key across services without the key (an
/// e-mail address, a session id) reaching the logs.
pub struct KeyHash<'a>(pub &'a str);

impl fmt::Display for KeyHash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = sha1_smol::Sha1::from(self.0.as_bytes()).digest().bytes();
        for byte in &digest[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyHash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// True when a subscriber may want the operations' spans (`DEBUG`): the
/// same check `debug_span!` opens with (its `level_enabled!` is not public
/// API), the compile-time and the current global maximum level. False, an
/// in-process hit makes no span at all, not even a disabled one.
pub(crate) fn ops_traced() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    STATIC_MAX_LEVEL >= LevelFilter::DEBUG && LevelFilter::current() >= LevelFilter::DEBUG
}

/// The span of one operation. `key` is computed only if the span is
/// enabled: for a disabled span, building the full key would be wasted.
pub(crate) fn op_span(
    op: &'static str,
    namespace: &str,
    strategy: Strategy,
    key: impl FnOnce() -> Option<String>,
) -> Span {
    // No subscriber wants DEBUG at all: no span. `debug_span!` would still
    // build a disabled one and, with `tracing`'s `log` feature on (sqlx
    // turns it on), hand its fields to `log`: about 130 instructions of
    // every in-process hit (`scripts/profile-hits memory`).
    if !ops_traced() {
        return Span::none();
    }
    let span = tracing::debug_span!(
        target: "aside::op",
        "aside",
        op,
        otel.name = tracing::field::Empty,
        namespace,
        strategy = strategy.name(),
        key = tracing::field::Empty,
        outcome = tracing::field::Empty,
        fill_refused = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("aside.{op}"));
        if let Some(full) = key() {
            span.record("key", tracing::field::display(KeyHash(&full)));
        }
    }
    span
}

/// Runs `operation` in `span`, or bare when the span is disabled.
///
/// A disabled span has nothing to enter, yet `Instrumented` still entered
/// and left it on every poll (and, with `tracing`'s `log` feature on, which
/// a dependency may turn on, asked `log` whether to print that): about 400
/// instructions of a Redis hit (`scripts/profile-hits redis`). An `Either`
/// rather than an `async fn`: the latter kept `operation` twice in its
/// state, as its argument and as the future it awaits.
pub(crate) fn in_span<F: Future>(span: &Span, operation: F) -> Either<F, Instrumented<F>> {
    in_span_if(Some(span), operation)
}

/// As [`in_span`], bare also when there is no span at all.
pub(crate) fn in_span_if<F: Future>(span: Option<&Span>, operation: F) -> Either<F, Instrumented<F>> {
    match span {
        Some(span) if !span.is_disabled() => Either::Right(operation.instrument(span.clone())),
        _ => Either::Left(operation),
    }
}

/// Records how a read ended.
pub(crate) fn record_fetched<V, E>(span: &Span, result: &Result<Fetched<V>, E>) {
    if span.is_disabled() {
        return;
    }
    span.record(
        "outcome",
        match result {
            Ok(fetched) => source_name(fetched.source),
            Err(_) => "error",
        },
    );
}

/// Records an error as the outcome of an operation that is not a read.
pub(crate) fn record_result<T, E>(span: &Span, result: &Result<T, E>) {
    if result.is_err() && !span.is_disabled() {
        span.record("outcome", "error");
    }
}

/// Marks the current operation's fill as refused. Called where the
/// refusal is counted, which is inside the operation's span.
pub(crate) fn record_fill_refused() {
    Span::current().record("fill_refused", true);
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Hit => "hit",
        Source::Loaded => "miss",
        Source::Coalesced => "coalesced",
        Source::Stale => "stale",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no subscriber at all, an operation gets `Span::none()`, not a
    /// disabled span carrying metadata for `log` (which `debug_span!`
    /// builds when `tracing`'s `log` feature is on, as sqlx makes it in
    /// this workspace), so hits pay for no span. `tests/tracing.rs` checks
    /// what a subscriber that wants the spans sees.
    #[test]
    fn with_no_subscriber_an_operation_has_no_span_at_all() {
        let called = std::cell::Cell::new(false);
        let span = op_span("get", "users", Strategy::Lease, || {
            called.set(true);
            Some("users:1".to_string())
        });
        assert!(span.is_disabled());
        assert!(span.metadata().is_none(), "a disabled span was built: {span:?}");
        assert!(!called.get(), "the key was formatted for no one");
    }

    #[test]
    fn a_key_hash_is_16_hex_digits_and_stable() {
        let hash = KeyHash("user:profile:ada@example.com").to_string();
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hash, KeyHash("user:profile:ada@example.com").to_string());
        assert_ne!(hash, KeyHash("user:profile:ada@example.org").to_string());
        assert!(!hash.contains("ada"));
    }
}
