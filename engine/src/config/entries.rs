//! The named entries of the sections the API edits (`vmtas`, `pools`, `domains`, `customers`):
//! read one as JSON, replace or remove one. Used by the API and by the replay of its changes
//! (`overlay`).

use serde_json::Value;

use super::Config;

/// The sections `GET|PUT|DELETE /v1/{section}/{name}` edit.
pub const SECTIONS: [&str; 4] = ["vmtas", "pools", "domains", "customers"];

/// The named entry of a section as JSON, via the TOML the operator would write.
pub fn entry_json(config: &Config, section: &str, name: &str) -> Option<Value> {
    let value = match section {
        "vmtas" => toml::Value::try_from(config.vmtas.iter().find(|v| v.name == name)?),
        "pools" => toml::Value::try_from(config.pools.iter().find(|v| v.name == name)?),
        "domains" => toml::Value::try_from(config.domains.iter().find(|v| v.pattern == name)?),
        "customers" => toml::Value::try_from(config.customers.iter().find(|v| v.name == name)?),
        _ => return None,
    }
    .ok()?;
    serde_json::to_value(value).ok()
}

/// The names of a section's entries, in order.
pub fn names(config: &Config, section: &str) -> Vec<String> {
    match section {
        "vmtas" => config.vmtas.iter().map(|v| v.name.clone()).collect(),
        "pools" => config.pools.iter().map(|v| v.name.clone()).collect(),
        "domains" => config.domains.iter().map(|v| v.pattern.clone()).collect(),
        "customers" => config.customers.iter().map(|v| v.name.clone()).collect(),
        _ => Vec::new(),
    }
}

/// Replaces (or adds, or with `None` removes) the entry `name` of `section` in a copy of `config`.
pub fn edit(
    config: &mut Config,
    section: &str,
    name: &str,
    body: Option<&[u8]>,
) -> Result<bool, String> {
    fn apply<T: serde::de::DeserializeOwned>(
        list: &mut Vec<T>,
        name: &str,
        key: impl Fn(&T) -> &str,
        body: Option<&[u8]>,
        fill_name: impl Fn(&mut serde_json::Map<String, Value>),
    ) -> Result<bool, String> {
        let at = list.iter().position(|e| key(e) == name);
        match body {
            None => Ok(at.map(|i| list.remove(i)).is_some()),
            Some(body) => {
                let mut value: serde_json::Map<String, Value> = serde_json::from_slice(body)
                    .map_err(|e| format!("expected a JSON object: {e}"))?;
                fill_name(&mut value);
                let entry: T =
                    serde_json::from_value(Value::Object(value)).map_err(|e| e.to_string())?;
                if key(&entry) != name {
                    return Err("the name in the body differs from the path".into());
                }
                match at {
                    Some(i) => list[i] = entry,
                    None => list.push(entry),
                }
                Ok(true)
            }
        }
    }
    let named = |field: &'static str| {
        let name = name.to_string();
        move |m: &mut serde_json::Map<String, Value>| {
            m.entry(field)
                .or_insert_with(|| Value::String(name.clone()));
        }
    };
    match section {
        "vmtas" => apply(&mut config.vmtas, name, |v| &v.name, body, named("name")),
        "pools" => apply(&mut config.pools, name, |v| &v.name, body, named("name")),
        "domains" => apply(
            &mut config.domains,
            name,
            |v| &v.pattern,
            body,
            named("match"),
        ),
        "customers" => apply(
            &mut config.customers,
            name,
            |v| &v.name,
            body,
            named("name"),
        ),
        _ => Err(format!("no section {section:?}")),
    }
}
