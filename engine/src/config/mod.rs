//! Configuration: TOML schema, validation with key and line, the embedded default.
