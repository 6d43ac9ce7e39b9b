//! Rust types for the flyteidl messages the Flyte auth agent uses, generated at build time from
//! `protos/` (field names and numbers as flyteidl has them), plus flyteidl's JSON form: the proto3
//! JSON mapping that protobuf's `MessageToJson` writes and Flyte's tools read; and [`annotation`],
//! the text-format-in-base32 form flytepropeller gives messages in pod annotations.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

use std::sync::LazyLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

pub mod annotation;
pub mod services;

/// The generated flyteidl types.
pub mod flyteidl {
    /// The `flyteidl.core` package.
    #[allow(missing_docs, clippy::all)]
    pub mod core {
        include!(concat!(env!("OUT_DIR"), "/flyteidl.core.rs"));
    }
    /// The `flyteidl.service` package: `AuthMetadataService`, with tonic client and server.
    #[allow(missing_docs, clippy::all)]
    pub mod service {
        include!(concat!(env!("OUT_DIR"), "/flyteidl.service.rs"));
    }
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // The bytes are the descriptor set build.rs produced from the same files as the generated
    // types; failing to decode them is a build defect, not an input error.
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/flyteidl.bin"))[..])
        .expect("descriptor set written by build.rs decodes")
});

/// The descriptors of every message in this crate.
pub fn descriptor_pool() -> &'static DescriptorPool {
    &POOL
}

/// The FileDescriptorSet of FlyteAdmin's services (`flyteidl/service/{admin,dataproxy,signal,
/// identity,auth}.proto` and every file they import), as PyPI flyteidl 1.16.8 compiled them.
/// Dumped by `tests/python/flyteidl_fixtures.py admin_descriptor_set` and committed rather than
/// compiled from `.proto` text: Admin's files import google.api and openapiv2 option files this
/// crate would otherwise have to vendor, and the dump is byte-checked against the pinned
/// flyteidl by `tests/flyteidl_python.rs`, so it cannot drift.
pub const ADMIN_DESCRIPTOR_SET: &[u8] = include_bytes!("../descriptors/flyteidl-admin.binpb");

static ADMIN_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // A committed, test-checked file: failing to decode it is a build defect, not input.
    DescriptorPool::decode(ADMIN_DESCRIPTOR_SET).expect("committed admin descriptor set decodes")
});

/// The descriptors of every request and response message of FlyteAdmin's services (kept apart
/// from [`descriptor_pool`], whose files this crate generates Rust types from).
pub fn admin_pool() -> &'static DescriptorPool {
    &ADMIN_POOL
}

/// The FileDescriptorSet of the Flyte 2 (`flyteidl2`) services the agent proxies on its Connect
/// port (auth, identity, actions, cluster, dataproxy, project, task, and the workflow queue, run
/// and state services) and every file they import, as PyPI flyteidl2 2.0.51 compiled them. The
/// wheel ships no `.proto` files, so this is dumped from its generated modules by
/// `tests/python/flyteidl2_descriptors.py` and byte-checked against the pinned wheel by
/// `tests/flyteidl2_python.rs`.
pub const FLYTE2_DESCRIPTOR_SET: &[u8] = include_bytes!("../descriptors/flyteidl2.binpb");

static FLYTE2_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // A committed, test-checked file: failing to decode it is a build defect, not input.
    DescriptorPool::decode(FLYTE2_DESCRIPTOR_SET)
        .expect("committed flyteidl2 descriptor set decodes")
});

/// The descriptors of every request and response message of the Flyte 2 services.
pub fn flyteidl2_pool() -> &'static DescriptorPool {
    &FLYTE2_POOL
}

/// Why a JSON value is not a valid message; `path` is where, e.g. `tokens[1].client.clientId`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// A key that is neither a field's JSON name nor its proto name; `path` ends with the key.
    #[error("{path}: unknown field")]
    UnknownField {
        /// The offending key's path, spelled as in the input.
        path: String,
    },
    /// A string that names no value of the field's enum.
    #[error("{path}: unknown enum value {value:?}")]
    UnknownEnumValue {
        /// The enum field's path, spelled as in the input.
        path: String,
        /// The string given.
        value: String,
    },
    /// Any other mismatch with the schema, such as a wrong JSON type (`.` is the top level).
    #[error("{path}: {problem}")]
    Invalid {
        /// The offending value's path, spelled as in the input.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The message type has no descriptor in this crate (a programming error).
    #[error("no descriptor for message {0}")]
    UnknownMessage(String),
}

