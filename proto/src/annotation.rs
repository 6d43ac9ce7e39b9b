//! A message in the form flytepropeller puts into pod annotations (its `flyte.secrets/s<i>`, and
//! the `flyte.tokens/t<i>` the injector reads): protobuf text format, then base32 with the
//! alphabet `abcdefghijklmnopqrstuvwxyz123456` and no padding (propeller's `encoding.go`), so
//! propeller can emit token requests with the code it already has for secrets.

use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use prost_reflect::DynamicMessage;

use crate::POOL;

/// The largest annotation value propeller writes (and the largest this accepts).
pub const MAX_VALUE: usize = 256 * 1024;

/// Why an annotation value is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// Over [`MAX_VALUE`].
    #[error("is {0} bytes; at most {MAX_VALUE} are allowed")]
    TooLong(usize),
    /// Not base32 in propeller's alphabet.
    #[error("is not base32 in flytepropeller's alphabet (a-z and 1-6, no padding): {0}")]
    Base32(String),
    /// The decoded bytes are not UTF-8.
    #[error("decodes to bytes that are not UTF-8 text")]
    Utf8,
    /// The text is not the message in protobuf text format (the problem names the field or
    /// token at fault).
    #[error("is not a {message} in protobuf text format: {problem}")]
    TextFormat {
        /// The message type expected.
        message: String,
        /// What is wrong.
        problem: String,
    },
    /// The message type has no descriptor in this crate (a programming error).
    #[error("no descriptor for message {0}")]
    UnknownMessage(String),
}

static BASE32: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz123456");
    // A fixed, valid specification: failing here is a defect in this line, not an input error.
    spec.encoding()
        .expect("propeller's base32 alphabet is a valid specification")
});

/// The annotation value for `msg`.
///
/// # Panics
///
/// If `T` is not one of this crate's messages (a programming error).
pub fn encode<T: prost::Message + prost::Name>(msg: &T) -> String {
    encode_text(&to_text_format(msg))
}

/// Text in propeller's base32.
pub fn encode_text(text: &str) -> String {
    BASE32.encode(text.as_bytes())
}

/// The text an annotation value holds.
pub fn decode_text(value: &str) -> Result<String, AnnotationError> {
    if value.len() > MAX_VALUE {
        return Err(AnnotationError::TooLong(value.len()));
    }
    let bytes = BASE32
        .decode(value.trim().as_bytes())
        .map_err(|e| AnnotationError::Base32(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| AnnotationError::Utf8)
}

/// The message an annotation value holds.
pub fn decode<T: prost::Message + prost::Name + Default>(
    value: &str,
) -> Result<T, AnnotationError> {
    from_text_format(&decode_text(value)?)
}

/// `msg` in protobuf text format (single line, as Go's `MarshalTextString` content).
///
/// # Panics
///
/// If `T` is not one of this crate's messages (a programming error).
pub fn to_text_format<T: prost::Message + prost::Name>(msg: &T) -> String {
    let name = T::full_name();
    let descriptor = POOL.get_message_by_name(&name).unwrap_or_else(|| {
        panic!("to_text_format: no descriptor for message {name} in this crate")
    });
    let mut dynamic = DynamicMessage::new(descriptor);
    dynamic
        .transcode_from(msg)
        .unwrap_or_else(|e| panic!("to_text_format: {name} does not match its descriptor: {e}"));
    dynamic.to_text_format()
}

/// Parses protobuf text format (any of the spellings protobuf's printers use: Go's, C++'s,
/// Python's), rejecting unknown fields.
pub fn from_text_format<T: prost::Message + prost::Name + Default>(
    text: &str,
) -> Result<T, AnnotationError> {
    let name = T::full_name();
    let descriptor = POOL
        .get_message_by_name(&name)
        .ok_or_else(|| AnnotationError::UnknownMessage(name.clone()))?;
    let problem = |problem: String| AnnotationError::TextFormat {
        message: name.clone(),
        problem,
    };
    let dynamic =
        DynamicMessage::parse_text_format(descriptor, text).map_err(|e| problem(e.to_string()))?;
    dynamic
        .transcode_to::<T>()
        .map_err(|e| problem(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flyteidl::core::{
        o_auth2_token_request, secret, OAuth2Client, OAuth2TokenRequest, Secret,
    };

    fn request() -> OAuth2TokenRequest {
        OAuth2TokenRequest {
            name: "warehouse".into(),
            r#type: o_auth2_token_request::Type::ClientCredentials as i32,
            client: Some(OAuth2Client {
                client_id: "reader".into(),
                client_secret: Some(Secret {
                    group: "warehouse-oauth".into(),
                    key: "client_secret".into(),
                    mount_requirement: secret::MountType::File as i32,
                    ..Default::default()
                }),
            }),
            token_endpoint: "https://idp.example.com/token".into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_in_propellers_alphabet_without_padding() {
        let value = encode(&request());
        assert!(value
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('1'..='6').contains(&c)));
        assert_eq!(decode::<OAuth2TokenRequest>(&value).unwrap(), request());
    }

    #[test]
    fn reads_the_multi_line_text_go_prints() {
        // What Go's prototext (behind propeller's MarshalTextString) writes, spacing included.
        let go = "name:  \"warehouse\"\ntype:  CLIENT_CREDENTIALS\nclient:  {\n  client_id:  \"reader\"\n  client_secret:  {\n    group:  \"warehouse-oauth\"\n    key:  \"client_secret\"\n    mount_requirement:  FILE\n  }\n}\ntoken_endpoint:  \"https://idp.example.com/token\"\n";
        assert_eq!(
            from_text_format::<OAuth2TokenRequest>(go).unwrap(),
            request()
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong_and_where() {
        let err = |v: &str| decode::<OAuth2TokenRequest>(v).unwrap_err().to_string();
        assert!(err("ABC").contains("not base32"), "{}", err("ABC"));
        assert!(err("a======").contains("not base32"));
        assert_eq!(
            decode::<OAuth2TokenRequest>(&"a".repeat(MAX_VALUE + 1)),
            Err(AnnotationError::TooLong(MAX_VALUE + 1))
        );
        // 0xff is not UTF-8.
        assert_eq!(
            decode::<OAuth2TokenRequest>(&BASE32.encode(&[0xff])),
            Err(AnnotationError::Utf8)
        );
        let text = |t: &str| BASE32.encode(t.as_bytes());
        let unknown = err(&text("name: \"n\"\nnonsense: 1"));
        assert!(
            unknown.contains("is not a flyteidl.core.OAuth2TokenRequest in protobuf text format")
                && unknown.contains("nonsense"),
            "{unknown}"
        );
        let bad_enum = err(&text("type: PASSWORD"));
        assert!(bad_enum.contains("PASSWORD"), "{bad_enum}");
    }
}
