//! How the policy finds a call's one request message in the bytes the task sent, for each way a
//! call can carry it: gRPC (a length-prefixed message, compressed per `grpc-encoding`), a Connect
//! stream (the same envelope, compressed per `connect-content-encoding`) and Connect unary (the
//! whole body, compressed per `content-encoding`). Flyte 2's SDK gzips every request, so gzip is
//! decoded here, never to more than `admin.max_request_bytes`; the task's original bytes are what
//! is forwarded, so what the policy read is what the control plane decodes.

use std::borrow::Cow;
use std::io::Read as _;

use http::HeaderMap;

use super::Protocol;
use crate::scope::{unframe, Found, Reason};

/// How a call carries its message, known from its headers before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Enveloped (gRPC, Connect streams) rather than the whole body (Connect unary).
    pub enveloped: bool,
    /// The message is gzip when compressed (its envelope's flag says whether it is; a bare body
    /// always is).
    gzip: bool,
}

impl Shape {
    /// The shape of a call in `protocol` with `headers`. A compression other than gzip, a
    /// `content-encoding` on an enveloped call (whose messages carry their own), or a JSON body
    /// is refused: the policy could not read what the control plane would.
    pub fn of(headers: &HeaderMap, protocol: Protocol) -> Result<Self, Found> {
        let content_type = super::media_type(headers)
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        const GRPC_PROTO: [&str; 4] = [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "application/grpc-web+proto",
        ];
        let (enveloped, encoding_header) = match protocol {
            Protocol::Grpc if GRPC_PROTO.contains(&content_type.as_str()) => {
                (true, "grpc-encoding")
            }
            Protocol::Connect if content_type == "application/connect+proto" => {
                (true, "connect-content-encoding")
            }
            Protocol::Connect if content_type == "application/proto" => (false, "content-encoding"),
            _ => {
                return Err((
                    Reason::Undecodable,
                    format!("the request is {:?}; the execution-scope policy reads protobuf bodies only (application/proto, application/connect+proto, application/grpc[+proto])", cut(&content_type)),
                ))
            }
        };
        if enveloped && encoding(headers, "content-encoding")?.is_some() {
            return Err((
                Reason::Compressed,
                "the request has a content-encoding, which an enveloped call may not have (its messages name their own)".into(),
            ));
        }
        let gzip = match encoding(headers, encoding_header)? {
            None => false,
            Some(e) if e.eq_ignore_ascii_case("gzip") => true,
            Some(e) => {
                return Err((
                    Reason::Compressed,
                    format!("the request's {encoding_header} is {:?}; the execution-scope policy reads gzip and identity only", cut(e)),
                ))
            }
        };
        Ok(Self { enveloped, gzip })
    }

    /// The one uncompressed message in `body` (all of the request the proxy read), at most
    /// `limit` bytes once decompressed.
    pub fn message<'a>(&self, body: &'a [u8], limit: usize) -> Result<Cow<'a, [u8]>, Found> {
        let (compressed, message) = if self.enveloped {
            unframe(body)?
        } else {
            (self.gzip, body)
        };
        match (compressed, self.gzip) {
            (false, _) => Ok(Cow::Borrowed(message)),
            (true, true) => gunzip(message, limit).map(Cow::Owned),
            (true, false) => Err((
                Reason::Compressed,
                "the request's message is flagged compressed, but the call names no encoding the policy reads (gzip)".into(),
            )),
        }
    }
}

/// The one value of `name`, `None` when absent or `identity`; two values are refused (which one
/// the control plane would take is not the proxy's to guess).
fn encoding<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Found> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err((
            Reason::Compressed,
            format!("the request has more than one {name}"),
        ));
    }
    match value.to_str().map(str::trim) {
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("identity") => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err((
            Reason::Compressed,
            format!("the request's {name} is not text"),
        )),
    }
}

/// `data` gunzipped, every member (as Go's gzip reader, which the control plane uses, reads
/// them all: a second member would otherwise reach it unread), refused as soon as it would pass
/// `limit` bytes, before anything more is allocated.
fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, Found> {
    let mut out = Vec::new();
    let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(data)
        .take(bound)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                Reason::Undecodable,
                format!("the request's gzip is not valid: {e}"),
            )
        })?;
    if out.len() > limit {
        return Err((
            Reason::TooLarge,
            format!("the request is larger than admin.max_request_bytes ({limit} bytes) once decompressed"),
        ));
    }
    Ok(out)
}

/// A header value quoted back, cut to 32 characters.
fn cut(value: &str) -> String {
    value.chars().take(32).collect()
}

#[cfg(test)]
mod tests;
