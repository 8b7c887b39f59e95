//! Where each webhook is: the id of the next event to send (every event below it was answered 2xx
//! or is not of a type it takes), kept in `spool_dir/webhooks/<name>.pos`. Saved durably: a
//! temporary file, fdatasync, rename over the old one, fsync of the directory; so after a crash
//! the file holds an old position or the new one, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Names that are file names as they are; any other (a URL) is stored under its SHA-256.
const PLAIN_NAME_BYTES_MAX: usize = 100;

/// The file name (without `.pos`) that holds `name`'s position.
pub fn file_stem(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= PLAIN_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        return name.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256-{hex}")
}

fn path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.pos"))
}

/// The saved position, if any. A file that does not hold a number is an error (never guessed).
pub fn load(dir: &Path, stem: &str) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(path(dir, stem)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path(dir, stem).display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Saves `position` durably (blocking: two fsyncs).
pub fn save(dir: &Path, stem: &str, position: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{stem}.pos.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{position}\n").as_bytes())?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path(dir, stem))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the positions of webhooks no longer configured (`keep`: the stems of those that are).
pub fn remove_others(dir: &Path, keep: &[String]) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let stem = name
            .strip_suffix(".pos")
            .or_else(|| name.strip_suffix(".pos.tmp"));
        if let Some(stem) = stem
            && !keep.iter().any(|k| k == stem)
        {
            std::fs::remove_file(entry.path())?;
            removed.push(stem.to_string());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_file_names_and_others_are_hashed() {
        assert_eq!(file_stem("cp"), "cp");
        assert_eq!(file_stem("cp-2.events_x"), "cp-2.events_x");
        let url = file_stem("https://cp.example/volley-events");
        assert!(url.starts_with("sha256-") && url.len() == 7 + 32, "{url}");
        assert_ne!(url, file_stem("https://cp.example/other"));
        assert!(file_stem("..").starts_with("sha256-"));
        assert!(file_stem("a/b").starts_with("sha256-"));
    }

    #[test]
    fn saved_positions_load_and_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "cp").unwrap(), None);
        save(dir.path(), "cp", 42).unwrap();
        assert_eq!(load(dir.path(), "cp").unwrap(), Some(42));
        save(dir.path(), "cp", 43).unwrap();
        assert_eq!(load(dir.path(), "cp").unwrap(), Some(43));
        assert!(!dir.path().join("cp.pos.tmp").exists());
        std::fs::write(dir.path().join("bad.pos"), "x").unwrap();
        assert!(load(dir.path(), "bad").is_err());
    }

    #[test]
    fn positions_of_removed_webhooks_go() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "kept", 1).unwrap();
        save(dir.path(), "gone", 2).unwrap();
        let removed = remove_others(dir.path(), &["kept".to_string()]).unwrap();
        assert_eq!(removed, ["gone"]);
        assert_eq!(load(dir.path(), "kept").unwrap(), Some(1));
        assert_eq!(load(dir.path(), "gone").unwrap(), None);
    }
}
