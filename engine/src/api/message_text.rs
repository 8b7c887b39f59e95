//! `volley message show ID`: the `GET /v1/messages/{id}` answer as text an operator reads (the
//! `--json` flag keeps the API's JSON).

use serde_json::Value;

use super::text_table;

fn field(v: &Value, name: &str) -> String {
    match v.get(name) {
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// When the next attempt is, and how far off.
fn next_attempt(r: &Value) -> String {
    match (r.get("next_attempt"), r.get("next_attempt_in_s")) {
        (Some(Value::String(at)), Some(Value::Number(n))) => format!("{at} (in {n} s)"),
        _ => "-".into(),
    }
}

/// The message and one line per recipient; `None` when `answer` is not a message.
pub fn render(answer: &Value) -> Option<String> {
    let id = answer.get("id")?.as_str()?;
    let recipients = answer.get("recipients")?.as_array()?;
    let vmta = match answer.get("pool").and_then(Value::as_str) {
        Some(pool) => format!("{} (pool {pool})", field(answer, "vmta")),
        None => field(answer, "vmta"),
    };
    let counts = answer
        .get("counts")
        .and_then(Value::as_object)
        .map(|c| {
            c.iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let size = match answer.get("size_bytes").and_then(Value::as_u64) {
        Some(n) => format!("{n} bytes"),
        None => "-".into(),
    };
    let summary: Vec<Vec<String>> = vec![
        vec![
            "message".into(),
            format!("{id} ({})", field(answer, "status")),
        ],
        vec![
            "sender".into(),
            match answer.get("sender") {
                // The null reverse path (a DSN's).
                Some(Value::String(s)) if s.is_empty() => "<>".into(),
                _ => field(answer, "sender"),
            },
        ],
        vec!["customer".into(), field(answer, "customer")],
        vec!["received".into(), field(answer, "received_at")],
        vec!["size".into(), size],
        vec!["vmta".into(), vmta],
        vec![
            "recipients".into(),
            format!("{}: {counts}", field(answer, "recipients_total")),
        ],
    ];
    // The summary is a two-column table without a header line.
    let mut out: String = text_table::render(&["", ""], &summary)
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    out.push('\n');
    let rows: Vec<Vec<String>> = recipients
        .iter()
        .map(|r| {
            let state = match r.get("queue_held").and_then(Value::as_str) {
                Some(why) => format!("{} (queue held: {why})", field(r, "state")),
                None => field(r, "state"),
            };
            vec![
                field(r, "index"),
                field(r, "recipient"),
                state,
                field(r, "vmta"),
                field(r, "attempts"),
                next_attempt(r),
                field(r, "last_reply"),
            ]
        })
        .collect();
    out.push_str(&text_table::render(
        &[
            "#",
            "RECIPIENT",
            "STATE",
            "VMTA",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "LAST REPLY",
        ],
        &rows,
    ));
    if answer.get("recipients_truncated") == Some(&Value::Bool(true)) {
        out.push_str(&format!(
            "(the first {} of {} recipients)\n",
            recipients.len(),
            field(answer, "recipients_total")
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_message_reads_as_a_summary_and_a_line_per_recipient() {
        let answer = json!({
            "id": "00000000002A-01", "status": "queued", "sender": "", "customer": "acme",
            "received_at": "2027-01-15T08:00:00Z", "size_bytes": 321, "vmta": "v1",
            "pool": "main", "recipients_total": 2, "recipients_truncated": false,
            "counts": {"deferred": 1, "delivered": 1},
            "recipients": [
                {"index": 0, "recipient": "a@a.test", "state": "deferred", "vmta": "v1",
                 "attempts": 2, "next_attempt": "2027-01-15T09:00:00Z", "next_attempt_in_s": 600,
                 "queue_held": "warming up", "last_reply": "451 4.7.1 Later"},
                {"index": 1, "recipient": "b@b.test", "state": "delivered", "vmta": "v1",
                 "attempts": 1, "next_attempt": null, "next_attempt_in_s": null,
                 "queue_held": null, "last_reply": "250 2.0.0 Ok"},
            ],
        });
        let text = super::render(&answer).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "message     00000000002A-01 (queued)");
        assert_eq!(lines[1], "sender      <>", "the null sender");
        assert_eq!(lines[5], "vmta        v1 (pool main)");
        assert_eq!(lines[6], "recipients  2: 1 deferred, 1 delivered");
        assert!(lines[8].starts_with("#  RECIPIENT  STATE"), "{text}");
        assert!(
            lines[9].contains("deferred (queue held: warming up)")
                && lines[9].contains("2027-01-15T09:00:00Z (in 600 s)")
                && lines[9].ends_with("451 4.7.1 Later"),
            "{text}"
        );
        assert!(lines[10].ends_with("250 2.0.0 Ok"), "{text}");
        assert_eq!(super::render(&json!({"error": "no"})), None);
    }
}
