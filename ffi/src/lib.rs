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
    let (Some(base), Some(method), Some(path)) = (arg(base), arg(method), arg(path)) else {
        return -1;
    };
    let token = arg(token).unwrap_or("");
    match volley::api::client::request(base, token, method, path, arg(body)) {
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
