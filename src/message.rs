//! Parses Auto Scaling lifecycle-hook messages out of SQS message bodies (pure, no I/O).
//!
//! Three shapes reach the queue: an EventBridge event, an SNS envelope whose `Message` is
//! the direct shape as a JSON string, and the direct shape Auto Scaling sends to SQS itself.
//! Any host that can send to the queue can forge a body, and a corrupt one must never make
//! drover take out some other host: every field drover acts on is checked, the instance id
//! strictly, and a body that is not plainly a lifecycle message is an error, never a guess.

use std::fmt;

use serde_json::{Map, Value};

use secrecy::SecretString;

use crate::lifecycle::TERMINATING_TRANSITION;
use crate::text::{one_line, redact_string_values, shorten};

/// SQS's largest message body; anything bigger did not come through SQS unharmed.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The `Event` of the message Auto Scaling sends when a hook is created.
pub const TEST_NOTIFICATION_EVENT: &str = "autoscaling:TEST_NOTIFICATION";

/// The EventBridge `detail-type`s of lifecycle actions.
const EVENTBRIDGE_DETAIL_TYPES: [&str; 2] = [
    "EC2 Instance-terminate Lifecycle Action",
    "EC2 Instance-launch Lifecycle Action",
];

/// The `source` of every event Auto Scaling puts on EventBridge; custom events cannot use
/// an `aws.` source, so a different one means someone else's event.
const EVENTBRIDGE_SOURCE: &str = "aws.autoscaling";

/// Auto Scaling's limits on names (1..=255) and notification metadata (1..=1023).
const MAX_NAME_CHARS: usize = 255;
const MAX_METADATA_CHARS: usize = 1023;
/// The API takes exactly 36 characters (a UUID); 128 leaves room without letting junk in.
const MAX_TOKEN_CHARS: usize = 128;
/// ISO 8601 timestamps are about 24 characters.
const MAX_TIME_CHARS: usize = 64;

/// A lifecycle action as Auto Scaling describes it. The token lets anyone complete the
/// action: a secret, never in `Debug` (drover never sends it back to AWS either).
#[derive(Debug, Clone)]
pub struct LifecycleAction {
    pub instance_id: String,
    pub group: String,
    pub hook: String,
    pub token: Option<SecretString>,
    pub transition: String,
    pub time: Option<String>,
    pub metadata: Option<String>,
}

impl LifecycleAction {
    /// Whether this is the termination transition, the only one drover acts on.
    pub fn is_termination(&self) -> bool {
        self.transition == TERMINATING_TRANSITION
    }
}

/// How the message reached the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    EventBridge,
    Sns,
    Direct,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::EventBridge => "EventBridge",
            Shape::Sns => "SNS",
            Shape::Direct => "direct",
        })
    }
}

#[derive(Debug, Clone)]
pub enum LifecycleMessage {
    /// autoscaling:TEST_NOTIFICATION: delete it and do nothing.
    Test { group: Option<String> },
    /// A lifecycle action (any transition; callers act only on terminations).
    Action {
        action: LifecycleAction,
        shape: Shape,
    },
}

/// Why a body is not a usable lifecycle message. No variant ever shows a token; values
/// that are shown are shortened and escaped.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message body is {size} bytes, over SQS's limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("message body is not JSON: {detail}")]
    NotJson { detail: String },
    #[error("not a lifecycle-hook message: {what}")]
    NotALifecycleMessage { what: String },
    #[error("SNS envelope inside an SNS envelope; only one level is allowed")]
    NestedEnvelope,
    #[error("{shape} lifecycle message has no {field}")]
    MissingField {
        field: &'static str,
        shape: &'static str,
    },
    #[error("{shape} lifecycle message has a bad {field}: {detail}")]
    BadField {
        field: &'static str,
        shape: &'static str,
        detail: String,
    },
}

/// Where a JSON object sits: at the top of the body, or inside an SNS envelope (where a
/// second envelope is refused and errors name the wrapping).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    InSns,
}

