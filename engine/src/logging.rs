//! Logs: one event a line on stderr, as text or JSON (`--log-format`). Each line is written with a
//! single write so lines from different cores never interleave.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

struct StderrLogger {
    format: LogFormat,
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time = crate::clock::now_rfc3339();
        let core = current_core();
        let line = match self.format {
            LogFormat::Text => format!(
                "{time} {:<5} [core {}] {}: {}\n",
                record.level(),
                core.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                record.target(),
                record.args()
            ),
            LogFormat::Json => {
                let mut v = serde_json::json!({
                    "time": time,
                    "level": record.level().as_str().to_ascii_lowercase(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                if let Some(c) = core {
                    v["core"] = c.into();
                }
                format!("{v}\n")
            }
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; `VOLLEY_LOG` (error|warn|info|debug|trace) sets the level, default info.
pub fn init(format: LogFormat) {
    let level = std::env::var("VOLLEY_LOG")
        .ok()
        .and_then(|l| l.parse::<Level>().ok())
        .map(|l| l.to_level_filter())
        .unwrap_or(LevelFilter::Info);
    // Third-party crates log at their own noise level; only their warnings reach operators.
    let logger = StderrLogger { format, level };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

thread_local! {
    static CURRENT_CORE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks this thread as the executor of core `index`: its log lines say `[core N]`.
pub fn set_current_core(index: usize) {
    CURRENT_CORE.with(|c| c.set(Some(index)));
}

/// The index of the executor running on this thread, if any.
pub fn current_core() -> Option<usize> {
    CURRENT_CORE.with(|c| c.get())
}
