//! Changes made through the API (`PUT|DELETE /v1/{section}/{name}`) kept across restarts, in
//! `spool_dir/api-changes.json`, and laid over the file's configuration at start and at every
//! reload, so a control plane need not replay them.
//!
//! Each change remembers the file's version of its entry when it was made. At a reload, a change
//! whose entry the file has changed since is dropped: **the file wins** for that entry (an
//! operator who edits the file means it), and a WARN line names it. Other changes stay.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Config, entries};

pub const OVERLAY_FILE: &str = "api-changes.json";
/// Changes kept at most (one per entry: a later change of an entry replaces the earlier one).
pub const MAX_CHANGES: usize = 100_000;

/// One entry changed through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiChange {
    pub section: String,
    pub name: String,
    /// The entry as the API set it; `None`: deleted.
    pub entry: Option<Value>,
    /// The file's entry when the change was made (`None`: the file had none).
    pub file_entry: Option<Value>,
    /// When (RFC 3339).
    pub at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    changes: Vec<ApiChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a list of API changes: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("too many API changes kept ({MAX_CHANGES}): write them to the file")]
    Full,
}

/// The API's changes, in the order they were made.
#[derive(Debug, Default)]
pub struct Overlay {
    path: Option<PathBuf>,
    changes: Vec<ApiChange>,
}

/// Why a change was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub section: String,
    pub name: String,
    pub reason: String,
}

