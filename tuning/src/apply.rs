//! Writing changes, and taking them back. Before the first write the state file records each
//! file's value as it was; `revert` writes those back in reverse order. Applying twice keeps the
//! first original of a file, so one revert always returns to the host as it was before any apply.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::changes::Change;
use crate::host::Host;

/// The state file is refused above this size: it holds a few hundred short lines at most.
const MAX_STATE_BYTES: u64 = 4 << 20;
const STATE_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Every file changed, with its original value in `before`, in the order written.
    pub changes: Vec<Change>,
}

pub struct Outcome {
    pub written: Vec<Change>,
    pub failed: Vec<(Change, String)>,
}

pub fn load_state(path: &Path) -> Result<Option<State>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if meta.len() > MAX_STATE_BYTES {
        return Err(format!(
            "{}: {} bytes, more than a state file can be",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state: State =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if state.version != STATE_VERSION {
        return Err(format!(
            "{}: state version {}, this volley-tune reads {STATE_VERSION}",
            path.display(),
            state.version
        ));
    }
    Ok(Some(state))
}

fn save_state(path: &Path, state: &State) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
    // Written aside and renamed: a crash leaves the old state or the new, never half of one.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `value` and reads it back: the kernel may refuse it or keep another value.
fn write(host: &Host, change: &Change, value: &str) -> Result<(), String> {
    std::fs::write(host.path(&change.path), format!("{value}\n")).map_err(|e| e.to_string())?;
    match host.read(&change.path) {
        Some(now) if change.form.same(&now, value) => Ok(()),
        Some(now) => Err(format!("wrote {value}, the kernel keeps {now}")),
        None => Err("unreadable after the write".into()),
    }
}

/// Records the originals, then writes every change. The state keeps only what was written (and
/// what an earlier apply wrote).
pub fn apply(host: &Host, state_path: &Path, changes: &[Change]) -> Result<Outcome, String> {
    let mut state = load_state(state_path)?.unwrap_or(State {
        version: STATE_VERSION,
        changes: Vec::new(),
    });
    let earlier = state.changes.len();
    for c in changes {
        match state.changes.iter_mut().find(|s| s.path == c.path) {
            // Changed by an earlier apply: its original stays the one to restore.
            Some(known) => known.after = c.after.clone(),
            None => state.changes.push(c.clone()),
        }
    }
    save_state(state_path, &state)?;
    let mut outcome = Outcome {
        written: Vec::new(),
        failed: Vec::new(),
    };
    for c in changes {
        match write(host, c, &c.after) {
            Ok(()) => outcome.written.push(c.clone()),
            Err(e) => outcome.failed.push((c.clone(), e)),
        }
    }
    if !outcome.failed.is_empty() {
        let failed_new = |s: &Change| {
            outcome.failed.iter().any(|(f, _)| f.path == s.path)
                && !state.changes[..earlier].iter().any(|e| e.path == s.path)
        };
        let kept: Vec<Change> = state
            .changes
            .iter()
            .filter(|s| !failed_new(s))
            .cloned()
            .collect();
        state.changes = kept;
        save_state(state_path, &state)?;
    }
    Ok(outcome)
}

/// Writes every original back, last change first. The state file goes once all are back; a
/// failure keeps it, holding only what is still to restore.
pub fn revert(host: &Host, state_path: &Path) -> Result<Outcome, String> {
    let Some(mut state) = load_state(state_path)? else {
        return Err(format!(
            "{}: no state file: nothing was applied (or it was reverted)",
            state_path.display()
        ));
    };
    let mut outcome = Outcome {
        written: Vec::new(),
        failed: Vec::new(),
    };
    for c in state.changes.iter().rev() {
        match write(host, c, &c.before) {
            Ok(()) => outcome.written.push(c.clone()),
            Err(e) => outcome.failed.push((c.clone(), e)),
        }
    }
    if outcome.failed.is_empty() {
        std::fs::remove_file(state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    } else {
        state
            .changes
            .retain(|c| outcome.failed.iter().any(|(f, _)| f.path == c.path));
        save_state(state_path, &state)?;
    }
    Ok(outcome)
}
