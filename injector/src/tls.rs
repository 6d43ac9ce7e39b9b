//! The serving certificate: loaded from PEM files and re-read when they change.
