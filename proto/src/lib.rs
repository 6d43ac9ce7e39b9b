//! Rust types for the flyteidl messages the Flyte auth agent uses, generated at build time from
//! `protos/` (field names and numbers as flyteidl has them), plus flyteidl's JSON form: the proto3
//! JSON mapping that protobuf's `MessageToJson` writes and Flyte's tools read.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

/// The generated flyteidl types.
pub mod flyteidl {
    /// `flyteidl.core`.
    #[allow(missing_docs, clippy::all)]
    pub mod core {
        include!(concat!(env!("OUT_DIR"), "/flyteidl.core.rs"));
    }
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // The bytes are the descriptor set build.rs just produced from the same files; failing to
    // decode them is a build defect, not an input error.
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/flyteidl.bin"))[..])
        .expect("descriptor set written by build.rs decodes")
});

/// The descriptors of every message in this crate.
pub fn descriptor_pool() -> &'static DescriptorPool {
    &POOL
}

/// Why a JSON value is not a valid message. The message names the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The value does not match the message's schema.
    #[error("{path}: {problem}")]
    Invalid {
        /// Where in the value (`.` for the top level).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The type has no descriptor in this crate (a programming error).
    #[error("no descriptor for {0}")]
    UnknownMessage(String),
}

/// Parses a message from flyteidl's JSON form: lowerCamelCase or original snake_case field names,
/// enums as names or numbers. Unknown fields are rejected.
pub fn from_json<T: prost::Message + prost::Name + Default>(
    value: &serde_json::Value,
) -> Result<T, JsonError> {
    let name = T::full_name();
    let descriptor = POOL
        .get_message_by_name(&name)
        .ok_or_else(|| JsonError::UnknownMessage(name.clone()))?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
    let message =
        DynamicMessage::deserialize_with_options(descriptor, tracked, &options).map_err(|e| {
            JsonError::Invalid {
                path: track.path().to_string(),
                problem: e.to_string(),
            }
        })?;
    message.transcode_to::<T>().map_err(|e| JsonError::Invalid {
        path: ".".into(),
        problem: e.to_string(),
    })
}

/// Renders a message in flyteidl's JSON form, as `MessageToJson` does: lowerCamelCase names, enums
/// as names, default values omitted.
pub fn to_json<T: prost::Message + prost::Name>(message: &T) -> serde_json::Value {
    let name = T::full_name();
    let Some(descriptor) = POOL.get_message_by_name(&name) else {
        return serde_json::Value::Null;
    };
    let mut dynamic = DynamicMessage::new(descriptor);
    if dynamic.transcode_from(message).is_err() {
        return serde_json::Value::Null;
    }
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::flyteidl::core::*;
    use super::*;

    fn err(json: &str) -> String {
        from_json::<OAuth2TokenRequest>(&serde_json::from_str(json).unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn camel_and_snake_case_parse_alike() {
        let camel: OAuth2TokenRequest = from_json(&serde_json::json!({
            "name": "n", "type": "CLIENT_CREDENTIALS", "tokenEndpoint": "https://t",
            "client": {"clientId": "c", "clientSecret": {"group": "g", "mountRequirement": "FILE", "envVar": "E"}}
        }))
        .unwrap();
        let snake: OAuth2TokenRequest = from_json(&serde_json::json!({
            "name": "n", "type": 0, "token_endpoint": "https://t",
            "client": {"client_id": "c", "client_secret": {"group": "g", "mount_requirement": 2, "env_var": "E"}}
        }))
        .unwrap();
        assert_eq!(camel, snake);
        let secret = camel.client.unwrap().client_secret.unwrap();
        assert_eq!(secret.mount_requirement, secret::MountType::File as i32);
        assert_eq!(secret.env_var, "E");
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"name":"n","client":{"clientId":"c","bogus":1}}"#);
        assert!(e.starts_with("client"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = err(r#"{"client":{"clientSecret":{"mountRequirement":"SOMETIMES"}}}"#);
        assert!(e.starts_with("client.clientSecret.mountRequirement"), "{e}");
        let e = err(r#"{"name":5}"#);
        assert!(e.starts_with("name"), "{e}");
    }

    #[test]
    fn unknown_enum_numbers_are_kept_for_validation() {
        let r: OAuth2TokenRequest = from_json(&serde_json::json!({"type": 7})).unwrap();
        assert_eq!(r.r#type, 7);
    }

    #[test]
    fn to_json_writes_camel_case_without_defaults() {
        let r = OAuth2TokenRequest {
            name: "n".into(),
            client: Some(OAuth2Client {
                client_id: "c".into(),
                client_secret: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            to_json(&r),
            serde_json::json!({"name": "n", "client": {"clientId": "c"}})
        );
    }
}
