//! App mode: smoke test of the plumbing (to be replaced by check runs).
#![expect(clippy::unwrap_used, reason = "tests")]
mod support;
use std::time::Duration;
use support::*;

#[test]
fn a_push_in_app_mode_uses_installation_tokens() {
    let pool = Scripted::new(true);
    let host = Host::start_app("", Duration::from_secs(3600), pool.clone());
    let jobs = host.deliver("push", "d-push-1", &fixture("push.json"));
    host.wait_state(&jobs[0], "success");
    host.github.wait_for("final", Duration::from_secs(30), |p| {
        p.iter().any(|p| p.state == "success")
    });
    assert!(
        host.github.refused().is_empty(),
        "{:?}",
        host.github.refused()
    );
    assert_eq!(host.github.exchanges(), 1);
    eprintln!("{:#?}", host.github.seen());
}
