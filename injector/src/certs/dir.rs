//! Offline mode: the bundle as `ca.crt`, `tls.crt` and `tls.key` in a directory, each replaced
//! atomically so the serving injector (which re-reads them on change) never sees half a file.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::bundle::{Bundle, Stored, CA_CRT, TLS_CRT, TLS_KEY};
use super::{CertsError, Outcome, Plan};

/// Mode of the private key: readable by the injector's user only.
const KEY_MODE: u32 = 0o600;
/// Mode of the certificates: public material.
const CERT_MODE: u32 = 0o644;

/// Keeps or (re)writes the bundle in `dir`, creating the directory if needed.
pub(super) fn run(dir: &Path, plan: &Plan) -> Result<(), CertsError> {
    let stored = Stored {
        ca_crt: read(&dir.join(CA_CRT))?,
        tls_crt: read(&dir.join(TLS_CRT))?,
        tls_key: read(&dir.join(TLS_KEY))?,
    };
    let (bundle, outcome) = plan.settle(&stored, stored.is_empty())?;
    match &outcome {
        Outcome::Kept => tighten_key_mode(&dir.join(TLS_KEY))?,
        Outcome::Created | Outcome::Renewed(_) => write_bundle(dir, &bundle)?,
    }
    tracing::info!(dir = %dir.display(), "{outcome}");
    Ok(())
}

/// A file's bytes, or `None` when it does not exist (the directory may not either).
fn read(path: &Path) -> Result<Option<Vec<u8>>, CertsError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the three files. The CA goes first and the certificate last: a watcher that reloads on
/// tls.crt's change then finds its key already in place.
fn write_bundle(dir: &Path, bundle: &Bundle) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    write_atomic(dir, CA_CRT, &bundle.ca_crt, CERT_MODE)?;
    write_atomic(dir, TLS_KEY, &bundle.tls_key, KEY_MODE)?;
    write_atomic(dir, TLS_CRT, &bundle.tls_crt, CERT_MODE)?;
    // Make the renames themselves durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertsError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Temp file in the same directory (so `rename` is atomic), created with its final mode so the
/// key is never readable by others even for a moment, fsynced, then renamed over `name`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` applies only when the file is created (and through the umask); a leftover temp
        // file from a crashed run keeps its old mode unless it is set here.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    written.map_err(|source| {
        // Best effort: a failure here leaves at most a stray temp file, never a partial `name`.
        let _ = fs::remove_file(&tmp);
        // Named after the file the user asked for; the temp name would only confuse.
        CertsError::Write { path, source }
    })
}

/// A kept key file that others can read is narrowed to 0600 (its content is left alone).
fn tighten_key_mode(path: &Path) -> Result<(), CertsError> {
    let write_err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(write_err)?.permissions().mode() & 0o777;
    if mode != KEY_MODE {
        fs::set_permissions(path, Permissions::from_mode(KEY_MODE)).map_err(write_err)?;
        tracing::info!(path = %path.display(), "key file mode {mode:o} narrowed to 600");
    }
    Ok(())
}
