//! A panic anywhere ends the process at once.
//!
//! A core that panics leaves the others waiting on it (the router's rings, the main thread joining
//! every executor), and glommio's executor does not always finish unwinding: the process would
//! hang, deaf even to SIGTERM. Ending it is safe because every acknowledged message is in the
//! spool: the supervisor (systemd's `Restart=`) starts Volley again and recovery requeues them.

/// Installs a panic hook that prints the panic as Rust would, logs it, then aborts the process.
/// For `volley serve` and `volley_serve` only: a test binary keeps the default, so that a failing
/// assertion fails its test and not the whole run.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        log::error!(
            "{} panicked ({}); aborting: acknowledged mail is in the spool, and a restart requeues it",
            thread.name().unwrap_or("a thread"),
            info.location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default()
        );
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use glommio::{LocalExecutorBuilder, Placement};

    /// Set in the child process this test starts; the child plays the daemon.
    const CHILD: &str = "VOLLEY_CRASH_ONLY_CHILD";
    const TEST: &str = "runtime::crash_only::tests::a_core_that_panics_ends_the_process";

    /// What made `volley serve` hang: one core panics in a task of its own while another core
    /// waits forever and the main thread joins them both.
    fn two_cores_one_panics() {
        super::abort_on_panic();
        let waiting = LocalExecutorBuilder::new(Placement::Unbound)
            .name("volley-core-0")
            .spawn(|| async {
                loop {
                    glommio::timer::sleep(Duration::from_secs(3600)).await;
                }
            })
            .expect("executor");
        let panicking = LocalExecutorBuilder::new(Placement::Unbound)
            .name("volley-core-1")
            .spawn(|| async {
                glommio::spawn_local(async {
                    let list = std::cell::RefCell::new(Vec::<u8>::new());
                    let _held = list.borrow_mut();
                    list.borrow_mut().push(1);
                })
                .await;
            })
            .expect("executor");
        let _ = panicking.join();
        let _ = waiting.join();
    }

    #[test]
    fn a_core_that_panics_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            two_cores_one_panics();
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("child");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the process still ran 30 s after a core panicked");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}\n{stderr}");
        assert!(stderr.contains("already borrowed"), "{stderr}");
        assert!(stderr.contains("volley-core-1"), "{stderr}");
    }
}
