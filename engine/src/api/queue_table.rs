//! `volley queue list` as a table an operator reads (the `--json` flag keeps the API's JSON).

use serde_json::Value;

const COLUMNS: [(&str, &str); 11] = [
    ("VMTA", "vmta"),
    ("DOMAIN", "domain"),
    ("SIZE", "size"),
    ("READY", "ready"),
    ("DEFERRED", "deferred"),
    ("STATE", "state"),
    ("CONNS", "connections"),
    ("DELIVERED", "delivered"),
    ("BOUNCED", "bounced"),
    ("NEXT ATTEMPT", "next_attempt"),
    ("REASON", "reason"),
];

fn cell(queue: &Value, field: &str) -> String {
    match queue.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(v) => v.to_string(),
    }
}

/// The `GET /v1/queues` answer as aligned columns, one queue a line; `None` when it is not one.
pub fn render(answer: &Value) -> Option<String> {
    let queues = answer.get("queues")?.as_array()?;
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| COLUMNS.iter().map(|(_, f)| cell(q, f)).collect())
        .collect();
    let headers: Vec<&str> = COLUMNS.iter().map(|(h, _)| *h).collect();
    let mut out = super::text_table::render(&headers, &rows);
    out.push_str(&format!("{} queues\n", queues.len()));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_missing_fields_show_a_dash() {
        let answer = serde_json::json!({"queues": [
            {"vmta": "v1", "domain": "gmail.com", "size": 12, "ready": 2, "deferred": 10,
             "state": "active", "connections": 1, "delivered": 100, "bounced": 3, "reason": null,
             "next_attempt": "2027-01-15T09:00:00Z"},
            {"vmta": "acme-long", "domain": "x.test", "size": 0, "ready": 0, "deferred": 0,
             "state": "suspended", "connections": 0, "delivered": 0, "bounced": 0,
             "reason": "warming up"},
        ]});
        let text = render(&answer).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VMTA       DOMAIN     SIZE"), "{text}");
        assert!(lines[1].starts_with("v1         gmail.com  12"), "{text}");
        assert!(lines[1].ends_with("2027-01-15T09:00:00Z  -"), "{text}");
        assert!(lines[0].ends_with("NEXT ATTEMPT          REASON"), "{text}");
        assert!(lines[2].ends_with("warming up"), "{text}");
        assert_eq!(lines[3], "2 queues");
        assert_eq!(render(&serde_json::json!({"nope": 1})), None);
    }
}
