//! Connect, the protocol Flyte 2's `flyte` SDK speaks: what tells a Connect call from gRPC,
//! the agent's own errors in Connect's form, a Connect answer's status, and the one answer the
//! proxy rewrites.
//!
//! The SDK sends unary calls as `application/proto` POSTs and streams as
//! `application/connect+proto` over HTTP/1.1 to a TCP endpoint (it refuses `unix://`), with no
//! credential when `_U_INSECURE` is set; the proxy ([`crate::proxy`]) forwards them to the
//! control plane over its HTTP/2 connection, whose connect-go handlers serve Connect there too.
//! Bodies (gzip included) pass through untouched, except `ClusterService/SelectCluster`'s
//! answer: a `cluster_endpoint` in it would make the SDK open its own session to that
//! endpoint, around the agent, so the proxy removes it and the SDK stays on the session it has.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};

use super::ProxyBody;
use crate::upstream::BoxError;

/// The method whose answer names the endpoint the SDK should use for a project.
pub const SELECT_CLUSTER: &str = "/flyteidl2.cluster.ClusterService/SelectCluster";

/// The methods of the Flyte 2 services a task's SDK calls (flyteidl2 2.0.51: actions, auth,
/// cluster, dataproxy, project, task, workflow), so that metrics name them rather than `other`.
/// A fixed list: the labels stay bounded. `agent/tests/flyte2.rs` checks it against the pinned
/// flyteidl2.
pub const FLYTE2_METHODS: [&str; 45] = [
    "/flyteidl2.actions.ActionsService/Abort",
    "/flyteidl2.actions.ActionsService/Enqueue",
    "/flyteidl2.actions.ActionsService/Signal",
    "/flyteidl2.actions.ActionsService/Update",
    "/flyteidl2.actions.ActionsService/WatchForUpdates",
    "/flyteidl2.auth.AuthMetadataService/GetOAuth2Metadata",
    "/flyteidl2.auth.AuthMetadataService/GetPublicClientConfig",
    "/flyteidl2.auth.IdentityService/UserInfo",
    "/flyteidl2.cluster.ClusterService/SelectCluster",
    "/flyteidl2.dataproxy.DataProxyService/CreateDownloadLink",
    "/flyteidl2.dataproxy.DataProxyService/CreateUploadLocation",
    "/flyteidl2.dataproxy.DataProxyService/GetActionData",
    "/flyteidl2.dataproxy.DataProxyService/TailLogs",
    "/flyteidl2.dataproxy.DataProxyService/UploadInputs",
    "/flyteidl2.project.ProjectService/CreateProject",
    "/flyteidl2.project.ProjectService/GetProject",
    "/flyteidl2.project.ProjectService/ListProjects",
    "/flyteidl2.project.ProjectService/UpdateProject",
    "/flyteidl2.task.TaskService/DeployTask",
    "/flyteidl2.task.TaskService/GetTaskDetails",
    "/flyteidl2.task.TaskService/ListTasks",
    "/flyteidl2.task.TaskService/ListVersions",
    "/flyteidl2.workflow.QueueService/AbortQueuedAction",
    "/flyteidl2.workflow.QueueService/AbortQueuedRun",
    "/flyteidl2.workflow.QueueService/EnqueueAction",
    "/flyteidl2.workflow.RunService/AbortAction",
    "/flyteidl2.workflow.RunService/AbortRun",
    "/flyteidl2.workflow.RunService/CreateRun",
    "/flyteidl2.workflow.RunService/GetActionData",
    "/flyteidl2.workflow.RunService/GetActionDataURIs",
    "/flyteidl2.workflow.RunService/GetActionDetails",
    "/flyteidl2.workflow.RunService/GetActionLogContext",
    "/flyteidl2.workflow.RunService/GetRunDetails",
    "/flyteidl2.workflow.RunService/ListActions",
    "/flyteidl2.workflow.RunService/ListRuns",
    "/flyteidl2.workflow.RunService/SignalEvent",
    "/flyteidl2.workflow.RunService/WatchActionDetails",
    "/flyteidl2.workflow.RunService/WatchActions",
    "/flyteidl2.workflow.RunService/WatchClusterEvents",
    "/flyteidl2.workflow.RunService/WatchGroups",
    "/flyteidl2.workflow.RunService/WatchRunDetails",
    "/flyteidl2.workflow.RunService/WatchRuns",
    "/flyteidl2.workflow.StateService/Get",
    "/flyteidl2.workflow.StateService/Put",
    "/flyteidl2.workflow.StateService/Watch",
];

/// Connect's content types: unary (`application/<codec>`) and streaming
/// (`application/connect+<codec>`), for the proto and JSON codecs.
const CONTENT_TYPES: [&str; 4] = [
    "application/proto",
    "application/json",
    "application/connect+proto",
    "application/connect+json",
];

/// Whether `req` is a Connect call: a POST with one of Connect's content types.
pub fn is_connect<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::POST
        && super::media_type(req.headers()).is_some_and(|ct| CONTENT_TYPES.contains(&ct))
}

/// A Connect error made by the agent itself: the code's HTTP status and Connect's JSON body,
/// which the SDK reads only under `application/json`.
pub fn error(code: u16, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"code": code_name(code), "message": message}).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(BoxError::from)
            .boxed_unsync(),
    );
    *response.status_mut() = status_of(code);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The gRPC code a Connect answer's HTTP status stands for, as Connect clients read it when the
