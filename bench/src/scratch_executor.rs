//! What the spool and memory benchmarks share: run the measurement on one glommio executor with a
//! scratch directory, remove the directory afterwards whatever happened, and turn the outcome into
//! the exit status. Included by those binaries with `#[path]` (the bench package has no library).

use std::future::Future;
use std::path::PathBuf;

use glommio::LocalExecutorBuilder;

/// Runs `measure(scratch)` on an executor named `name` (the program's name, for messages) with
/// `scratch` = a fresh `<dir>/<name>-<pid>` directory, removed at the end. Exits 1 on failure.
pub fn run_in_scratch_dir<F, Fut>(name: &'static str, dir: PathBuf, measure: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
{
    let scratch = dir.join(format!("{name}-{}", std::process::id()));
    let result = LocalExecutorBuilder::default()
        .name(name)
        .spawn({
            let scratch = scratch.clone();
            move || measure(scratch)
        })
        .map_err(|e| e.to_string())
        .and_then(|handle| handle.join().map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&scratch);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{name}: executor failed: {e}");
            std::process::exit(1);
        }
    }
}
