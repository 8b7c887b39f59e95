/* libvolley: the C ABI of Volley, a thread-per-core mail transfer agent.
 *
 * Strings in are NUL-terminated UTF-8. Strings out are written NUL-terminated into the caller's
 * buffer of `len` bytes, cut to fit; the function returns the full length (without the NUL), so a
 * caller can retry with a larger buffer. Negative returns are errors.
 *
 * Link with -lvolley_ffi (target/release/libvolley_ffi.so).
 */
#ifndef VOLLEY_H
#define VOLLEY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library version, e.g. "0.1.0". Static; do not free. */
const char *volley_version(void);

/* Validates a configuration given as TOML text. 0: valid; 1: invalid, with one error a line
 * ("line N: key: message") in `errors`; -1: bad argument. */
int volley_config_check(const char *toml, char *errors, size_t len);

/* An argon2id PHC string for a customer's password_hash. Returns its length, or -1. */
int64_t volley_hash_password(const char *password, char *out, size_t len);

/* Runs the MTA in the calling thread until volley_stop() or SIGTERM. config_path NULL = the
 * embedded default (loopback only). 0 after a clean stop, 1 on error. It installs a panic hook
 * that aborts the process: a Volley thread that panics would otherwise leave this call hanging. */
int volley_serve(const char *config_path);

/* Asks a volley_serve running in another thread to stop gracefully. 0, or -1 if none runs. */
int volley_stop(void);

/* One request to a Volley HTTP API, e.g. volley_api_request("http://127.0.0.1:8025", NULL, "GET",
 * "/v1/queues", NULL, buf, sizeof buf). token and body may be NULL. Returns the HTTP status with
 * the response body in `out`, or -1 when the API cannot be reached (the reason in `out`). */
int volley_api_request(const char *base, const char *token, const char *method, const char *path,
                       const char *body, char *out, size_t len);

/* Control-plane calls: each sends one request to the API at `base` (token may be NULL), writes the
 * response body to `out` and returns the HTTP status, or -1 for a bad argument or an unreachable API
 * (the reason in `out`). */
/* Accounting events after event id `after` (0: from the oldest kept), at most `limit` (1..10000),
 * oldest first, as {"events":[{"event_id":N,...}]}. Poll again with the last event_id stored. */
int volley_events_poll(const char *base, const char *token, uint64_t after, uint32_t limit,
                       char *out, size_t len);
/* Adds / removes an address in a customer's suppression list (200 once durable; 400 not an
 * address; remove: 404 when it was not suppressed). Customer names are letters, digits, '-', '.',
 * '_' (-1 otherwise). */
int volley_suppression_add(const char *base, const char *token, const char *customer,
                           const char *address, char *out, size_t len);
int volley_suppression_remove(const char *base, const char *token, const char *customer,
                              const char *address, char *out, size_t len);
/* Deferred recipients of the queues for `domain` (through `vmta` only, unless NULL) become ready
 * now (202). */
int volley_queue_retry(const char *base, const char *token, const char *domain, const char *vmta,
                       char *out, size_t len);
/* A PAYG top-up: adds `add` prepaid messages to a customer (200 once durable). */
int volley_credits_add(const char *base, const char *token, const char *customer, uint64_t add,
                       char *out, size_t len);
#ifdef __cplusplus
}
#endif

#endif /* VOLLEY_H */
