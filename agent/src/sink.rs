//! Writes token files: `<tokens dir>/<name>` holds the bare token, replaced atomically (a temp
//! file in the same directory, fsync, rename, fsync of the directory), so a reader sees the old
//! token or the new one, never a partial or empty file.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temp files start with this; token names cannot start with '.', so they never collide.
const TEMP_PREFIX: &str = ".flyte-auth-agent.";
const TEMP_SUFFIX: &str = ".tmp";

/// Why a token file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The tokens directory could not be created.
    #[error("cannot create tokens directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing, syncing or renaming failed; the previous file, if any, is untouched.
    #[error("cannot write token file {path}: {source}")]
    Write {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An empty token was offered; writing it would destroy the file's meaning.
    #[error("refusing to write an empty token to {0}")]
    Empty(PathBuf),
}

/// The token files directory.
#[derive(Debug)]
pub struct Sink {
    dir: PathBuf,
    mode: u32,
    counter: AtomicU64,
}

impl Sink {
    /// Opens (creating if needed) the tokens directory and removes temp files a crashed agent
    /// left behind.
    pub fn open(dir: &Path, mode: u32) -> Result<Self, SinkError> {
        fs::create_dir_all(dir).map_err(|source| SinkError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let sink = Self {
            dir: dir.to_path_buf(),
            mode,
            counter: AtomicU64::new(0),
        };
        sink.remove_stale_temp_files();
        Ok(sink)
    }

    /// The file a token request's token is written to.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(file = %entry.path().display(), "removed stale temp file")
                    }
                    Err(e) => {
                        tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove stale temp file")
                    }
                }
            }
        }
    }

    /// Replaces `<dir>/<name>` with `token`. Blocking: call it off the async runtime.
    pub fn write(&self, name: &str, token: &str) -> Result<(), SinkError> {
        let path = self.path(name);
        if token.is_empty() {
            return Err(SinkError::Empty(path));
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{name}.{}.{n}{TEMP_SUFFIX}",
            std::process::id()
        ));
        let result = self.write_via(&temp, &path, token.as_bytes());
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(|source| SinkError::Write { path, source })
    }

    fn write_via(&self, temp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.mode)
            .open(temp)?;
        // The umask may have narrowed the mode given at creation; the configured mode is the
        // contract with the task container, so set it exactly.
        file.set_permissions(Permissions::from_mode(self.mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(temp, path)?;
        // Make the rename itself durable where the directory is on disk.
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exact_bytes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::open(&dir.path().join("tokens"), 0o640).unwrap();
        sink.write("api", "first").unwrap();
        sink.write("api", "second").unwrap();
        let path = dir.path().join("tokens/api");
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("tokens"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("api")],
            "no temp files left"
        );
    }

    #[test]
    fn refuses_empty_and_keeps_previous() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::open(dir.path(), 0o644).unwrap();
        sink.write("api", "valid").unwrap();
        assert!(matches!(sink.write("api", ""), Err(SinkError::Empty(_))));
        assert_eq!(fs::read(dir.path().join("api")).unwrap(), b"valid");
    }

    #[test]
    fn failed_write_keeps_previous_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::open(dir.path(), 0o644).unwrap();
        sink.write("api", "valid").unwrap();
        // A directory where the token file should be makes the rename fail.
        fs::create_dir(dir.path().join("blocked")).unwrap();
        fs::write(dir.path().join("blocked/x"), "").unwrap();
        let err = sink.write("blocked", "new").unwrap_err();
        assert!(err.to_string().contains("cannot write token file"), "{err}");
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .count();
        assert_eq!(leftovers, 0);
        assert_eq!(fs::read(dir.path().join("api")).unwrap(), b"valid");
    }

    #[test]
    fn stale_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".flyte-auth-agent.api.123.0.tmp");
        fs::write(&stale, "partial").unwrap();
        fs::write(dir.path().join("api"), "kept").unwrap();
        fs::write(dir.path().join("notes.tmp"), "not ours").unwrap();
        Sink::open(dir.path(), 0o644).unwrap();
        assert!(!stale.exists());
        assert_eq!(fs::read(dir.path().join("api")).unwrap(), b"kept");
        assert!(dir.path().join("notes.tmp").exists());
    }
}
