//! Ending a peer this test started, by its PID.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// SIGTERM to the child's PID (through kill(1): this crate has no signal
/// bindings), wait up to `grace` for it to exit, then SIGKILL and reap it.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
