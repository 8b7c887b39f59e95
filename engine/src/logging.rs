//! Logs: one event a line on stderr, as text or JSON (`--log-format`).