/// Parse a message from flyteidl's JSON form (proto3 JSON mapping: lowerCamelCase AND original snake_case field names, enums as names or numbers), rejecting unknown fields.
///
/// An enum number the enum does not define is kept as is (proto3 enums are open), for the
/// caller to judge; an undefined enum *name* is an error. `null` stands for the default value.
pub fn from_json<T: prost::Message + prost::Name + Default>(value: &Value) -> Result<T, JsonError> {
    let name = T::full_name();
    let descriptor = POOL
        .get_message_by_name(&name)
        .ok_or(JsonError::UnknownMessage(name))?;
    // Unknown keys and enum names first, with the offending key in the path; prost-reflect then
    // reports the remaining problems (types, ranges) at the value serde_path_to_error tracked.
    check_names(value, &descriptor, &mut Path::default())?;
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

/// Render a message in flyteidl's JSON form (what protobuf's `MessageToJson` produces: lowerCamelCase, enums as names; omit defaults).
///
/// Enum numbers the enum does not define are written as numbers, as `MessageToJson` does.
///
/// # Panics
///
/// If `T` is not one of this crate's messages (a programming error).
pub fn to_json<T: prost::Message + prost::Name>(msg: &T) -> Value {
    let name = T::full_name();
    let descriptor = POOL
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("to_json: no descriptor for message {name} in this crate"));
    let mut dynamic = DynamicMessage::new(descriptor);
    dynamic
        .transcode_from(msg)
        .unwrap_or_else(|e| panic!("to_json: {name} does not match its descriptor: {e}"));
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .unwrap_or_else(|e| panic!("to_json: {name} cannot be rendered: {e}"))
}

/// A JSON path as serde_path_to_error prints it: `a.b[0].c`, `.` for the top level.
#[derive(Default)]
struct Path(Vec<Segment>);

enum Segment {
    Key(String),
    Index(usize),
}

impl Path {
    fn render(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Key(k) if out.is_empty() => out.push_str(k),
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() {
            out.push('.');
        }
        out
    }

    fn with<R>(&mut self, segment: Segment, f: impl FnOnce(&mut Self) -> R) -> R {
        self.0.push(segment);
        let r = f(self);
        self.0.pop();
        r
    }
}

/// Walks `value` as a `descriptor` message and reports the first key that names no field and the
/// first enum string that names no enum value. Values of the wrong JSON type are left for the
/// deserializer to report.
fn check_names(
    value: &Value,
    descriptor: &MessageDescriptor,
    path: &mut Path,
) -> Result<(), JsonError> {
    let Value::Object(object) = value else {
        return Ok(());
    };
    for (key, value) in object {
        path.with(Segment::Key(key.clone()), |path| {
            // The order prost-reflect resolves keys in.
            let field = descriptor
                .get_field_by_json_name(key)
                .or_else(|| descriptor.get_field_by_name(key))
                .ok_or_else(|| JsonError::UnknownField {
                    path: path.render(),
                })?;
            let kind = if field.is_map() {
                match field.kind() {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    other => other,
                }
            } else {
                field.kind()
            };
            match (field.is_list(), field.is_map(), value) {
                (true, _, Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        path.with(Segment::Index(i), |path| check_value(item, &kind, path))?;
                    }
                    Ok(())
                }
                (_, true, Value::Object(entries)) => {
                    for (k, item) in entries {
                        path.with(Segment::Key(k.clone()), |path| {
                            check_value(item, &kind, path)
                        })?;
                    }
                    Ok(())
                }
                (false, false, value) => check_value(value, &kind, path),
                // A list or map field given something else: the deserializer says so.
                _ => Ok(()),
            }
        })?;
    }
    Ok(())
}