/// Parses one SQS message body.
pub fn parse(body: &str) -> Result<LifecycleMessage, MessageError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(MessageError::TooLarge {
            size: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    // serde_json's own recursion limit turns deeply nested input into an error, and its
    // syntax errors name a position, never the text.
    let value: Value = serde_json::from_str(body).map_err(|e| MessageError::NotJson {
        detail: e.to_string(),
    })?;
    classify(&value, Level::Top)
}

fn classify(value: &Value, level: Level) -> Result<LifecycleMessage, MessageError> {
    let Some(obj) = value.as_object() else {
        return Err(MessageError::NotALifecycleMessage {
            what: format!("the body is {}, not an object", kind_of(value)),
        });
    };

    if obj.contains_key("detail-type") {
        let shape_name = match level {
            Level::Top => "EventBridge",
            Level::InSns => "SNS-wrapped EventBridge",
        };
        let action = eventbridge(obj, shape_name)?;
        let shape = match level {
            Level::Top => Shape::EventBridge,
            Level::InSns => Shape::Sns,
        };
        return Ok(LifecycleMessage::Action { action, shape });
    }

    if let Some(kind) = obj.get("Type") {
        if kind.as_str() != Some("Notification") {
            return Err(MessageError::NotALifecycleMessage {
                what: match kind.as_str() {
                    Some(k) => format!("an SNS {:?} message", shorten(k, 40)),
                    None => format!("an object whose Type is {}", kind_of(kind)),
                },
            });
        }
        if level == Level::InSns {
            return Err(MessageError::NestedEnvelope);
        }
        return sns(obj);
    }

    if obj.get("Event").and_then(Value::as_str) == Some(TEST_NOTIFICATION_EVENT) {
        // Only ever logged, so a bad or missing group is no reason to refuse it.
        let group = obj
            .get("AutoScalingGroupName")
            .and_then(Value::as_str)
            .filter(|g| check_name(g).is_ok())
            .map(str::to_string);
        return Ok(LifecycleMessage::Test { group });
    }

    // The direct shape has no marker of its own: any of the lifecycle fields makes it one,
    // so that a forged or cut-down one is reported for what is missing.
    let lifecycle_keys = [
        "LifecycleTransition",
        "LifecycleHookName",
        "LifecycleActionToken",
    ];
    if lifecycle_keys.iter().any(|k| obj.contains_key(*k)) {
        let shape_name = match level {
            Level::Top => "direct",
            Level::InSns => "SNS-wrapped direct",
        };
        let action = action_fields(obj, shape_name, obj, "Time")?;
        let shape = match level {
            Level::Top => Shape::Direct,
            Level::InSns => Shape::Sns,
        };
        return Ok(LifecycleMessage::Action { action, shape });
    }

    Err(MessageError::NotALifecycleMessage {
        what: match obj.get("Event").and_then(Value::as_str) {
            // Auto Scaling's plain notifications (EC2_INSTANCE_TERMINATE, ...) share topics.
            Some(event) => format!("an Auto Scaling {:?} notification", shorten(event, 60)),
            None => "an object with none of the lifecycle fields".to_string(),
        },
    })
}

fn eventbridge(
    obj: &Map<String, Value>,
    shape: &'static str,
) -> Result<LifecycleAction, MessageError> {
    let detail_type = required_str(obj, "detail-type", shape)?;
    if !EVENTBRIDGE_DETAIL_TYPES.contains(&detail_type) {
        return Err(MessageError::NotALifecycleMessage {
            what: format!(
                "an EventBridge event of detail-type {:?}",
                shorten(detail_type, 80)
            ),
        });
    }
    if let Some(source) = obj.get("source") {
        if source.as_str() != Some(EVENTBRIDGE_SOURCE) {
            return Err(MessageError::NotALifecycleMessage {
                what: match source.as_str() {
                    Some(s) => format!("an EventBridge event from {:?}", shorten(s, 60)),
                    None => format!("an EventBridge event whose source is {}", kind_of(source)),
                },
            });
        }
    }
    let detail = match obj.get("detail") {
        None | Some(Value::Null) => {
            return Err(MessageError::MissingField {
                field: "detail",
                shape,
            })
        }
        Some(Value::Object(d)) => d,
        Some(other) => {
            return Err(MessageError::BadField {
                field: "detail",
                shape,
                detail: format!("expected an object, found {}", kind_of(other)),
            })
        }
    };
    action_fields(detail, shape, obj, "time")
}

fn sns(obj: &Map<String, Value>) -> Result<LifecycleMessage, MessageError> {
    let shape = "SNS";
    let message = required_str(obj, "Message", shape)?;
    let inner: Value = serde_json::from_str(message).map_err(|e| MessageError::BadField {
        field: "Message",
        shape,
        detail: format!("not JSON: {e}"),
    })?;
    classify(&inner, Level::InSns)
}

/// The action's fields from `fields`; the time from `time_key` of `top` (EventBridge keeps
/// it outside `detail`).
fn action_fields(
    fields: &Map<String, Value>,
    shape: &'static str,
    top: &Map<String, Value>,
    time_key: &'static str,
) -> Result<LifecycleAction, MessageError> {
    let bad = |field: &'static str, detail: String| MessageError::BadField {
        field,
        shape,
        detail,
    };

    let instance_id = required_str(fields, "EC2InstanceId", shape)?;
    if !is_instance_id(instance_id) {
        return Err(bad(
            "EC2InstanceId",
            format!(
                "{:?} is not an EC2 instance id (\"i-\" and 8 to 17 lowercase hex digits)",
                shorten(instance_id, 40)
            ),
        ));
    }
    let group = required_str(fields, "AutoScalingGroupName", shape)?;
    check_name(group).map_err(|d| bad("AutoScalingGroupName", d))?;
    let hook = required_str(fields, "LifecycleHookName", shape)?;
    check_name(hook).map_err(|d| bad("LifecycleHookName", d))?;
    let transition = required_str(fields, "LifecycleTransition", shape)?;
    check_name(transition).map_err(|d| bad("LifecycleTransition", d))?;

    let token = optional_str(fields, "LifecycleActionToken", shape)?;
    if let Some(t) = token {
        // The value stays out of the error: it would complete the action for anyone.
        if !is_token(t) {
            return Err(bad(
                "LifecycleActionToken",
                format!("not 1 to {MAX_TOKEN_CHARS} characters of 0-9, A-Z, a-z and -"),
            ));
        }
    }
    let time = optional_str(top, time_key, shape)?;
    if let Some(t) = time {
        if t.chars().count() > MAX_TIME_CHARS || t.chars().any(char::is_control) {
            return Err(bad(
                time_key,
                format!("{:?} is not a timestamp", shorten(t, 40)),
            ));
        }
    }
    let metadata = optional_str(fields, "NotificationMetadata", shape)?;
    if let Some(m) = metadata {
        let chars = m.chars().count();
        if chars > MAX_METADATA_CHARS {
            return Err(bad(
                "NotificationMetadata",
                format!("{chars} characters, over Auto Scaling's limit of {MAX_METADATA_CHARS}"),
            ));
        }
    }

    Ok(LifecycleAction {
        instance_id: instance_id.to_string(),
        group: group.to_string(),
        hook: hook.to_string(),
        token: token.map(|t| SecretString::from(t.to_string())),
        transition: transition.to_string(),
        time: time.map(str::to_string),
        metadata: metadata.map(str::to_string),
    })
}