/// body says nothing more (200 is OK; a stream's own end message is not read).
pub fn code_of(status: StatusCode) -> u16 {
    use super::code;
    match status.as_u16() {
        200 => code::OK,
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => 2, // unknown
    }
}

/// What a Connect error's JSON body (`{"code": "invalid_argument", "message": …}`) says: its
/// code, if it is one, and its message, if it has one.
pub fn error_in(body: &[u8]) -> (Option<u16>, Option<String>) {
    let Ok(error) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let text = |key: &str| error.get(key).and_then(|v| v.as_str());
    let code = text("code").and_then(|name| (1..=16).find(|&code| code_name(code) == name));
    (code, text("message").map(String::from))
}

/// Connect's name of a gRPC code (its JSON `code`).
fn code_name(code: u16) -> &'static str {
    match code {
        1 => "canceled",
        3 => "invalid_argument",
        4 => "deadline_exceeded",
        5 => "not_found",
        6 => "already_exists",
        7 => "permission_denied",
        8 => "resource_exhausted",
        9 => "failed_precondition",
        10 => "aborted",
        11 => "out_of_range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data_loss",
        16 => "unauthenticated",
        _ => "unknown",
    }
}

/// The HTTP status Connect gives a code.
fn status_of(code: u16) -> StatusCode {
    let status = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Why a SelectCluster answer could not be read as a protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SelectClusterResponse is not a valid protobuf message (at byte {0})")]
pub struct WireError(usize);

/// `message` (a `SelectClusterResponse`) without its `cluster_endpoint` (field 1), every other
/// field kept byte for byte: the SDK then reuses the session it has, which is the agent.
pub fn without_cluster_endpoint(message: &[u8]) -> Result<Vec<u8>, WireError> {
    const CLUSTER_ENDPOINT: u64 = 1;
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    while at < message.len() {
        let start = at;
        let key = varint(message, &mut at)?;
        let len = match key & 7 {
            0 => varint(message, &mut at).map(|_| 0)?,
            1 => 8,
            2 => usize::try_from(varint(message, &mut at)?).map_err(|_| WireError(at))?,
            5 => 4,
            _ => return Err(WireError(start)), // groups are not proto3
        };
        let end = at.checked_add(len).filter(|&e| e <= message.len());
        at = end.ok_or(WireError(at))?;
        if key >> 3 != CLUSTER_ENDPOINT {
            out.extend_from_slice(&message[start..at]);
        }
    }
    Ok(out)
}

/// Reads a base-128 varint at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(WireError(*at))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError(*at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_has_a_rule_for_every_method_the_port_names() {
        let policy = crate::scope::Policy::new(crate::scope::Scope::default()).with_flyte2();
        for path in FLYTE2_METHODS {
            if let Err(e) = policy.admit(path) {
                assert_ne!(e.reason, crate::scope::Reason::UnknownMethod, "{path}");
            }
        }
    }

    #[test]
    fn select_cluster_answers_lose_only_their_endpoint() {
        // cluster_endpoint = "dns:///other:81", cluster = "c1", an unknown varint field 7 = 300.
        let mut message = vec![0x0a, 15];
        message.extend_from_slice(b"dns:///other:81");
        message.extend_from_slice(&[0x12, 2, b'c', b'1', 0x38, 0xac, 0x02]);
        assert_eq!(
            without_cluster_endpoint(&message),
            Ok(vec![0x12, 2, b'c', b'1', 0x38, 0xac, 0x02])
        );
        assert_eq!(without_cluster_endpoint(&[]), Ok(vec![]));
        // A length past the end, a cut varint, a group.
        assert_eq!(
            without_cluster_endpoint(&[0x0a, 5, b'a']),
            Err(WireError(2))
        );
        assert_eq!(without_cluster_endpoint(&[0x38, 0xac]), Err(WireError(2)));
        assert_eq!(without_cluster_endpoint(&[0x0b]), Err(WireError(0)));
    }

    #[test]
    fn error_bodies_name_their_code_and_message() {
        assert_eq!(
            error_in(br#"{"code":"invalid_argument","message":"x"}"#),
            (Some(3), Some("x".into()))
        );
        assert_eq!(error_in(br#"{"code":"unauthenticated"}"#), (Some(16), None));
        assert_eq!(error_in(br#"{"code":"no_such_code"}"#), (None, None));
        assert_eq!(error_in(b"<html>"), (None, None));
        for code in 1..=16 {
            let body = format!(r#"{{"code":"{}"}}"#, code_name(code));
            assert_eq!(error_in(body.as_bytes()).0, Some(code));
        }
    }

    #[test]
    fn connect_calls_are_posts_with_a_connect_content_type() {
        let req = |method: &str, ct: &str| {
            Request::builder()
                .method(method)
                .header(CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(is_connect(&req("POST", "application/proto")));
        assert!(is_connect(&req("POST", "application/connect+proto")));
        assert!(is_connect(&req("POST", "application/json; charset=utf-8")));
        assert!(!is_connect(&req("GET", "application/proto")));
        assert!(!is_connect(&req("POST", "application/grpc")));
        assert!(!is_connect(&req("POST", "text/plain")));
    }

    #[test]
    fn agent_errors_are_connect_json_with_the_codes_status() {
        let response = error(7, "no");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(status_of(16), StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(14), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_of(8), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code_of(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(code_of(StatusCode::OK), 0);
        // The codes the agent answers with survive the trip through their status.
        for code in [7, 14, 16] {
            assert_eq!(code_of(status_of(code)), code);
        }
    }
}
