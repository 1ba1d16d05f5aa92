//! SQS message bodies (src/message.rs): EventBridge events, SNS envelopes, Auto Scaling's
//! direct shape and test notifications, as anyone who can send to the queue may write them.
//!
//! Beyond "does not panic":
//! - an action that parses is one drover may act on: a strict instance id that the body
//!   really holds, names without control characters, a token of the allowed alphabet;
//! - it round-trips: written back as each of the three shapes it parses to the same action;
//! - no error, no `Debug` and no log excerpt shows a `LifecycleActionToken`;
//! - a log excerpt is one line of at most the asked length, an error one line of at most
//!   1000 characters.
#![no_main]

use drover::fuzzing::{excerpt_for_log, lifecycle_message};
use drover::message::{LifecycleAction, LifecycleMessage, Shape};
use secrecy::ExposeSecret;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(original) = std::str::from_utf8(data) else {
        return;
    };
    // The tokens are replaced by markers: a marker in any output is a token shown.
    let (body, markers) = common::mark(original, &tokens_in(original))
        .unwrap_or_else(|| (original.to_string(), Vec::new()));
    let body = body.as_str();
    let result = lifecycle_message(body);

    for max in [0, 1, 80, 200] {
        let excerpt = excerpt_for_log(body, max);
        assert!(excerpt.chars().count() <= max, "excerpt longer than {max}");
        assert!(
            !excerpt.chars().any(char::is_control),
            "excerpt breaks the log line: {excerpt:?}"
        );
    }
    common::assert_hidden(&excerpt_for_log(body, usize::MAX), &markers, "log excerpt");

    match result {
        Ok(LifecycleMessage::Action { action, shape: _ }) => {
            check_action(&action, body);
            let shown = format!("{action:?}");
            common::assert_hidden(&shown, &markers, "LifecycleAction Debug");
            if let Some(t) = token(&action).as_deref() {
                if t.len() >= 8 && !visible_fields(&action).iter().any(|f| f.contains(t)) {
                    assert!(!shown.contains(t), "Debug shows the token");
                }
            }
            round_trip(&action);
        }
        Ok(LifecycleMessage::Test { group }) => {
            if let Some(g) = group {
                assert!(!g.is_empty() && g.chars().count() <= 255);
                assert!(!g.chars().any(char::is_control));
            }
        }
        Err(e) => {
            common::assert_hidden(&format!("{e} {e:?}"), &markers, "error");
            let line = e.to_string();
            // Shown values are cut to 80 characters and `{:?}`-escaped (up to 10 characters
            // each): bounded, if not short.
            assert!(
                line.chars().count() <= 1000,
                "error longer than a log line: {} chars",
                line.chars().count()
            );
            assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        }
    }
});

fn check_action(a: &LifecycleAction, body: &str) {
    let hex = a
        .instance_id
        .strip_prefix("i-")
        .expect("instance id starts with i-");
    assert!((8..=17).contains(&hex.len()), "{:?}", a.instance_id);
    assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    // The id drover will act on is one the body really carries, as a JSON string value.
    assert!(
        string_values(body).contains(&a.instance_id),
        "instance id {:?} is not a value of the body",
        a.instance_id
    );
    for name in [&a.group, &a.hook, &a.transition] {
        assert!(!name.is_empty() && name.chars().count() <= 255, "{name:?}");
        assert!(!name.chars().any(char::is_control), "{name:?}");
    }
    if let Some(t) = token(a) {
        assert!((1..=128).contains(&t.len()));
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
    if let Some(m) = &a.metadata {
        assert!(m.chars().count() <= 1023);
    }
    assert_eq!(
        a.is_termination(),
        a.transition == "autoscaling:EC2_INSTANCE_TERMINATING"
    );
}

/// Writes the action back as each shape Auto Scaling uses and parses it again.
fn round_trip(a: &LifecycleAction) {
    let fields = json!({
        "Origin": "AutoScalingGroup",
        "Destination": "EC2",
        "LifecycleHookName": a.hook,
        "LifecycleTransition": a.transition,
        "AutoScalingGroupName": a.group,
        "EC2InstanceId": a.instance_id,
        "LifecycleActionToken": token(a),
        "NotificationMetadata": a.metadata,
    });
    let mut direct = fields.clone();
    direct["Time"] = json!(a.time);
    let eventbridge = json!({
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Instance-terminate Lifecycle Action",
        "source": "aws.autoscaling",
        "account": "123456789012",
        "time": a.time,
        "region": "us-east-1",
        "resources": [],
        "detail": fields,
    })
    .to_string();
    let direct = direct.to_string();
    let sns = |inner: &str| {
        json!({"Type": "Notification", "MessageId": "m-1", "Message": inner}).to_string()
    };
    for (body, shape) in [
        (direct.clone(), Shape::Direct),
        (eventbridge.clone(), Shape::EventBridge),
        (sns(&direct), Shape::Sns),
        (sns(&eventbridge), Shape::Sns),
    ] {
        match lifecycle_message(&body) {
            Ok(LifecycleMessage::Action {
                action,
                shape: again,
            }) => {
                assert_eq!(
                    plain(&action),
                    plain(a),
                    "{shape} round trip changed the action"
                );
                assert_eq!(again, shape);
            }
            other => panic!("{shape} round trip of {a:?} gave {other:?}"),
        }
    }
}

/// The token, shown: it is a secret everywhere else.
fn token(a: &LifecycleAction) -> Option<String> {
    a.token.as_ref().map(|t| t.expose_secret().to_string())
}

/// Every field, the token shown, to compare two actions whole.
fn plain(a: &LifecycleAction) -> [Option<String>; 7] {
    [
        Some(a.instance_id.clone()),
        Some(a.group.clone()),
        Some(a.hook.clone()),
        token(a),
        Some(a.transition.clone()),
        a.time.clone(),
        a.metadata.clone(),
    ]
}

/// The fields `Debug` shows in clear.
fn visible_fields(a: &LifecycleAction) -> Vec<&str> {
    let mut out = vec![
        a.instance_id.as_str(),
        a.group.as_str(),
        a.hook.as_str(),
        a.transition.as_str(),
    ];
    out.extend(a.time.as_deref());
    out.extend(a.metadata.as_deref());
    out
}

/// Every string value of the body, with the `Message` of an envelope opened (to any depth).
fn string_values(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        collect(&v, &mut out, &mut Vec::new(), 0);
    }
    out
}

/// Tokens worth looking for: the plausible (`[A-Za-z0-9-]`, 8 characters or more) string
/// values of any `LifecycleActionToken` key, also inside envelopes, that occur in the body
/// once and as they are (not escaped), so that they can be marked where they stand.
fn tokens_in(body: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        collect(&v, &mut Vec::new(), &mut tokens, 0);
    }
    tokens.retain(|t| {
        t.len() >= 8
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && body.matches(t.as_str()).count() == 1
    });
    tokens
}

fn collect(v: &Value, strings: &mut Vec<String>, tokens: &mut Vec<String>, depth: usize) {
    match v {
        Value::String(s) => {
            strings.push(s.clone());
            // A string that is JSON itself (an SNS `Message`) is searched too.
            if depth < 8 && s.trim_start().starts_with('{') {
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    collect(&inner, strings, tokens, depth + 1);
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect(i, strings, tokens, depth)),
        Value::Object(map) => {
            for (k, item) in map {
                if k == "LifecycleActionToken" {
                    if let Value::String(t) = item {
                        tokens.push(t.clone());
                    }
                }
                collect(item, strings, tokens, depth);
            }
        }
        _ => {}
    }
}
