//! Property test of the agent's one parser of token endpoint answers
//! ([`flyte_auth_agent::idp::token_from_response`]): for any status, headers (`Retry-After`
//! included) and body — JSON or not, `expires_in` of any JSON type and size, JWTs with any `exp` —
//! it does not panic; a token it accepts is RFC 6750 token68, unexpired and lives at most the
//! configured maximum; an error it returns is short, free of control characters and never quotes
//! the token it was sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use flyte_auth_agent::idp::{
    check_token68, clean_text, token_from_response, Lifetimes, MAX_IDP_TEXT,
};
use flyte_auth_agent::token::{jwt_exp, rfc3339};
use proptest::prelude::*;
use serde_json::{json, Value};

const URL: &str = "https://idp.example/token";
const LIFETIMES: Lifetimes = Lifetimes {
    default: Duration::from_secs(300),
    max: Duration::from_secs(365 * 86_400),
};

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Any JSON number: integers of every size and sign, finite floats.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        (-100_000i64..100_000).prop_map(|n| json!(n)),
        Just(json!(0)),
    ]
}

/// `expires_in` as IdPs send it, and as they should not.
fn expires_in() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        number().prop_map(Some),
        number().prop_map(|n| Some(Value::String(n.to_string()))),
        ".{0,24}".prop_map(|s| Some(Value::String(s))),
        any::<bool>().prop_map(|b| Some(json!(b))),
        Just(Some(json!([3600]))),
        Just(Some(json!({"secs": 3600}))),
    ]
}

/// A JWT-shaped token with an `exp` near now, far away or absurd.
fn jwt() -> impl Strategy<Value = String> {
    let exp = prop_oneof![
        number(),
        (-7200i64..7200).prop_map(|d| json!(now_secs() + d)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MAX)),
        Just(json!("soon")),
    ];
    exp.prop_map(|exp| {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.sig",
            b64(&json!({"alg": "RS256"})),
            b64(&json!({"exp": exp, "sub": "c"}))
        )
    })
}

/// Access tokens: well-formed, JWTs, and anything at all (control characters, spaces, empty).
fn access_token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._~+/-]{1,64}={0,2}",
        jwt(),
        any::<String>(),
        "[a-z]{0,8}[\\x00-\\x1f\\x7f \"\\\\][a-z]{0,8}",
        Just(String::new()),
    ]
}

fn token_body() -> impl Strategy<Value = Vec<u8>> {
    let token_type = prop_oneof![
        Just(json!("Bearer")),
        Just(json!("bearer")),
        ".{0,16}".prop_map(Value::String),
        Just(json!(7)),
    ];
    (access_token(), token_type, expires_in(), any::<bool>()).prop_map(
        |(token, token_type, expires_in, with_type)| {
            let mut body = json!({"access_token": token});
            if with_type {
                body["token_type"] = token_type;
            }
            if let Some(e) = expires_in {
                body["expires_in"] = e;
            }
            body.to_string().into_bytes()
        },
    )
}

fn error_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just("invalid_client".to_string()),
            Just("slow_down".to_string()),
            any::<String>()
        ],
        prop_oneof![
            Just(Value::Null),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x1f\\x7f\\u{202e}a-z]{0,10000}".prop_map(Value::String),
            number(),
        ],
    )
        .prop_map(|(error, description)| {
            json!({"error": error, "error_description": description})
                .to_string()
                .into_bytes()
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => token_body(),
        2 => error_body(),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

fn retry_after() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        any::<u64>().prop_map(|n| Some(n.to_string())),
        "[ -~]{0,40}".prop_map(Some),
        Just(Some("Fri, 31 Dec 9999 23:59:59 GMT".to_string())),
        Just(Some("Thu, 01 Jan 1970 00:00:00 GMT".to_string())),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(200u16),
        1 => prop::sample::select(vec![201u16, 204, 301, 400, 401, 403, 404, 429, 500, 503]),
        1 => 100u16..1000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_answer_is_a_sane_token_or_a_clean_error(
        status in status(),
        retry_after in retry_after(),
        body in body(),
    ) {
        let mut response = http::Response::builder().status(status);
        if let Some(r) = &retry_after {
            response = response.header("retry-after", r.as_str());
        }
        let response = response.body(body.clone()).unwrap();
        let issued_at = SystemTime::now();
        match token_from_response(URL, &response, issued_at, LIFETIMES) {
            Ok(token) => {
                prop_assert!((200..300).contains(&status));
                prop_assert_eq!(check_token68(token.access_token.expose()), Ok(()));
                prop_assert!(token.expires_at > issued_at);
                prop_assert!(token.lifetime() <= LIFETIMES.max);
                prop_assert!(token.is_fresh(issued_at));
                prop_assert!(!token.token_type.is_empty());
                prop_assert!(token.token_type.bytes().all(|b| b.is_ascii_graphic()));
                rfc3339(token.expires_at);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(
                    text.chars().count() <= URL.len() + 2 * MAX_IDP_TEXT + 100,
                    "{} characters: {:?}", text.chars().count(), text
                );
                prop_assert!(!text.chars().any(|c| c.is_control()), "{:?}", text);
                if let Some(r) = e.retry_after() {
                    prop_assert!(r <= Duration::from_secs(300));
                }
                let sent: Option<Value> = serde_json::from_slice(&body).ok();
                if let Some(token) = sent.as_ref().and_then(|b| b["access_token"].as_str()) {
                    if token.len() >= 12 {
                        prop_assert!(!text.contains(token), "the error quotes the token: {:?}", text);
                    }
                }
            }
        }
    }

    #[test]
    fn idp_text_is_always_short_and_clean(text in any::<String>()) {
        let clean = clean_text(&text);
        prop_assert!(clean.chars().count() <= MAX_IDP_TEXT);
        prop_assert!(!clean.chars().any(|c| c.is_control()));
    }

    #[test]
    fn jwt_exp_reads_any_payload(payload in proptest::collection::vec(any::<u8>(), 0..64), exp in number()) {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        jwt_exp(&format!("e30.{}.sig", b64(&payload)));
        let claims = json!({"exp": exp});
        jwt_exp(&format!("e30.{}.sig", b64(claims.to_string().as_bytes())));
    }
}
