//! Compile tests of the declaration macros: every mistake in `fail/` must not
//! compile and must say why under the token at fault (the `.stderr` beside
//! it); every feature in `pass/` must compile and run.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p
//! walflow-ui-tests`, then read each one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/fail/**/*.rs");
    t.pass("tests/pass/*.rs");
}
