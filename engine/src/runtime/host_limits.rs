//! Process limits checked at start: open files raised where allowed, and the memlock floor that
//! io_uring (glommio) needs, with a message that says what to change.

use std::fmt;

/// glommio refuses to start its rings below this much lockable memory.
pub const MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

#[derive(Debug)]
pub struct MemlockTooLow {
    pub limit_bytes: u64,
}

impl fmt::Display for MemlockTooLow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring cannot start: RLIMIT_MEMLOCK is {} KiB, and glommio needs at least {} KiB. \
             Raise it (`ulimit -l 8192` in the starting shell, `LimitMEMLOCK=8M` in a systemd unit, \
             or `memlock` in /etc/security/limits.conf), or run as root / with CAP_IPC_LOCK",
            self.limit_bytes / 1024,
            MEMLOCK_MIN_BYTES / 1024
        )
    }
}

impl std::error::Error for MemlockTooLow {}

fn get(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and has no other effect.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    (rc == 0).then_some(limit)
}

/// Raises the soft open-files limit to the hard one; returns the limit in force afterwards.
pub fn raise_open_files() -> Option<u64> {
    let mut limit = get(libc::RLIMIT_NOFILE)?;
    if limit.rlim_cur < limit.rlim_max {
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct; failure leaves the old limit, which we report.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            limit = wanted;
        }
    }
    Some(limit.rlim_cur)
}

/// Fails when the memlock limit is below what glommio needs. Root with CAP_IPC_LOCK is exempt from
/// the accounting, so the check only applies to unprivileged runs.
pub fn check_memlock() -> Result<(), MemlockTooLow> {
    let Some(limit) = get(libc::RLIMIT_MEMLOCK) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= MEMLOCK_MIN_BYTES || root {
        Ok(())
    } else {
        Err(MemlockTooLow {
            limit_bytes: limit.rlim_cur,
        })
    }
}
