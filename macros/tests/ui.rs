//! Every error a user of `kernels!` can see, pinned (trybuild), and one valid invocation.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
