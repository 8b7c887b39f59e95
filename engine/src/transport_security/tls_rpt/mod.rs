//! TLS-RPT (RFC 8460): what each connection's policy came to, tallied per policy domain
//! (`tally`), the `_smtp._tls` record naming where reports go (`record`), and the aggregate report
//! of one period (`report`). See docs/transport-security.md.

pub mod mail;
pub mod pending;
pub mod post;
pub mod record;
pub mod recorder;
pub mod report;
pub mod session;
pub mod tally;

pub use record::{Rua, parse_record};
pub use recorder::Recorder;
pub use report::{ReportHeader, gzip, report_json};
pub use tally::{FailureKey, PolicyKey, PolicyType, ResultType, Tally};
