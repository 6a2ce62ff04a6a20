//! The command-line tool's error type: one human-readable message per failure.
//!
//! Owns how failures are described to the user. Every fallible step adds
//! what it was doing ([`Context::context`]), so `main` prints one line such
//! as `cannot connect to Redis at redis://...: connection refused` and exits
//! non-zero; nothing in the tool panics on a bad input or an unreachable
//! server.

use std::fmt;

/// A failure of the tool, ready to be shown to the user.
#[derive(Debug)]
pub struct CliError {
    message: String,
}

/// Shorthand for `Result<T, CliError>`.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// `error` and the errors it wraps, joined with `": "`, skipping causes
/// whose text the message already holds.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A store error names its server itself (its password masked), so it
/// needs no context of ours, which would print the raw URL.
impl From<aside::store::StoreError> for CliError {
    fn from(error: aside::store::StoreError) -> Self {
        CliError::new(describe(&error))
    }
}

/// Adds what the tool was doing to an error.
pub trait Context<T> {
    /// Wraps the error as `"{what}: {error}"`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: std::error::Error> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| CliError::new(format!("{what}: {}", describe(&e))))
    }
}