/// A string field that must be there; `null` counts as missing.
fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
    shape: &'static str,
) -> Result<&'a str, MessageError> {
    optional_str(obj, field, shape)?.ok_or(MessageError::MissingField { field, shape })
}

/// A string field that may be absent or `null`, but is a string when it is there.
fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
    shape: &'static str,
) -> Result<Option<&'a str>, MessageError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(MessageError::BadField {
            field,
            shape,
            detail: format!("expected a string, found {}", kind_of(other)),
        }),
    }
}

/// `i-` and 8 (old) or 17 (current) lowercase hex digits; anything between is let through.
fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (8..=17).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_token(token: &str) -> bool {
    (1..=MAX_TOKEN_CHARS).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Group, hook and transition names: what Auto Scaling allows, minus control characters,
/// which have no business in a name and would break log lines and host labels.
fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        Err("empty".to_string())
    } else if chars > MAX_NAME_CHARS {
        Err(format!(
            "{chars} characters, over the limit of {MAX_NAME_CHARS}"
        ))
    } else if name.chars().any(char::is_control) {
        Err(format!("{:?} holds control characters", shorten(name, 60)))
    } else {
        Ok(())
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A shortened, single-line, safe-to-log rendering of a body for "malformed message" logs:
/// at most `max` chars, control characters replaced, and the value of any
/// "LifecycleActionToken" replaced by "<redacted>" (a token lets anyone complete the action).
pub fn excerpt_for_log(body: &str, max: usize) -> String {
    one_line(&redact_tokens(body), max)
}

/// Replaces the string value after every `LifecycleActionToken` key, in plain JSON
/// (`"LifecycleActionToken": "..."`) and inside an SNS `Message` string
/// (`\"LifecycleActionToken\":\"...\"`). Works on the raw text, so that a body that is not
/// valid JSON, or is cut, is redacted too.
fn redact_tokens(body: &str) -> String {
    redact_string_values(body, &["LifecycleActionToken"])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "87654321-4321-4321-4321-210987654321";

    const EVENTBRIDGE_TERMINATE: &str = r#"{
  "version": "0",
  "id": "12345678-1234-1234-1234-123456789012",
  "detail-type": "EC2 Instance-terminate Lifecycle Action",
  "source": "aws.autoscaling",
  "account": "123456789012",
  "time": "2026-11-23T12:00:00Z",
  "region": "us-east-1",
  "resources": [
    "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:59fe4a8b-9a3e-4a5c-8c1d-6f0f1d2e3a4b:autoScalingGroupName/crawlers-prod"
  ],
  "detail": {
    "LifecycleActionToken": "87654321-4321-4321-4321-210987654321",
    "AutoScalingGroupName": "crawlers-prod",
    "LifecycleHookName": "drover-drain",
    "EC2InstanceId": "i-1234567890abcdef0",
    "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
    "NotificationMetadata": "{\"team\":\"crawl\",\"note\":\"für alle\"}",
    "Origin": "AutoScalingGroup",
    "Destination": "EC2"
  }
}"#;

    const EVENTBRIDGE_LAUNCH: &str = r#"{"version":"0","id":"468fc6b9-1e2d-4b0a-9b7e-0c2a1a3c5d7e","detail-type":"EC2 Instance-launch Lifecycle Action","source":"aws.autoscaling","account":"123456789012","time":"2026-11-23T11:58:00Z","region":"eu-west-1","resources":["arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:59fe4a8b-9a3e-4a5c-8c1d-6f0f1d2e3a4b:autoScalingGroupName/crawlers-prod"],"detail":{"LifecycleActionToken":"87654321-4321-4321-4321-210987654321","AutoScalingGroupName":"crawlers-prod","LifecycleHookName":"boot","EC2InstanceId":"i-0abcdef1234567890","LifecycleTransition":"autoscaling:EC2_INSTANCE_LAUNCHING","Origin":"EC2","Destination":"AutoScalingGroup"}}"#;

    const DIRECT: &str = r#"{"Origin":"AutoScalingGroup","Destination":"EC2","LifecycleHookName":"drain","LifecycleTransition":"autoscaling:EC2_INSTANCE_TERMINATING","AutoScalingGroupName":"my-asg","EC2InstanceId":"i-0123abcd","LifecycleActionToken":"87654321-4321-4321-4321-210987654321","AccountId":"123456789012","RequestId":"a1b2c3d4-0000-1111-2222-333344445555","Service":"AWS Auto Scaling","Time":"2026-11-23T12:00:00.000Z","NotificationMetadata":"rack=7"}"#;

    const SNS_DIRECT: &str = r#"{
  "Type" : "Notification",
  "MessageId" : "d3b5e2f0-5a4b-5c6d-8e9f-0a1b2c3d4e5f",
  "TopicArn" : "arn:aws:sns:us-east-1:123456789012:asg-lifecycle",
  "Subject" : "Auto Scaling:  Lifecycle action 'TERMINATING' for instance i-1234567890abcdef0 in progress.",
  "Message" : "{\"Origin\":\"AutoScalingGroup\",\"Destination\":\"EC2\",\"LifecycleHookName\":\"drain\",\"LifecycleTransition\":\"autoscaling:EC2_INSTANCE_TERMINATING\",\"AutoScalingGroupName\":\"my-asg\",\"Service\":\"AWS Auto Scaling\",\"Time\":\"2026-11-23T12:00:00.000Z\",\"AccountId\":\"123456789012\",\"LifecycleActionToken\":\"87654321-4321-4321-4321-210987654321\",\"EC2InstanceId\":\"i-1234567890abcdef0\",\"RequestId\":\"a1b2c3d4-0000-1111-2222-333344445555\"}",
  "Timestamp" : "2026-11-23T12:00:00.123Z",
  "SignatureVersion" : "1",
  "Signature" : "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
  "SigningCertURL" : "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
  "UnsubscribeURL" : "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:asg-lifecycle:0a1b2c3d"
}"#;

    const TEST_DIRECT: &str = r#"{"AccountId":"123456789012","RequestId":"5b1d2e3f-aaaa-bbbb-cccc-ddddeeeeffff","AutoScalingGroupARN":"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:59fe4a8b-9a3e-4a5c-8c1d-6f0f1d2e3a4b:autoScalingGroupName/my-asg","AutoScalingGroupName":"my-asg","Service":"AWS Auto Scaling","Event":"autoscaling:TEST_NOTIFICATION","Time":"2026-11-23T11:00:00.000Z"}"#;

    const SNS_TEST: &str = r#"{"Type":"Notification","MessageId":"0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5","TopicArn":"arn:aws:sns:us-east-1:123456789012:asg-lifecycle","Subject":"Auto Scaling:  test notification for group \"my-asg\"","Message":"{\"AccountId\":\"123456789012\",\"RequestId\":\"5b1d2e3f-aaaa-bbbb-cccc-ddddeeeeffff\",\"AutoScalingGroupARN\":\"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:59fe4a8b:autoScalingGroupName/my-asg\",\"AutoScalingGroupName\":\"my-asg\",\"Service\":\"AWS Auto Scaling\",\"Event\":\"autoscaling:TEST_NOTIFICATION\",\"Time\":\"2026-11-23T11:00:00.000Z\"}","Timestamp":"2026-11-23T11:00:00.456Z","SignatureVersion":"1","Signature":"EXAMPLE==","SigningCertURL":"https://sns.us-east-1.amazonaws.com/x.pem","UnsubscribeURL":"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"}"#;

    const SAMPLES: [&str; 6] = [
        EVENTBRIDGE_TERMINATE,
        EVENTBRIDGE_LAUNCH,
        DIRECT,
        SNS_DIRECT,
        TEST_DIRECT,
        SNS_TEST,
    ];

    /// An action with its token shown, to compare whole.
    #[derive(Debug, PartialEq, Eq)]
    struct Plain {
        instance_id: String,
        group: String,
        hook: String,
        token: Option<String>,
        transition: String,
        time: Option<String>,
        metadata: Option<String>,
    }

    fn plain(a: &LifecycleAction) -> Plain {
        Plain {
            instance_id: a.instance_id.clone(),
            group: a.group.clone(),
            hook: a.hook.clone(),
            token: token(a),
            transition: a.transition.clone(),
            time: a.time.clone(),
            metadata: a.metadata.clone(),
        }
    }

    fn token(a: &LifecycleAction) -> Option<String> {
        use secrecy::ExposeSecret;
        a.token.as_ref().map(|t| t.expose_secret().to_string())
    }

    /// The group of a test notification; panics on anything else.
    fn test_group(body: &str) -> Option<String> {
        match parse(body).expect("parses") {
            LifecycleMessage::Test { group } => group,
            other => panic!("expected a test notification, got {other:?}"),
        }
    }

    fn action(body: &str) -> (LifecycleAction, Shape) {
        match parse(body).expect("parses") {
            LifecycleMessage::Action { action, shape } => (action, shape),
            other => panic!("expected an action, got {other:?}"),
        }
    }

    /// A sample with one field of the direct shape replaced.
    fn direct_with(field: &str, value: Value) -> String {
        let mut v: Value = serde_json::from_str(DIRECT).expect("sample is JSON");
        v[field] = value;
        v.to_string()
    }

    fn sns_around(inner: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "d3b5e2f0-5a4b-5c6d-8e9f-0a1b2c3d4e5f",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:asg-lifecycle",
            "Message": inner,
        })
        .to_string()
    }

    #[test]
    fn eventbridge_terminate() {
        let (a, shape) = action(EVENTBRIDGE_TERMINATE);
        assert_eq!(shape, Shape::EventBridge);
        assert_eq!(
            plain(&a),
            Plain {
                instance_id: "i-1234567890abcdef0".into(),
                group: "crawlers-prod".into(),
                hook: "drover-drain".into(),
                token: Some(TOKEN.into()),
                transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
                time: Some("2026-11-23T12:00:00Z".into()),
                metadata: Some(r#"{"team":"crawl","note":"für alle"}"#.into()),
            }
        );
        assert!(a.is_termination());
    }

    #[test]
    fn launch_parses_but_is_no_termination() {
        let (a, shape) = action(EVENTBRIDGE_LAUNCH);
        assert_eq!(shape, Shape::EventBridge);
        assert_eq!(a.transition, "autoscaling:EC2_INSTANCE_LAUNCHING");
        assert_eq!(a.instance_id, "i-0abcdef1234567890");
        assert_eq!(a.metadata, None);
        assert!(!a.is_termination());
    }

    #[test]
    fn direct() {
        let (a, shape) = action(DIRECT);
        assert_eq!(shape, Shape::Direct);
        assert_eq!(
            plain(&a),
            Plain {
                instance_id: "i-0123abcd".into(),
                group: "my-asg".into(),
                hook: "drain".into(),
                token: Some(TOKEN.into()),
                transition: TERMINATING_TRANSITION.into(),
                time: Some("2026-11-23T12:00:00.000Z".into()),
                metadata: Some("rack=7".into()),
            }
        );
        assert!(a.is_termination());
    }

    #[test]
    fn sns_envelope() {
        let (a, shape) = action(SNS_DIRECT);
        assert_eq!(shape, Shape::Sns);
        assert_eq!(a.instance_id, "i-1234567890abcdef0");
        assert_eq!(a.group, "my-asg");
        assert_eq!(a.hook, "drain");
        assert_eq!(token(&a).as_deref(), Some(TOKEN));
        assert_eq!(a.time.as_deref(), Some("2026-11-23T12:00:00.000Z"));
        assert_eq!(a.metadata, None);
        assert!(a.is_termination());
    }

    #[test]
    fn eventbridge_inside_sns_is_accepted() {
        let (a, shape) = action(&sns_around(EVENTBRIDGE_TERMINATE));
        assert_eq!(shape, Shape::Sns);
        assert_eq!(a.instance_id, "i-1234567890abcdef0");
    }

    #[test]
    fn missing_token_is_none() {
        let body = direct_with("LifecycleActionToken", Value::Null);
        assert_eq!(token(&action(&body).0), None);
        let mut v: Value = serde_json::from_str(DIRECT).expect("sample is JSON");
        v.as_object_mut()
            .expect("object")
            .remove("LifecycleActionToken");
        assert_eq!(token(&action(&v.to_string()).0), None);
    }

    #[test]
    fn test_notifications() {
        assert_eq!(test_group(TEST_DIRECT).as_deref(), Some("my-asg"));
        assert_eq!(test_group(SNS_TEST).as_deref(), Some("my-asg"));
        let no_group = r#"{"Event":"autoscaling:TEST_NOTIFICATION","AutoScalingGroupName":7}"#;
        assert_eq!(test_group(no_group), None);
    }

    #[test]
    fn not_lifecycle_messages() {
        let bodies = [
            "{}".to_string(),
            "[]".to_string(),
            "null".to_string(),
            r#""str""#.to_string(),
            "42".to_string(),
            r#"{"Type":"SubscriptionConfirmation","Message":"You have chosen to subscribe","SubscribeURL":"https://sns.example/"}"#.to_string(),
            r#"{"Event":"autoscaling:EC2_INSTANCE_TERMINATE","EC2InstanceId":"i-0123abcd","AutoScalingGroupName":"my-asg"}"#.to_string(),
            EVENTBRIDGE_TERMINATE.replace("EC2 Instance-terminate Lifecycle Action", "EC2 Instance Terminate Successful"),
            EVENTBRIDGE_TERMINATE.replace("\"aws.autoscaling\"", "\"my.app\""),
            sns_around("{}"),
        ];
        for body in &bodies {
            match parse(body) {
                Err(MessageError::NotALifecycleMessage { .. }) => {}
                other => panic!("{body}: expected NotALifecycleMessage, got {other:?}"),
            }
        }
    }

    #[test]
    fn not_json() {
        for body in ["", "   ", "{", "{\"a\":", "i-0123abcd", "\u{feff}{}"] {
            assert!(
                matches!(parse(body), Err(MessageError::NotJson { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn missing_fields() {
        let mut v: Value = serde_json::from_str(DIRECT).expect("sample is JSON");
        v.as_object_mut().expect("object").remove("EC2InstanceId");
        match parse(&v.to_string()) {
            Err(MessageError::MissingField { field, shape }) => {
                assert_eq!((field, shape), ("EC2InstanceId", "direct"));
            }
            other => panic!("expected MissingField, got {other:?}"),
        }
        let body = EVENTBRIDGE_TERMINATE.replace("\"EC2InstanceId\"", "\"Ec2InstanceId\"");
        assert!(matches!(
            parse(&body),
            Err(MessageError::MissingField {
                field: "EC2InstanceId",
                shape: "EventBridge"
            })
        ));
        let no_detail = r#"{"detail-type":"EC2 Instance-terminate Lifecycle Action","source":"aws.autoscaling"}"#;
        assert!(matches!(
            parse(no_detail),
            Err(MessageError::MissingField {
                field: "detail",
                ..
            })
        ));
        let sns_no_message = r#"{"Type":"Notification","TopicArn":"arn:aws:sns:us-east-1:1:t"}"#;
        assert!(matches!(
            parse(sns_no_message),
            Err(MessageError::MissingField {
                field: "Message",
                shape: "SNS"
            })
        ));
        let inner = direct_with("LifecycleHookName", Value::Null);
        assert!(matches!(
            parse(&sns_around(&inner)),
            Err(MessageError::MissingField {
                field: "LifecycleHookName",
                shape: "SNS-wrapped direct"
            })
        ));
    }

    fn assert_bad(body: &str, expected: &str) {
        match parse(body) {
            Err(MessageError::BadField { field, .. }) => assert_eq!(field, expected, "{body}"),
            other => panic!("{body}: expected BadField {expected}, got {other:?}"),
        }
    }

    #[test]
    fn bad_instance_ids() {
        for id in [
            "../../etc",
            "i-",
            "i-0123abc",
            "i-0123456789abcdef01",
            "i-0123ABCD",
            "i-0123abcg",
            " i-0123abcd",
            "i-0123abcd\n",
            "I-0123abcd",
            "i-０１２３abcd",
        ] {
            assert_bad(
                &direct_with("EC2InstanceId", Value::from(id)),
                "EC2InstanceId",
            );
        }
        assert_bad(
            &direct_with("EC2InstanceId", Value::from(123)),
            "EC2InstanceId",
        );
        for id in ["i-0123abcd", "i-0123456789abcdef0", "i-0123456789ab"] {
            assert_eq!(
                action(&direct_with("EC2InstanceId", Value::from(id)))
                    .0
                    .instance_id,
                id
            );
        }
    }

    #[test]
    fn bad_names_and_types() {
        assert_bad(
            &direct_with("AutoScalingGroupName", Value::from(17)),
            "AutoScalingGroupName",
        );
        assert_bad(
            &direct_with("AutoScalingGroupName", Value::from("")),
            "AutoScalingGroupName",
        );
        assert_bad(
            &direct_with("AutoScalingGroupName", Value::from("a".repeat(256))),
            "AutoScalingGroupName",
        );
        assert_bad(
            &direct_with("AutoScalingGroupName", Value::from("my-asg\nFAKE LOG LINE")),
            "AutoScalingGroupName",
        );
        let long_ok = "g".repeat(255);
        assert_eq!(
            action(&direct_with(
                "AutoScalingGroupName",
                Value::from(long_ok.clone())
            ))
            .0
            .group,
            long_ok
        );
        assert_bad(
            &direct_with("LifecycleHookName", serde_json::json!(["drain"])),
            "LifecycleHookName",
        );
        assert_bad(
            &direct_with("LifecycleTransition", serde_json::json!({})),
            "LifecycleTransition",
        );
        assert_bad(
            &direct_with("LifecycleActionToken", Value::from(true)),
            "LifecycleActionToken",
        );
        assert_bad(&direct_with("Time", Value::from(1_700_000_000)), "Time");
        assert_bad(
            &direct_with("NotificationMetadata", Value::from("m".repeat(1024))),
            "NotificationMetadata",
        );
        let detail_array = EVENTBRIDGE_TERMINATE
            .replace("\"detail\": {", "\"detail\": [{")
            .replace("}\n}", "}]\n}");
        assert_bad(&detail_array, "detail");
    }

    #[test]
    fn bad_token_never_shown() {
        let secret = "s3cr3t-token-value";
        let cases = [
            format!("{secret}!"),
            format!("{secret} "),
            format!("{secret}{}", "x".repeat(200)),
            String::new(),
        ];
        for token in cases {
            let body = direct_with("LifecycleActionToken", Value::from(token.clone()));
            let err = parse(&body).expect_err("bad token refused");
            assert!(matches!(
                err,
                MessageError::BadField {
                    field: "LifecycleActionToken",
                    ..
                }
            ));
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(secret), "{shown}");
        }
        // A good token stays out of errors about other fields and out of Debug.
        let body = direct_with("EC2InstanceId", Value::from("../../etc"));
        let err = parse(&body).expect_err("bad id");
        assert!(!format!("{err} {err:?}").contains(TOKEN));
        let (a, _) = action(DIRECT);
        assert!(!format!("{a:?}").contains(TOKEN));
        assert!(format!("{a:?}").contains("REDACTED"));
    }

    #[test]
    fn sns_with_bad_message() {
        let not_json = sns_around("hello, this is not JSON");
        assert_bad(&not_json, "Message");
        let number = r#"{"Type":"Notification","Message":42}"#;
        assert_bad(number, "Message");
        let object = r#"{"Type":"Notification","Message":{"EC2InstanceId":"i-0123abcd"}}"#;
        assert_bad(object, "Message");
        let array = sns_around("[1,2,3]");
        assert!(matches!(
            parse(&array),
            Err(MessageError::NotALifecycleMessage { .. })
        ));
    }

    #[test]
    fn nested_sns_refused() {
        let twice = sns_around(SNS_DIRECT);
        assert!(matches!(parse(&twice), Err(MessageError::NestedEnvelope)));
        let thrice = sns_around(&twice);
        assert!(matches!(parse(&thrice), Err(MessageError::NestedEnvelope)));
    }

    #[test]
    fn too_large() {
        let padding = "x".repeat(300 * 1024);
        let body = DIRECT.replace("\"rack=7\"", &format!("\"{padding}\""));
        match parse(&body) {
            Err(MessageError::TooLarge { size, max }) => {
                assert_eq!(max, MAX_BODY_BYTES);
                assert_eq!(size, body.len());
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn hostile_json_does_not_panic() {
        let deep_arrays = "[".repeat(100_000);
        let deep_objects = "{\"a\":".repeat(50_000) + "1" + &"}".repeat(50_000);
        let in_sns = sns_around(&"[".repeat(200_000));
        let bodies = [
            deep_arrays.as_str(),
            deep_objects.as_str(),
            in_sns.as_str(),
            "1e999999",
            "-0",
            r#"{"detail-type":null}"#,
            r#"{"detail-type":"EC2 Instance-terminate Lifecycle Action","detail":"x"}"#,
            r#"{"detail-type":"EC2 Instance-terminate Lifecycle Action","source":1,"detail":{}}"#,
            r#"{"Type":null}"#,
            r#"{"Type":"Notification","Message":null}"#,
            r#"{"LifecycleTransition":null}"#,
            r#"{"EC2InstanceId":"i-0123abcd","LifecycleActionToken":{}}"#,
            r#"{"a":"\ud800"}"#,
            "\u{0}",
        ];
        for body in bodies {
            assert!(parse(body).is_err(), "{}", shorten(body, 60));
        }
    }

    #[test]
    fn every_prefix_of_every_sample() {
        for sample in SAMPLES {
            assert!(parse(sample).is_ok(), "{sample}");
            for i in (0..sample.len()).filter(|i| sample.is_char_boundary(*i)) {
                // Each sample ends in `}`, so every proper prefix is cut JSON.
                assert!(parse(&sample[..i]).is_err(), "prefix {i} of {sample}");
                let _ = excerpt_for_log(&sample[..i], 80);
            }
        }
    }

    #[test]
    fn excerpt_redacts_tokens() {
        for body in [DIRECT, EVENTBRIDGE_TERMINATE, SNS_DIRECT] {
            let out = excerpt_for_log(body, 100_000);
            assert!(!out.contains(TOKEN), "{out}");
            assert!(!out.contains("87654321"), "{out}");
            assert!(out.contains("<redacted>"), "{out}");
            assert!(!out.contains('\n') && !out.contains('\r'), "{out}");
            assert!(out.contains("i-"), "the rest is kept: {out}");
        }
        // Cut bodies, odd spacing and tokens that are not tokens are redacted too.
        let cut = &DIRECT[..DIRECT.find(TOKEN).expect("token in sample") + 10];
        assert!(!excerpt_for_log(cut, 1000).contains("87654321"));
        let spaced = "{\"LifecycleActionToken\" :\n\t\"not a real-token!\"}";
        assert_eq!(
            excerpt_for_log(spaced, 1000),
            "{\"LifecycleActionToken\" : \"<redacted>\"}"
        );
        let null = r#"{"LifecycleActionToken":null,"x":"y"}"#;
        assert_eq!(excerpt_for_log(null, 1000), null);
        let empty = r#"{"LifecycleActionToken":"","x":"y"}"#;
        assert_eq!(excerpt_for_log(empty, 1000), empty);
        let mention = "see LifecycleActionToken docs";
        assert_eq!(excerpt_for_log(mention, 1000), mention);
    }

    /// Found by fuzzing (fuzz/ target lifecycle_message): an envelope inside an envelope,
    /// which `parse` refuses and the caller then logs, escapes the key's quotes twice, and the
    /// token was left in the log line; so was one whose spaces were written as escapes.
    #[test]
    fn excerpt_redacts_tokens_escaped_more_than_once() {
        let twice = sns_around(&sns_around(DIRECT));
        assert!(matches!(parse(&twice), Err(MessageError::NestedEnvelope)));
        let thrice = sns_around(&twice);
        for body in [twice, thrice] {
            let out = excerpt_for_log(&body, 100_000);
            assert!(!out.contains("87654321"), "{out}");
            assert!(out.contains("<redacted>"), "{out}");
        }
        let escaped_spaces = r#"{"Type":"Notification","Message":"{\"LifecycleActionToken\"\n :\t\"87654321-4321\"}"}"#;
        let out = excerpt_for_log(escaped_spaces, 1000);
        assert!(!out.contains("87654321"), "{out}");
    }

    #[test]
    fn excerpt_is_short_and_one_line() {
        let out = excerpt_for_log(EVENTBRIDGE_TERMINATE, 60);
        assert_eq!(out.chars().count(), 60);
        assert!(out.ends_with('…'));
        assert!(!out.contains('\n'));
        assert!(!out.contains("  "), "runs of spaces collapse: {out}");
        assert_eq!(excerpt_for_log("{}", 60), "{}");
        assert_eq!(excerpt_for_log("abcdef", 0), "");
        assert_eq!(excerpt_for_log("abcdef", 1), "…");
        let hostile = "a\u{0}b\u{1b}[31mc\r\nd\u{2028}e\u{202e}f\u{85}g";
        let out = excerpt_for_log(hostile, 100);
        assert!(
            out.chars().all(|c| !crate::text::breaks_log_line(c)),
            "{out:?}"
        );
        assert_eq!(out, "a b [31mc d e f g");
        let wide = "ü".repeat(50);
        assert_eq!(excerpt_for_log(&wide, 10).chars().count(), 10);
    }
}
