//! The macros' compile-time checks, as a user meets them: every case in
//! `tests/ui/fail` must fail with the errors in its `.stderr`, every case in
//! `tests/ui/pass` must build and run. After changing a message, regenerate
//! the files with `TRYBUILD=overwrite` and review the diff.

#[test]
fn macros() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
