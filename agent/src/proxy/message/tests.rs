//! The shapes a request message comes in, gzip within the bound, and the bodies refused.

use std::io::Write as _;

use http::{HeaderMap, HeaderValue};

use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

const UNARY: (&str, &str) = ("content-type", "application/proto");
const STREAM: (&str, &str) = ("content-type", "application/connect+proto");

#[test]
fn each_protocol_finds_its_message_plain_or_gzipped() {
    let m = b"\x0a\x03abc";
    let shape = |h: &[(&'static str, &'static str)], p| Shape::of(&headers(h), p).unwrap();
    const GRPC: (&str, &str) = ("content-type", "application/grpc");
    // Connect unary: the whole body, gzipped per content-encoding.
    let plain = shape(&[UNARY], Protocol::Connect);
    assert_eq!(plain.message(m, 100).unwrap(), &m[..]);
    let gz = shape(&[UNARY, ("content-encoding", "gzip")], Protocol::Connect);
    assert_eq!(gz.message(&gzip(m), 100).unwrap(), &m[..]);
    // Connect streams and gRPC: an envelope whose flag says whether it is compressed.
    for (h, p) in [
        (
            &[STREAM, ("connect-content-encoding", "gzip")][..],
            Protocol::Connect,
        ),
        (&[GRPC, ("grpc-encoding", "gzip")][..], Protocol::Grpc),
    ] {
        let s = shape(h, p);
        assert_eq!(s.message(&envelope(1, &gzip(m)), 100).unwrap(), &m[..]);
        assert_eq!(s.message(&envelope(0, m), 100).unwrap(), &m[..]);
    }
    let identity = shape(
        &[
            ("content-type", "application/grpc+proto"),
            ("grpc-encoding", "identity"),
        ],
        Protocol::Grpc,
    );
    assert_eq!(identity.message(&envelope(0, m), 100).unwrap(), &m[..]);
}

#[test]
fn gzip_is_decoded_within_the_bound_and_bad_gzip_is_refused() {
    let gz = Shape::of(
        &headers(&[UNARY, ("content-encoding", "gzip")]),
        Protocol::Connect,
    )
    .unwrap();
    // A bomb: 1 KiB of gzip that would be 1 GiB. Refused at the bound, which is all that is
    // allocated (the decoder stops reading one byte past it).
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let (reason, detail) = gz.message(&bomb, 4096).unwrap_err();
    assert_eq!(reason, Reason::TooLarge);
    assert!(detail.contains("once decompressed"), "{detail}");
    // Exactly at the bound passes.
    assert_eq!(gz.message(&gzip(&[7; 4096]), 4096).unwrap().len(), 4096);
    // Not gzip, a cut stream.
    for bad in [b"not gzip".to_vec(), gzip(b"abcdef")[..12].to_vec()] {
        assert_eq!(gz.message(&bad, 100).unwrap_err().0, Reason::Undecodable);
    }
    // A second gzip member is read too: the control plane's reader would decode it.
    let mut two = gzip(b"\x12\x01a");
    two.extend(gzip(b"\x12\x01b"));
    assert_eq!(gz.message(&two, 100).unwrap(), &b"\x12\x01a\x12\x01b"[..]);
}

#[test]
fn what_the_policy_cannot_read_is_refused() {
    let refused = |h: &[(&'static str, &'static str)], p| Shape::of(&headers(h), p).unwrap_err().0;
    const GRPC: (&str, &str) = ("content-type", "application/grpc");
    assert_eq!(
        refused(&[UNARY, ("content-encoding", "br")], Protocol::Connect),
        Reason::Compressed
    );
    assert_eq!(
        refused(&[GRPC, ("grpc-encoding", "zstd")], Protocol::Grpc),
        Reason::Compressed
    );
    // An enveloped call's messages name their encoding; an HTTP content-encoding on it is not
    // something the policy would undo.
    assert_eq!(
        refused(&[GRPC, ("content-encoding", "gzip")], Protocol::Grpc),
        Reason::Compressed
    );
    assert_eq!(
        refused(
            &[
                GRPC,
                ("grpc-encoding", "gzip"),
                ("grpc-encoding", "identity")
            ],
            Protocol::Grpc
        ),
        Reason::Compressed
    );
    for (content_type, protocol) in [
        ("application/json", Protocol::Connect),
        ("application/connect+json", Protocol::Connect),
        ("application/grpc+json", Protocol::Grpc),
    ] {
        assert_eq!(
            refused(&[("content-type", content_type)], protocol),
            Reason::Undecodable,
            "{content_type}"
        );
    }
    // Flagged compressed with no encoding; Connect's end-stream flag; two messages.
    let plain = Shape::of(&headers(&[GRPC]), Protocol::Grpc).unwrap();
    assert_eq!(
        plain.message(&envelope(1, &gzip(b"x")), 100).unwrap_err().0,
        Reason::Compressed
    );
    assert_eq!(
        plain.message(&envelope(2, b""), 100).unwrap_err().0,
        Reason::Undecodable
    );
    let mut two = envelope(0, b"\x08\x01");
    two.extend(envelope(0, b"\x08\x02"));
    assert_eq!(plain.message(&two, 100).unwrap_err().0, Reason::Undecodable);
}
