//! `volley status`: the daemon's health, its queue totals (from `GET /v1/queues`) and the VMTAs
//! out of their pools with why (from `GET /v1/vmta-status`), as text or as one JSON object.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::text_table;

fn count(v: &Value, field: &str) -> u64 {
    v.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// Totals of one group of queues.
#[derive(Default)]
struct Totals {
    queues: u64,
    ready: u64,
    deferred: u64,
    connections: u64,
}

impl Totals {
    fn add(&mut self, q: &Value) {
        self.queues += 1;
        self.ready += count(q, "ready");
        self.deferred += count(q, "deferred");
        self.connections += count(q, "connections");
    }

    fn json(&self) -> Value {
        json!({
            "queues": self.queues, "recipients": self.ready + self.deferred,
            "ready": self.ready, "deferred": self.deferred, "connections": self.connections,
        })
    }
}

/// The three answers as one object: `health` as the API gave it, `queues` (totals, by state,
/// queues in backoff, the earliest next attempt) and `vmtas_out` (the disabled VMTAs).
pub fn summary(health: &Value, queues: &Value, vmta_status: &Value) -> Option<Value> {
    let list = queues.get("queues")?.as_array()?;
    let mut all = Totals::default();
    let mut by_state: BTreeMap<String, Totals> = BTreeMap::new();
    let mut in_backoff = 0u64;
    let mut next: Option<(u64, Value)> = None;
    for q in list {
        all.add(q);
        let state = q.get("state").and_then(Value::as_str).unwrap_or("unknown");
        by_state.entry(state.to_string()).or_default().add(q);
        if count(q, "backoff_level") > 0 {
            in_backoff += 1;
        }
        if let Some(at) = q.get("next_attempt_s").and_then(Value::as_u64)
            && next.as_ref().is_none_or(|(s, _)| at < *s)
        {
            next = Some((at, q.get("next_attempt").cloned().unwrap_or(Value::Null)));
        }
    }
    let mut totals = all.json();
    totals["in_backoff"] = in_backoff.into();
    totals["next_attempt"] = next.map_or(Value::Null, |(_, at)| at);
    totals["by_state"] = by_state
        .iter()
        .map(|(state, t)| (state.clone(), t.json()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Some(json!({
        "health": health,
        "queues": totals,
        "vmtas_out": vmta_status.get("disabled")?.as_array()?,
    }))
}

fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn time_s(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_u64)
        .map_or_else(|| "-".into(), crate::clock::rfc3339)
}

/// `summary` as text: a health line, queue totals by state, the VMTAs out of their pools.
pub fn render(summary: &Value) -> Option<String> {
    let health = summary.get("health")?;
    let queues = summary.get("queues")?;
    let mut out = format!(
        "volley: {}, {} of {} cores ready, {} inbound connections\n\n",
        text(health, "status"),
        text(health, "cores_ready"),
        text(health, "cores"),
        text(health, "connections"),
    );
    let row = |state: &str, t: &Value| {
        vec![
            state.to_string(),
            text(t, "queues"),
            text(t, "recipients"),
            text(t, "ready"),
            text(t, "deferred"),
            text(t, "connections"),
        ]
    };
    let mut rows: Vec<Vec<String>> = queues
        .get("by_state")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(s, t)| row(s, t)).collect())
        .unwrap_or_default();
    rows.push(row("all", queues));
    out.push_str(&text_table::render(
        &[
            "STATE",
            "QUEUES",
            "RECIPIENTS",
            "READY",
            "DEFERRED",
            "CONNECTIONS",
        ],
        &rows,
    ));
    out.push_str(&format!(
        "{} queues in backoff; next attempt {}\n\n",
        text(queues, "in_backoff"),
        text(queues, "next_attempt"),
    ));
    let out_of_pools = summary.get("vmtas_out")?.as_array()?;
    if out_of_pools.is_empty() {
        out.push_str("every VMTA is in its pools\n");
    } else {
        let rows: Vec<Vec<String>> = out_of_pools
            .iter()
            .map(|v| {
                vec![
                    text(v, "vmta"),
                    time_s(v, "since_s"),
                    match v.get("until_s").and_then(Value::as_u64) {
                        Some(at) => crate::clock::rfc3339(at),
                        None => "enabled by the API".into(),
                    },
                    text(v, "reason"),
                ]
            })
            .collect();
        out.push_str("VMTAs out of their pools:\n");
        out.push_str(&text_table::render(
            &["VMTA", "SINCE", "UNTIL", "WHY"],
            &rows,
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_by_state_and_vmtas_out_of_their_pools() {
        let health = json!({"status": "serving", "cores": 2, "cores_ready": 2, "connections": 3});
        let queues = json!({"queues": [
            {"state": "active", "ready": 2, "deferred": 5, "connections": 1, "backoff_level": 0,
             "next_attempt_s": 2_000_000_000u64, "next_attempt": "2033-05-18T03:33:20Z"},
            {"state": "active", "ready": 0, "deferred": 1, "connections": 0, "backoff_level": 2,
             "next_attempt_s": 1_900_000_000u64, "next_attempt": "2030-03-17T17:46:40Z"},
            {"state": "suspended", "ready": 4, "deferred": 0, "connections": 0,
             "backoff_level": 0, "next_attempt_s": null, "next_attempt": null},
        ]});
        let vmtas = json!({"disabled": [
            {"vmta": "v2", "reason": "refused everywhere: 554", "since_s": 1_000_000_000u64,
             "until_s": null},
        ]});
        let s = summary(&health, &queues, &vmtas).unwrap();
        assert_eq!(s["queues"]["recipients"], 12);
        assert_eq!(s["queues"]["deferred"], 6);
        assert_eq!(s["queues"]["in_backoff"], 1);
        assert_eq!(s["queues"]["next_attempt"], "2030-03-17T17:46:40Z");
        assert_eq!(s["queues"]["by_state"]["active"]["queues"], 2);
        assert_eq!(s["queues"]["by_state"]["suspended"]["ready"], 4);
        assert_eq!(s["vmtas_out"][0]["vmta"], "v2");

        let text = render(&s).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "volley: serving, 2 of 2 cores ready, 3 inbound connections"
        );
        assert_eq!(
            lines[2],
            "STATE      QUEUES  RECIPIENTS  READY  DEFERRED  CONNECTIONS"
        );
        assert_eq!(
            lines[3],
            "active     2       8           2      6         1"
        );
        assert_eq!(
            lines[4],
            "suspended  1       4           4      0         0"
        );
        assert_eq!(
            lines[5],
            "all        3       12          6      6         1"
        );
        assert_eq!(
            lines[6],
            "1 queues in backoff; next attempt 2030-03-17T17:46:40Z"
        );
        assert_eq!(lines[8], "VMTAs out of their pools:");
        assert!(
            lines[10].starts_with("v2    2001-09-09T01:46:40Z  enabled by the API"),
            "{text}"
        );
        assert!(lines[10].ends_with("refused everywhere: 554"), "{text}");

        let calm = summary(&health, &json!({"queues": []}), &json!({"disabled": []})).unwrap();
        let text = render(&calm).unwrap();
        assert!(text.contains("all    0"), "{text}");
        assert!(text.ends_with("every VMTA is in its pools\n"), "{text}");
        assert_eq!(summary(&health, &json!({}), &vmtas), None);
    }
}
