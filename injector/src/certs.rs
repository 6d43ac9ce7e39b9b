//! `init-certs`: the webhook's CA and serving certificate.

/// `init-certs` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InitCertsArgs {}

/// Why `init-certs` failed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {}

/// Runs `init-certs`.
pub async fn run(args: InitCertsArgs) -> Result<(), CertsError> {
    let _ = args;
    Ok(())
}
