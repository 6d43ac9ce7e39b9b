//! A client for a running agent's token API, behind `flyte-auth-agent token NAME` (for shell
//! scripts and flytekit's `ExternalCommand` credentials mode).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Why no token came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not answer.
    #[error("cannot connect to the agent at {socket}: {source} (is the agent running? set --socket or FLYTE_AUTH_AGENT_SOCKET)")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the agent at {socket}: {reason}")]
    Http {
        /// The socket path.
        socket: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("the agent answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The agent's message.
        message: String,
    },
}

/// Fetches the bare token `name` from the agent listening on `socket`, within `timeout`.
pub async fn token(socket: &Path, name: &str, timeout: Duration) -> Result<String, ClientError> {
    let path = format!(
        "/v1/tokens/{}",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
    );
    bare_token(socket, &path, timeout).await
}

/// The executor-bound FlyteAdmin credential, as a bare string.
pub async fn admin_token(socket: &Path, timeout: Duration) -> Result<String, ClientError> {
    bare_token(socket, "/v1/admin/token", timeout).await
}

async fn bare_token(socket: &Path, path: &str, timeout: Duration) -> Result<String, ClientError> {
    let (status, body) = get(socket, path, "text/plain", timeout).await?;
    if status == StatusCode::OK {
        return String::from_utf8(body.to_vec()).map_err(|_| ClientError::Http {
            socket: socket.to_path_buf(),
            reason: "token is not UTF-8".into(),
        });
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(ClientError::Api { status, message })
}

/// One GET over the unix socket, answered within `timeout`: status and body.
pub async fn get(
    socket: &Path,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    // A stuck agent must not hang the caller (a script, or flytekit waiting on ExternalCommand).
    tokio::time::timeout(timeout, exchange(socket, path, accept))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Http {
                socket: socket.to_path_buf(),
                reason: format!("no answer within {}", humantime::format_duration(timeout)),
            })
        })
}

async fn exchange(
    socket: &Path,
    path: &str,
    accept: &str,
) -> Result<(StatusCode, Bytes), ClientError> {
    let http_err = |reason: String| ClientError::Http {
        socket: socket.to_path_buf(),
        reason,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_err(e.to_string()))?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, "flyte-auth-agent")
        .header(header::ACCEPT, accept)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_err(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| http_err(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_agent_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        // Accepts connections and never answers.
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let err = token(&socket, "api", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().ends_with("no answer within 200ms"), "{err}");
        let gone = dir.path().join("nothing.sock");
        let err = token(&gone, "api", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }
}