fn check_value(value: &Value, kind: &Kind, path: &mut Path) -> Result<(), JsonError> {
    match (kind, value) {
        // Well-known types have JSON forms of their own; prost-reflect checks those.
        (Kind::Message(m), _) if m.package_name() == "google.protobuf" => Ok(()),
        (Kind::Message(m), _) => check_names(value, m, path),
        (Kind::Enum(e), Value::String(s))
            if e.package_name() != "google.protobuf" && e.get_value_by_name(s).is_none() =>
        {
            Err(JsonError::UnknownEnumValue {
                path: path.render(),
                value: s.clone(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::flyteidl::core::*;
    use super::*;
    use serde_json::json;

    fn err<T: prost::Message + prost::Name + Default + std::fmt::Debug>(json: Value) -> JsonError {
        from_json::<T>(&json).unwrap_err()
    }

    #[test]
    fn camel_and_snake_case_parse_alike() {
        let camel: OAuth2TokenRequest = from_json(&json!({
            "name": "n", "type": "CLIENT_CREDENTIALS", "tokenEndpoint": "https://t",
            "client": {"clientId": "c", "clientSecret": {"group": "g", "mountRequirement": "FILE", "envVar": "E"}}
        }))
        .unwrap();
        let snake: OAuth2TokenRequest = from_json(&json!({
            "name": "n", "type": 0, "token_endpoint": "https://t",
            "client": {"client_id": "c", "client_secret": {"group": "g", "mount_requirement": 2, "env_var": "E"}}
        }))
        .unwrap();
        assert_eq!(camel, snake);
        let secret = camel.client.unwrap().client_secret.unwrap();
        assert_eq!(secret.mount_requirement, secret::MountType::File as i32);
        assert_eq!(secret.env_var, "E");
        assert_eq!(camel.token_endpoint, "https://t");
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let e = err::<OAuth2TokenRequest>(
            json!({"name": "n", "client": {"clientId": "c", "bogus": 1}}),
        );
        assert_eq!(e.to_string(), "client.bogus: unknown field");
        assert_eq!(
            e,
            JsonError::UnknownField {
                path: "client.bogus".into()
            }
        );
        let e = err::<OAuth2TokenRequest>(json!({"Name": "n"}));
        assert_eq!(e.to_string(), "Name: unknown field");
        let e = err::<SecurityContext>(
            json!({"secrets": [{"group": "a"}, {"group": "b", "extra": 1}]}),
        );
        assert_eq!(e.to_string(), "secrets[1].extra: unknown field");
    }

    #[test]
    fn unknown_enum_names_name_their_path() {
        let e = err::<OAuth2TokenRequest>(
            json!({"client": {"clientSecret": {"mountRequirement": "FOO"}}}),
        );
        assert_eq!(
            e.to_string(),
            r#"client.clientSecret.mountRequirement: unknown enum value "FOO""#
        );
        let e = err::<SecurityContext>(
            json!({"tokens": [{}, {"client": {"client_secret": {"mount_requirement": "file"}}}]}),
        );
        assert_eq!(
            e.to_string(),
            r#"tokens[1].client.client_secret.mount_requirement: unknown enum value "file""#
        );
        let e = err::<OAuth2TokenRequest>(json!({"type": "PASSWORD"}));
        assert_eq!(
            e,
            JsonError::UnknownEnumValue {
                path: "type".into(),
                value: "PASSWORD".into()
            }
        );
    }

    #[test]
    fn wrong_types_name_their_path() {
        let e = err::<OAuth2TokenRequest>(json!({"name": 5}));
        assert_eq!(
            e.to_string(),
            "name: invalid type: integer `5`, expected a string"
        );
        let e = err::<SecurityContext>(
            json!({"runAs": {"oauth2Client": {"clientSecret": {"key": []}}}}),
        );
        assert_eq!(
            e.to_string(),
            "runAs.oauth2Client.clientSecret.key: invalid type: sequence, expected a string"
        );
        let e = err::<SecurityContext>(json!({"secrets": {"group": "a"}}));
        assert_eq!(e.to_string(), "secrets: invalid type: map, expected a list");
        let e = err::<OAuth2TokenRequest>(json!({"type": 1.5}));
        assert!(
            e.to_string()
                .starts_with("type: invalid type: floating point"),
            "{e}"
        );
        let e = err::<OAuth2TokenRequest>(json!([]));
        assert_eq!(e.to_string(), ".: invalid type: sequence, expected a map");
    }

    #[test]
    fn unknown_enum_numbers_are_kept_for_validation() {
        let r: OAuth2TokenRequest = from_json(&json!({"type": 7})).unwrap();
        assert_eq!(r.r#type, 7);
        assert_eq!(to_json(&r), json!({"type": 7}));
    }

    #[test]
    fn null_means_default() {
        let r: OAuth2TokenRequest =
            from_json(&json!({"name": null, "client": null, "type": null})).unwrap();
        assert_eq!(r, OAuth2TokenRequest::default());
    }

    #[test]
    fn to_json_writes_camel_case_without_defaults() {
        let r = OAuth2TokenRequest {
            name: "n".into(),
            client: Some(OAuth2Client {
                client_id: "c".into(),
                client_secret: Some(Secret {
                    mount_requirement: secret::MountType::EnvVar as i32,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        assert_eq!(
            to_json(&r),
            json!({"name": "n", "client": {"clientId": "c", "clientSecret": {"mountRequirement": "ENV_VAR"}}})
        );
    }

    #[test]
    #[should_panic(expected = "no descriptor for message google.protobuf.Duration")]
    fn to_json_of_a_foreign_message_is_a_programming_error() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Duration {
            #[prost(int64, tag = "1")]
            seconds: i64,
        }
        impl prost::Name for Duration {
            const NAME: &'static str = "Duration";
            const PACKAGE: &'static str = "google.protobuf";
        }
        to_json(&Duration { seconds: 1 });
    }

    #[test]
    fn from_json_needs_one_of_our_messages() {
        assert_eq!(
            <OAuth2TokenRequest as prost::Name>::full_name(),
            "flyteidl.core.OAuth2TokenRequest"
        );
        assert_eq!(
            err::<Duration>(json!({})),
            JsonError::UnknownMessage("google.protobuf.Duration".into())
        );

        #[derive(Clone, PartialEq, prost::Message)]
        struct Duration {}
        impl prost::Name for Duration {
            const NAME: &'static str = "Duration";
            const PACKAGE: &'static str = "google.protobuf";
        }
    }
}
