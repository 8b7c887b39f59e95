//! The provider delivery profiles of `tuning/profiles/`, built into the binary so that it needs no
//! checkout (`profiles --write DIR` puts them where an `include` can name them; the Debian package
//! installs them in /usr/share/volley/profiles).

use std::path::{Path, PathBuf};

/// The provider profiles, built in: (file name, text). A test checks this list against the
/// directory, so a profile added there and not here fails the build's tests.
pub const BUILT_IN_PROFILES: &[(&str, &str)] = &[
    ("comcast.toml", include_str!("../profiles/comcast.toml")),
    ("gmail.toml", include_str!("../profiles/gmail.toml")),
    ("gmx-webde.toml", include_str!("../profiles/gmx-webde.toml")),
    ("icloud.toml", include_str!("../profiles/icloud.toml")),
    ("mailru.toml", include_str!("../profiles/mailru.toml")),
    ("orange.toml", include_str!("../profiles/orange.toml")),
    ("outlook.toml", include_str!("../profiles/outlook.toml")),
    ("t-online.toml", include_str!("../profiles/t-online.toml")),
    ("yahoo.toml", include_str!("../profiles/yahoo.toml")),
    ("yandex.toml", include_str!("../profiles/yandex.toml")),
];

/// A profile's first comment line: what it is for.
pub fn summary(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_string())
        .unwrap_or_default()
}

pub fn built_in(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix(".toml").unwrap_or(name);
    BUILT_IN_PROFILES
        .iter()
        .find(|(file, _)| file.strip_suffix(".toml") == Some(name))
        .map(|(_, text)| *text)
}

pub fn write_profiles(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in BUILT_IN_PROFILES {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

pub fn profiles(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            found.push((path.display().to_string(), summary(&text)));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_file_is_built_in_with_the_same_text() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        files.sort();
        let built: Vec<&str> = BUILT_IN_PROFILES.iter().map(|(f, _)| *f).collect();
        assert_eq!(files, built);
        for (file, text) in BUILT_IN_PROFILES {
            assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), *text);
        }
    }

    #[test]
    fn written_profiles_are_the_built_in_ones_and_show_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_profiles(&dir.path().join("profiles")).unwrap();
        assert_eq!(written.len(), BUILT_IN_PROFILES.len());
        let listed = profiles(&dir.path().join("profiles")).unwrap();
        assert_eq!(listed.len(), BUILT_IN_PROFILES.len());
        assert_eq!(built_in("gmail"), built_in("gmail.toml"));
        assert!(built_in("gmail").is_some_and(|t| t.contains("[[domain]]")));
        assert!(built_in("nonexistent").is_none());
    }

    #[test]
    fn shipped_profiles_are_listed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let list = profiles(&dir).unwrap();
        assert!(
            list.iter().any(|(p, _)| p.ends_with("gmail.toml")),
            "{list:?}"
        );
    }
}
