//! `libvolley`: the C ABI for embedding Volley in another process and for control planes written in
//! C or anything with a C FFI. The declarations are in `include/volley.h`.
//!
//! Conventions: strings in are NUL-terminated UTF-8; strings out are written NUL-terminated into a
//! caller's buffer of `len` bytes and the function returns the bytes needed (without the NUL), so a
//! caller can retry with a bigger buffer. Negative returns are errors. No function panics across the
//! boundary.

use std::ffi::{CStr, c_char, c_int};
use std::path::PathBuf;

use volley::config::Config;

/// Writes `text` into `out` (capacity `len`), NUL-terminated and cut to fit; returns its full length.
fn write_out(text: &str, out: *mut c_char, len: usize) -> i64 {
    if !out.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: the caller promises `out` has `len` writable bytes; we write n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), n);
            *out.add(n) = 0;
        }
    }
    text.len() as i64
}

/// A borrowed string argument, or `None` for NULL or invalid UTF-8.
fn arg<'a>(s: *const c_char) -> Option<&'a str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: the caller promises a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(s) }.to_str().ok()
}

/// The library's version, e.g. "0.1.0" (a static string).
#[unsafe(no_mangle)]
pub extern "C" fn volley_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Validates a configuration given as TOML text. Returns 0 when valid, 1 when not (the errors, one
/// a line with key and line number, go to `errors`), -1 for a bad argument.
#[unsafe(no_mangle)]
pub extern "C" fn volley_config_check(
    toml: *const c_char,
    errors: *mut c_char,
    len: usize,
) -> c_int {
    let Some(text) = arg(toml) else {
        return -1;
    };
    match Config::parse(text) {
        Ok(_) => {
            write_out("", errors, len);
            0
        }
        Err(e) => {
            write_out(&e.to_string(), errors, len);
            1
        }
    }
}

/// Makes an argon2id PHC string for a customer's `password_hash`. Returns its length, or -1.
#[unsafe(no_mangle)]
pub extern "C" fn volley_hash_password(
    password: *const c_char,
    out: *mut c_char,
    len: usize,
) -> i64 {
    match arg(password).map(volley::auth::hash_password) {
        Some(Ok(hash)) => write_out(&hash, out, len),
        _ => -1,
    }
}

/// Runs the MTA in the calling thread until `volley_stop` or SIGTERM, with the configuration file
/// at `config_path` (NULL: the embedded default). Returns 0 after a clean stop, 1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn volley_serve(config_path: *const c_char) -> c_int {
    let (config, path) = if config_path.is_null() {
        (Config::embedded_default(), None)
    } else {
        let Some(p) = arg(config_path) else {
            return 1;
        };
        match Config::load(std::path::Path::new(p)) {
            Ok(c) => (c, Some(PathBuf::from(p))),
            Err(e) => {
                eprintln!("volley: {p}: {e}");
                return 1;
            }
        }
    };
    // A core that panics would leave this call hanging; the process aborts instead.
    volley::runtime::crash_only::abort_on_panic();
    match volley::runtime::serve(config, path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("volley: {e}");
            1
        }
    }
}

/// Asks a running `volley_serve` (in another thread) to stop gracefully. Returns 0, or -1 when none
/// is running.
#[unsafe(no_mangle)]
pub extern "C" fn volley_stop() -> c_int {
    if volley::runtime::request_stop() {
        0
    } else {
        -1
    }
}

/// One request to a Volley HTTP API (`base` like "http://127.0.0.1:8025", `token` may be NULL or "",
/// `body` may be NULL). The response body goes to `out`; returns the HTTP status, or -1 when the API
/// cannot be reached or the arguments are bad.
#[unsafe(no_mangle)]
pub extern "C" fn volley_api_request(
    base: *const c_char,
    token: *const c_char,
    method: *const c_char,
    path: *const c_char,
    body: *const c_char,
    out: *mut c_char,
    len: usize,
) -> c_int {
    let (Some(method), Some(path)) = (arg(method), arg(path)) else {
        return -1;
    };
    call(base, token, method, path, arg(body), out, len)
}

