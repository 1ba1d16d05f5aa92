//! A PagerDuty Events API v2 stand-in, plus a receiver for generic JSON webhooks.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;
use serde_json::{json, Value};

use crate::http;

/// The Events API v2 path, for [`http::Match::path`].
pub const ENQUEUE: &str = "/v2/enqueue";
const WEBHOOK: &str = "/webhook";
const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];
const ACTIONS: &[&str] = &["trigger", "acknowledge", "resolve"];

#[derive(Default)]
struct Inner {
    events: Vec<Value>,
    webhooks: Vec<Value>,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running PagerDuty / webhook stand-in; stops when dropped.
pub struct PagerServer {
    shared: Arc<Shared>,
    faults: http::Faults,
    server: http::Server,
}

impl PagerServer {
    pub async fn start() -> PagerServer {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
        });
        let faults = http::Faults::default();
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = http::Server::start(faults.serve(router, render))
            .await
            .expect("bind a loopback port for the PagerDuty stand-in");
        PagerServer {
            shared,
            faults,
            server,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// What `pager.pagerduty_url` is set to.
    pub fn enqueue_url(&self) -> String {
        format!("{}{ENQUEUE}", self.url())
    }

    /// Takes any JSON POST and answers 200.
    pub fn webhook_url(&self) -> String {
        format!("{}{WEBHOOK}", self.url())
    }

    /// Accepted PagerDuty events, as sent, in order.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// Webhook bodies received, in order.
    pub fn webhooks(&self) -> Vec<Value> {
        self.shared.lock().webhooks.clone()
    }

    /// Injected faults, latency and the request log (see [`http::fault_api!`]): an
    /// injected fault answers with PagerDuty's body for its status (429: the throttle
    /// body). `Match::path(ENQUEUE)` leaves the webhook alone.
    pub fn faults(&self) -> &http::Faults {
        &self.faults
    }
}

http::fault_api!(PagerServer);

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let (status, reply) = match (uri.path(), &method) {
        (ENQUEUE, &Method::POST) => enqueue(&shared, &body),
        (WEBHOOK, &Method::POST) => webhook(&shared, &body),
        (ENQUEUE | WEBHOOK, _) => (405, json!({"status": "method not allowed"})),
        _ => (404, json!({"status": "not found"})),
    };
    reply_json(status, reply)
}

fn reply_json(status: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

/// An injected fault, as PagerDuty answers it.
fn render(fault: http::Fault, _req: &http::Incoming<'_>) -> Response {
    let status = fault.status();
    reply_json(status, failure_body(status))
}

fn enqueue(shared: &Shared, body: &[u8]) -> (u16, Value) {
    let event: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return (400, invalid(vec!["Event object is not valid JSON".into()])),
    };
    let errors = validate(&event);
    if !errors.is_empty() {
        return (400, invalid(errors));
    }
    let dedup_key = event
        .get("dedup_key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .unwrap_or_else(random_key);
    shared.lock().events.push(event);
    (
        202,
        json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    )
}

fn webhook(shared: &Shared, body: &[u8]) -> (u16, Value) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            shared.lock().webhooks.push(v);
            (200, json!({"ok": true}))
        }
        Err(_) => (400, json!({"ok": false, "error": "body is not JSON"})),
    }
}

/// Every problem with an event, in PagerDuty's words; empty when it is valid.
fn validate(event: &Value) -> Vec<String> {
    let Some(obj) = event.as_object() else {
        return vec!["Event object must be a JSON object".into()];
    };
    let mut errors = Vec::new();
    match text(obj.get("routing_key")) {
        None => errors.push("'routing_key' is missing or blank".into()),
        Some(k) if k.chars().count() != 32 => {
            errors.push("'routing_key' must be 32 characters long".into())
        }
        Some(_) => {}
    }
    let action = text(obj.get("event_action"));
    match action {
        None => errors.push("'event_action' is missing or blank".into()),
        Some(a) if !ACTIONS.contains(&a) => errors.push(
            "'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')"
                .into(),
        ),
        Some(_) => {}
    }
    match obj.get("dedup_key") {
        None | Some(Value::Null) => {
            // Only a trigger may leave it out: PagerDuty makes one up.
            if matches!(action, Some("acknowledge" | "resolve")) {
                errors.push("'dedup_key' is missing or blank".into());
            }
        }
        Some(Value::String(k)) if k.chars().count() > 255 => {
            errors.push("'dedup_key' must be at most 255 characters long".into())
        }
        Some(Value::String(_)) => {}
        Some(_) => errors.push("'dedup_key' must be a string".into()),
    }
    if action == Some("trigger") {
        let payload = obj.get("payload").and_then(Value::as_object);
        let Some(payload) = payload else {
            errors.push("'payload' is missing or blank".into());
            return errors;
        };
        match text(payload.get("summary")) {
            None => errors.push("'payload.summary' is missing or blank".into()),
            Some(s) if s.chars().count() > 1024 => {
                errors.push("'payload.summary' must be at most 1024 characters long".into())
            }
            Some(_) => {}
        }
        if text(payload.get("source")).is_none() {
            errors.push("'payload.source' is missing or blank".into());
        }
        match text(payload.get("severity")) {
            None => errors.push("'payload.severity' is missing or blank".into()),
            Some(s) if !SEVERITIES.contains(&s) => errors.push(
                "'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')"
                    .into(),
            ),
            Some(_) => {}
        }
    }
    errors
}

/// A non-blank string field.
fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

