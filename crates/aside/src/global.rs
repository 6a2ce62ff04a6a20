//! The process-wide [`Aside`]: registered once at start-up with [`set`],
//! read with [`get`]. Owns nothing else.
//!
//! It exists for code that has no `Aside` at hand, chiefly functions under
//! `#[aside::cached]` without an `aside = ARG` argument (feature `macros`).
//! Passing an `Aside` explicitly stays the better choice where it is easy:
//! tests can then give each case its own.

use std::sync::OnceLock;

use crate::Aside;

static GLOBAL: OnceLock<Aside> = OnceLock::new();

/// Registers `aside` as the process's global `Aside`. Only the first call
/// wins: the global cannot be replaced, so that no function can cache
/// through one `Aside` and invalidate through another.
///
/// # Examples
///
/// ```
/// let cache = aside::Aside::builder().build();
/// // At start-up, before any function reads the global:
/// aside::global::set(cache.clone()).expect("registered once, at start-up");
/// assert!(aside::global::get().is_some());
/// assert!(aside::global::set(cache).is_err()); // already registered
/// ```
///
/// # Errors
/// Gives `aside` back when a global was already registered.
pub fn set(aside: Aside) -> Result<(), Aside> {
    GLOBAL.set(aside)
}

/// The global `Aside`, if [`set`] was called.
///
/// # Examples
///
/// ```
/// # let _ = aside::global::set(aside::Aside::builder().build());
/// if let Some(cache) = aside::global::get() {
///     println!("caching on {:?}", cache.store().name());
/// }
/// ```
pub fn get() -> Option<&'static Aside> {
    GLOBAL.get()
}
