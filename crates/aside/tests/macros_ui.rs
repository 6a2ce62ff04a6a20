//! Compile-time errors of `#[aside::cached]` misuse: each case under
//! `tests/ui/` must fail to compile with the message in its `.stderr`
//! (`TRYBUILD=overwrite` rewrites them after a deliberate change).

#[test]
fn misuse_is_a_clear_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