fn invalid(errors: Vec<String>) -> Value {
    json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors})
}

fn failure_body(status: u16) -> Value {
    match status {
        429 => json!({
            "status": "throttle event",
            "message": "Requests for this service are arriving too quickly.  Please retry later."
        }),
        400 => invalid(vec!["Injected failure".into()]),
        _ => json!({"status": "error", "message": "Internal server error"}),
    }
}

/// 32 hex characters, the shape of the keys PagerDuty generates.
fn random_key() -> String {
    let b: [u8; 16] = rand::rng().random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Fault, Match};

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn trigger() -> Value {
        json!({
            "routing_key": KEY,
            "event_action": "trigger",
            "dedup_key": "drover/i-0a1b2c3d4e5f60718/deregister",
            "payload": {
                "summary": "drover could not take i-0a1b2c3d4e5f60718 out of Rancher",
                "source": "i-0a1b2c3d4e5f60718",
                "severity": "error",
                "custom_details": {"step": "deactivate"}
            }
        })
    }

    async fn post(url: &str, body: &Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(url)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON answer"))
    }

    #[tokio::test]
    async fn valid_trigger_and_resolve_are_accepted() {
        let pager = PagerServer::start().await;
        let (status, body) = post(&pager.enqueue_url(), &trigger()).await;
        assert_eq!(status, 202);
        assert_eq!(body["status"], "success");
        assert_eq!(body["message"], "Event processed");
        assert_eq!(body["dedup_key"], "drover/i-0a1b2c3d4e5f60718/deregister");

        let mut no_key = trigger();
        no_key.as_object_mut().map(|o| o.remove("dedup_key"));
        let (status, body) = post(&pager.enqueue_url(), &no_key).await;
        assert_eq!(status, 202);
        assert_eq!(body["dedup_key"].as_str().map(str::len), Some(32));

        let resolve = json!({"routing_key": KEY, "event_action": "resolve", "dedup_key": "k"});
        assert_eq!(post(&pager.enqueue_url(), &resolve).await.0, 202);
        let events = pager.events();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2]["event_action"], "resolve");
        assert_eq!(
            pager
                .requests()
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>(),
            vec![202, 202, 202]
        );
    }

    #[tokio::test]
    async fn invalid_events_are_400_with_reasons() {
        let pager = PagerServer::start().await;
        let url = pager.enqueue_url();
        let cases: Vec<(Value, &str)> = vec![
            (
                {
                    let mut e = trigger();
                    e["routing_key"] = json!("short");
                    e
                },
                "'routing_key'",
            ),
            (
                {
                    let mut e = trigger();
                    e["event_action"] = json!("escalate");
                    e
                },
                "'event_action'",
            ),
            (
                {
                    let mut e = trigger();
                    e["dedup_key"] = json!("k".repeat(256));
                    e
                },
                "'dedup_key'",
            ),
            (
                {
                    let mut e = trigger();
                    e["payload"]["summary"] = json!("s".repeat(1025));
                    e
                },
                "'payload.summary'",
            ),
            (
                {
                    let mut e = trigger();
                    e["payload"].as_object_mut().map(|p| p.remove("source"));
                    e
                },
                "'payload.source'",
            ),
            (
                {
                    let mut e = trigger();
                    e["payload"]["severity"] = json!("fatal");
                    e
                },
                "'payload.severity'",
            ),
            (
                json!({"routing_key": KEY, "event_action": "resolve"}),
                "'dedup_key'",
            ),
        ];
        for (event, mentions) in cases {
            let (status, body) = post(&url, &event).await;
            assert_eq!(status, 400, "{event}");
            assert_eq!(body["status"], "invalid event");
            assert_eq!(body["message"], "Event object is invalid");
            let errors = body["errors"].to_string();
            assert!(errors.contains(mentions), "{errors} for {event}");
        }
        let resp = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 400);
        assert!(pager.events().is_empty());
    }

    #[tokio::test]
    async fn throttling_then_accepted() {
        let pager = PagerServer::start().await;
        pager.fail(Match::path(ENQUEUE), Fault::Throttling, 1);
        pager.fail(Match::path(ENQUEUE), Fault::Status(429), 1);
        // The webhook is not PagerDuty's API: untouched by a fault on the enqueue path.
        let (status, _) = post(&pager.webhook_url(), &json!({"text": "hi"})).await;
        assert_eq!(status, 200);
        for _ in 0..2 {
            let (status, body) = post(&pager.enqueue_url(), &trigger()).await;
            assert_eq!(status, 429);
            assert_eq!(body["status"], "throttle event");
            assert_eq!(
                body["message"],
                "Requests for this service are arriving too quickly.  Please retry later."
            );
        }
        assert_eq!(post(&pager.enqueue_url(), &trigger()).await.0, 202);
        assert_eq!(pager.events().len(), 1);
        let statuses: Vec<u16> = pager.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 429, 429, 202]);
    }

    #[tokio::test]
    async fn webhook_takes_any_json() {
        let pager = PagerServer::start().await;
        let (status, _) = post(&pager.webhook_url(), &json!({"text": "hello"})).await;
        assert_eq!(status, 200);
        let (status, _) = post(&pager.webhook_url(), &json!([1, 2])).await;
        assert_eq!(status, 200);
        assert_eq!(
            pager.webhooks(),
            vec![json!({"text": "hello"}), json!([1, 2])]
        );
        assert!(pager.events().is_empty());
        assert_eq!(pager.requests()[0].path, "/webhook");
    }
}