impl Overlay {
    /// Reads `dir/api-changes.json` (absent: no changes). Blocking.
    pub fn open(dir: &Path) -> Result<Overlay, OverlayError> {
        let path = dir.join(OVERLAY_FILE);
        let changes = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Saved>(&bytes)
                    .map_err(|source| OverlayError::Parse {
                        path: path.display().to_string(),
                        source,
                    })?
                    .changes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(OverlayError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Ok(Overlay {
            path: Some(path),
            changes,
        })
    }

    pub fn changes(&self) -> &[ApiChange] {
        &self.changes
    }

    /// Records a change (replacing an earlier one of the same entry) and writes the file
    /// (temporary file, fsync, rename): durable when this returns. Blocking.
    pub fn record(&mut self, change: ApiChange) -> Result<(), OverlayError> {
        let same = |c: &ApiChange| c.section == change.section && c.name == change.name;
        let earlier = self.changes.iter().position(same);
        if earlier.is_none() && self.changes.len() >= MAX_CHANGES {
            return Err(OverlayError::Full);
        }
        let mut next = self.changes.clone();
        if let Some(i) = earlier {
            // The file's version from the first change stays: it is what the file had before
            // the API touched the entry.
            let first = next.remove(i);
            next.push(ApiChange {
                file_entry: first.file_entry,
                ..change
            });
        } else {
            next.push(change);
        }
        self.write(&next)?;
        self.changes = next;
        Ok(())
    }

    fn write(&self, changes: &[ApiChange]) -> Result<(), OverlayError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| OverlayError::Read {
            path: path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&Saved {
            changes: changes.to_vec(),
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The effective configuration: `file` with every change laid over it. A change whose entry
    /// the file changed since is dropped (the file wins), as is one that no longer applies; the
    /// kept list is written back when something was dropped. Blocking.
    pub fn apply(&mut self, file: &Config) -> (Config, Vec<Dropped>) {
        let mut config = file.clone();
        let mut kept = Vec::with_capacity(self.changes.len());
        let mut dropped = Vec::new();
        for change in &self.changes {
            let now_in_file = entries::entry_json(file, &change.section, &change.name);
            if now_in_file != change.file_entry {
                dropped.push(Dropped {
                    section: change.section.clone(),
                    name: change.name.clone(),
                    reason: "the file changed this entry since: the file's version wins".into(),
                });
                continue;
            }
            let body = change
                .entry
                .as_ref()
                .map(|e| serde_json::to_vec(e).unwrap_or_default());
            let mut next = config.clone();
            match entries::edit(&mut next, &change.section, &change.name, body.as_deref()) {
                Ok(_) => {
                    next.normalize_domains();
                    config = next;
                    kept.push(change.clone());
                }
                Err(e) => dropped.push(Dropped {
                    section: change.section.clone(),
                    name: change.name.clone(),
                    reason: format!("no longer applies: {e}"),
                }),
            }
        }
        if let Err(errors) = config.revalidate() {
            // The changes together no longer make a valid configuration with this file: the file
            // alone runs, and every change is reported.
            dropped.extend(kept.drain(..).map(|c| Dropped {
                section: c.section,
                name: c.name,
                reason: format!("the configuration with it is invalid: {errors}"),
            }));
            config = file.clone();
        }
        if !dropped.is_empty() {
            if let Err(e) = self.write(&kept) {
                log::error!("API changes: cannot write the kept list: {e}");
            }
            self.changes = kept;
        }
        (config, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[[listener]]\naddress = \"127.0.0.1:2525\"\nrelay_networks = [\"127.0.0.0/8\"]\n\
        [[customer]]\nname = \"acme\"\nmax_messages_per_hour = 10\n\
        [[customer]]\nname = \"beta\"\n";

    fn change(config: &Config, section: &str, name: &str, entry: Option<Value>) -> ApiChange {
        ApiChange {
            section: section.into(),
            name: name.into(),
            file_entry: entries::entry_json(config, section, name),
            entry,
            at: "2026-12-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn changes_survive_a_restart_and_the_file_wins_where_it_changed_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = Config::parse(FILE).unwrap();
        {
            let mut overlay = Overlay::open(dir.path()).unwrap();
            let acme = serde_json::json!({"name": "acme", "max_messages_per_hour": 99});
            overlay
                .record(change(&file, "customers", "acme", Some(acme)))
                .unwrap();
            overlay
                .record(change(&file, "customers", "beta", None))
                .unwrap();
            let gamma = serde_json::json!({"name": "gamma"});
            overlay
                .record(change(&file, "customers", "gamma", Some(gamma)))
                .unwrap();
        }
        // A restart with the same file: every change is laid over it.
        let mut overlay = Overlay::open(dir.path()).unwrap();
        let (config, dropped) = overlay.apply(&file);
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(
            config.customer("acme").unwrap().max_messages_per_hour,
            Some(99)
        );
        assert!(config.customer("beta").is_none());
        assert!(config.customer("gamma").is_some());
        // The file changes acme: its version wins; the other changes stay, also on disk.
        let edited = Config::parse(&FILE.replace("= 10", "= 20")).unwrap();
        let (config, dropped) = overlay.apply(&edited);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].name, "acme");
        assert_eq!(
            config.customer("acme").unwrap().max_messages_per_hour,
            Some(20)
        );
        assert!(config.customer("beta").is_none() && config.customer("gamma").is_some());
        let reopened = Overlay::open(dir.path()).unwrap();
        assert_eq!(reopened.changes().len(), 2);
    }

    #[test]
    fn a_second_change_of_an_entry_keeps_the_files_original_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = Config::parse(FILE).unwrap();
        let mut overlay = Overlay::open(dir.path()).unwrap();
        let first = serde_json::json!({"name": "acme", "max_messages_per_hour": 1});
        overlay
            .record(change(&file, "customers", "acme", Some(first)))
            .unwrap();
        let (effective, _) = overlay.apply(&file);
        // The second change is made on the effective configuration.
        let second = serde_json::json!({"name": "acme", "max_messages_per_hour": 2});
        overlay
            .record(change(&effective, "customers", "acme", Some(second)))
            .unwrap();
        assert_eq!(overlay.changes().len(), 1);
        let (config, dropped) = overlay.apply(&file);
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(
            config.customer("acme").unwrap().max_messages_per_hour,
            Some(2)
        );
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OVERLAY_FILE), b"{nope").unwrap();
        assert!(matches!(
            Overlay::open(dir.path()),
            Err(OverlayError::Parse { .. })
        ));
    }
}
