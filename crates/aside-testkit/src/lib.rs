//! t
pub fn y() {}