/// A path segment with every byte outside the unreserved set (and `@`, `+`) written `%XX`.
fn percent_encoded(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A name that can stand in a path as it is (customer, webhook): no encoding needed or done.
fn plain_name(name: &str) -> Option<&str> {
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
    .then_some(name)
}

/// Sends one request and writes the answer: the HTTP status, or -1 (the reason in `out`).
fn call(
    base: *const c_char,
    token: *const c_char,
    method: &str,
    path: &str,
    body: Option<&str>,
    out: *mut c_char,
    len: usize,
) -> c_int {
    let Some(base) = arg(base) else {
        return -1;
    };
    let token = arg(token).unwrap_or("");
    match volley::api::client::request(base, token, method, path, body) {
        Ok((status, text)) => {
            write_out(&text, out, len);
            c_int::from(status)
        }
        Err(e) => {
            write_out(&e.to_string(), out, len);
            -1
        }
    }
}

/// Accounting events after event id `after` (0: from the oldest kept), at most `limit` (1..=10000),
/// oldest first: `{"events":[{"event_id",...}]}` in `out`. Returns the HTTP status, or -1. A
/// control plane polls with the last `event_id` it stored.
#[unsafe(no_mangle)]
pub extern "C" fn volley_events_poll(
    base: *const c_char,
    token: *const c_char,
    after: u64,
    limit: u32,
    out: *mut c_char,
    len: usize,
) -> c_int {
    if !(1..=10_000).contains(&limit) {
        return -1;
    }
    let path = format!("/v1/events?after={after}&limit={limit}");
    call(base, token, "GET", &path, None, out, len)
}

/// Adds `address` to `customer`'s suppression list (durable when 200 is returned). Returns the
/// HTTP status (400: not an address), or -1.
#[unsafe(no_mangle)]
pub extern "C" fn volley_suppression_add(
    base: *const c_char,
    token: *const c_char,
    customer: *const c_char,
    address: *const c_char,
    out: *mut c_char,
    len: usize,
) -> c_int {
    suppression(base, token, "PUT", customer, address, out, len)
}

/// Removes `address` from `customer`'s suppression list. Returns the HTTP status, or -1.
#[unsafe(no_mangle)]
pub extern "C" fn volley_suppression_remove(
    base: *const c_char,
    token: *const c_char,
    customer: *const c_char,
    address: *const c_char,
    out: *mut c_char,
    len: usize,
) -> c_int {
    suppression(base, token, "DELETE", customer, address, out, len)
}

fn suppression(
    base: *const c_char,
    token: *const c_char,
    method: &str,
    customer: *const c_char,
    address: *const c_char,
    out: *mut c_char,
    len: usize,
) -> c_int {
    let (Some(customer), Some(address)) = (arg(customer).and_then(plain_name), arg(address)) else {
        return -1;
    };
    let path = format!("/v1/suppressions/{customer}/{}", percent_encoded(address));
    call(base, token, method, &path, None, out, len)
}

/// Makes every deferred recipient of the queues for `domain` (through `vmta` only, when not NULL)
/// ready now. Returns the HTTP status (202), or -1.
#[unsafe(no_mangle)]
pub extern "C" fn volley_queue_retry(
    base: *const c_char,
    token: *const c_char,
    domain: *const c_char,
    vmta: *const c_char,
    out: *mut c_char,
    len: usize,
) -> c_int {
    let Some(domain) = arg(domain) else {
        return -1;
    };
    let mut body = serde_json::json!({ "domain": domain });
    if !vmta.is_null() {
        let Some(vmta) = arg(vmta) else {
            return -1;
        };
        body["vmta"] = vmta.into();
    }
    call(
        base,
        token,
        "POST",
        "/v1/queues/retry",
        Some(&body.to_string()),
        out,
        len,
    )
}

/// Adds `add` prepaid messages to `customer` (a PAYG top-up, atomic with their spending).
/// Returns the HTTP status (200 once durable), or -1.
#[unsafe(no_mangle)]
pub extern "C" fn volley_credits_add(
    base: *const c_char,
    token: *const c_char,
    customer: *const c_char,
    add: u64,
    out: *mut c_char,
    len: usize,
) -> c_int {
    let Some(customer) = arg(customer).and_then(plain_name) else {
        return -1;
    };
    let path = format!("/v1/customers/{customer}/credits");
    let body = serde_json::json!({ "add": add }).to_string();
    call(base, token, "POST", &path, Some(&body), out, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_errors_and_sizes() {
        let mut buf = vec![0 as c_char; 16];
        let bad = c"[server]\ncores = \"x\"\n";
        assert_eq!(
            volley_config_check(bad.as_ptr(), buf.as_mut_ptr(), buf.len()),
            1
        );
        let written = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(written.len(), 15, "cut to the buffer");
        assert!(written.starts_with("line 2"), "{written}");
        let good = std::ffi::CString::new(volley::config::EMBEDDED_DEFAULT).unwrap();
        assert_eq!(
            volley_config_check(good.as_ptr(), buf.as_mut_ptr(), buf.len()),
            0
        );
        assert_eq!(
            volley_config_check(std::ptr::null(), buf.as_mut_ptr(), buf.len()),
            -1
        );
    }

    #[test]
    fn path_segments_are_encoded_and_names_checked() {
        assert_eq!(percent_encoded("a+b@x.test"), "a+b@x.test");
        assert_eq!(percent_encoded("a/b c@x"), "a%2Fb%20c@x");
        assert_eq!(plain_name("acme-1"), Some("acme-1"));
        assert_eq!(plain_name("a/b"), None);
        assert_eq!(plain_name(""), None);
        let mut buf = vec![0 as c_char; 64];
        let base = c"http://127.0.0.1:1";
        assert_eq!(
            volley_suppression_add(
                base.as_ptr(),
                std::ptr::null(),
                c"a/b".as_ptr(),
                c"x@y.test".as_ptr(),
                buf.as_mut_ptr(),
                buf.len()
            ),
            -1
        );
        assert_eq!(
            volley_events_poll(base.as_ptr(), std::ptr::null(), 0, 0, buf.as_mut_ptr(), 64),
            -1
        );
    }

    #[test]
    fn hash_and_stop_without_serve() {
        let mut buf = vec![0 as c_char; 128];
        let n = volley_hash_password(c"pw".as_ptr(), buf.as_mut_ptr(), buf.len());
        assert!(n > 20);
        let hash = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(volley_stop(), -1);
        let version = unsafe { CStr::from_ptr(volley_version()) }
            .to_str()
            .unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
    }
}
