//! An Auto Scaling stand-in speaking awsQuery: lifecycle hooks on instance termination.
//!
//! Lifecycle states are computed lazily from `Instant`s on every request and every handle
//! call, so transitions happen on their own, after real time has passed, and deterministically.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;

use crate::http;

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// How long an instance shows `Terminating:Proceed` before `Terminated`.
const PROCEED_FOR: Duration = Duration::from_secs(1);
/// The cap on the whole wait, heartbeats or not: 48 hours...
const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// ...or 100 heartbeat timeouts, whichever is smaller.
const GLOBAL_FACTOR: u32 = 100;

/// A lifecycle hook of a group. Timeouts under the real minimum of 30 s are allowed, so
/// that tests can watch a timeout happen.
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub name: String,
    /// E.g. `autoscaling:EC2_INSTANCE_TERMINATING`.
    pub transition: String,
    pub heartbeat_timeout: Duration,
    /// `ABANDON` or `CONTINUE`.
    pub default_result: String,
}

/// A lifecycle action that ended, by a `CompleteLifecycleAction` call or by timing out.
#[derive(Debug, Clone)]
pub struct Completion {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub result: String,
    /// Completed by `LifecycleActionToken` (else by `InstanceId`, or by timeout).
    pub by_token: bool,
    /// The hook timed out and its `DefaultResult` was applied.
    pub by_timeout: bool,
    /// Since the stand-in started.
    pub at: Duration,
}

/// An accepted `RecordLifecycleActionHeartbeat`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    /// Since the stand-in started.
    pub at: Duration,
}

/// A `CompleteLifecycleAction` the service refused, with the named instance's lifecycle
/// state at that moment: a call before `Terminating:Wait` is a client's mistake.
#[derive(Debug, Clone)]
pub struct RefusedCompletion {
    /// From `InstanceId`, else from the token; empty when neither names an instance.
    pub instance_id: String,
    pub state: String,
    pub message: String,
}

/// The terminating hook's action, as captured when termination began.
#[derive(Debug, Clone)]
struct Action {
    hook: String,
    heartbeat_timeout: Duration,
    default_result: String,
    token: String,
    last_heartbeat: Option<Instant>,
    /// When the action ended (completed or timed out).
    done: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Termination {
    began: Instant,
    lag: Duration,
    /// `None`: the group has no terminating hook, so it goes straight on.
    action: Option<Action>,
}

impl Termination {
    /// When the instance reaches `Terminating:Wait` (or `Terminating:Proceed` without a hook).
    fn wait_start(&self) -> Instant {
        self.began + self.lag
    }
}

impl Action {
    /// When the action times out unless completed or heartbeated before: a heartbeat
    /// restarts the heartbeat timeout, but never past the global cap.
    fn deadline(&self, wait_start: Instant) -> Instant {
        let global = (self.heartbeat_timeout * GLOBAL_FACTOR).min(MAX_GLOBAL_TIMEOUT);
        let beat = self.last_heartbeat.unwrap_or(wait_start) + self.heartbeat_timeout;
        beat.min(wait_start + global)
    }
}

#[derive(Debug, Clone)]
struct Instance {
    group: String,
    instance_type: String,
    az: String,
    termination: Option<Termination>,
}

impl Instance {
    fn state(&self, now: Instant) -> &'static str {
        let Some(t) = &self.termination else {
            return "InService";
        };
        if now < t.wait_start() {
            return "Terminating";
        }
        let proceed_from = match &t.action {
            None => t.wait_start(),
            Some(Action { done: None, .. }) => return "Terminating:Wait",
            Some(Action { done: Some(at), .. }) => *at,
        };
        if now < proceed_from + PROCEED_FOR {
            "Terminating:Proceed"
        } else {
            "Terminated"
        }
    }
}

struct Inner {
    started: Instant,
    /// Group name -> hooks, in the order added.
    groups: HashMap<String, Vec<HookSpec>>,
    /// Instance id -> instance, plus the ids in the order added for stable listings.
    instances: HashMap<String, Instance>,
    order: Vec<String>,
    completions: Vec<Completion>,
    refused: Vec<RefusedCompletion>,
    heartbeats: Vec<Heartbeat>,
}

impl Inner {
    /// Applies the timeouts that have fallen due by `now`, in deadline order.
    fn advance(&mut self, now: Instant) {
        let mut due = Vec::new();
        for id in &self.order {
            let Some(inst) = self.instances.get_mut(id) else {
                continue;
            };
            let Some(t) = &mut inst.termination else {
                continue;
            };
            let wait_start = t.wait_start();
            let Some(action) = &mut t.action else {
                continue;
            };
            if action.done.is_some() || now < wait_start {
                continue;
            }
            let deadline = action.deadline(wait_start);
            if now >= deadline {
                action.done = Some(deadline);
                due.push((
                    deadline,
                    Completion {
                        group: inst.group.clone(),
                        hook: action.hook.clone(),
                        instance_id: id.clone(),
                        result: action.default_result.clone(),
                        by_token: false,
                        by_timeout: true,
                        at: deadline.saturating_duration_since(self.started),
                    },
                ));
            }
        }
        due.sort_by_key(|(deadline, _)| *deadline);
        self.completions.extend(due.into_iter().map(|(_, c)| c));
    }

    fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, with every timeout due by now applied.
    fn now(&self) -> (MutexGuard<'_, Inner>, Instant) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.advance(now);
        (inner, now)
    }
}

/// A running Auto Scaling stand-in; stops when dropped.
pub struct AutoScalingServer {
    shared: Arc<Shared>,
    faults: http::Faults,
    server: http::Server,
}

impl AutoScalingServer {
    pub async fn start() -> AutoScalingServer {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                started: Instant::now(),
                groups: HashMap::new(),
                instances: HashMap::new(),
                order: Vec::new(),
                completions: Vec::new(),
                refused: Vec::new(),
                heartbeats: Vec::new(),
            }),
        });
        let faults = http::Faults::default();
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = http::Server::start(faults.serve(router, render))
            .await
            .expect("bind a loopback port for the Auto Scaling stand-in");
        AutoScalingServer {
            shared,
            faults,
            server,
        }
    }

    /// What `AWS_ENDPOINT_URL_AUTO_SCALING` is set to.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Adds a group (or replaces its hooks).
    pub fn add_group(&self, name: &str, hooks: Vec<HookSpec>) {
        self.shared.lock().groups.insert(name.to_string(), hooks);
    }

    /// Adds an instance `InService` in `group`.
    pub fn add_instance(&self, group: &str, instance_id: &str, instance_type: &str, az: &str) {
        let mut inner = self.shared.lock();
        if !inner.instances.contains_key(instance_id) {
            inner.order.push(instance_id.to_string());
        }
        inner.instances.insert(
            instance_id.to_string(),
            Instance {
                group: group.to_string(),
                instance_type: instance_type.to_string(),
                az: az.to_string(),
                termination: None,
            },
        );
    }

    /// The group decides to terminate the instance: `Terminating` now, `Terminating:Wait`
    /// after `lag`. Returns the token the lifecycle action will carry; `None` when the group
    /// has no terminating hook (the instance then goes straight on to `Terminating:Proceed`)
    /// or the instance is unknown. Calling it again changes nothing and gives the same token.
    pub fn begin_termination(&self, instance_id: &str, lag: Duration) -> Option<String> {
        let (mut inner, now) = self.shared.now();
        let hook = {
            let inst = inner.instances.get(instance_id)?;
            if let Some(t) = &inst.termination {
                return t.action.as_ref().map(|a| a.token.clone());
            }
            inner
                .groups
                .get(&inst.group)
                .and_then(|hooks| hooks.iter().find(|h| h.transition == TERMINATING))
                .cloned()
        };
        let action = hook.map(|h| Action {
            hook: h.name,
            heartbeat_timeout: h.heartbeat_timeout,
            default_result: h.default_result,
            token: uuid(),
            last_heartbeat: None,
            done: None,
        });
        let token = action.as_ref().map(|a| a.token.clone());
        if let Some(inst) = inner.instances.get_mut(instance_id) {
            inst.termination = Some(Termination {
                began: now,
                lag,
                action,
            });
        }
        token
    }

    /// `InService`, `Terminating`, `Terminating:Wait`, `Terminating:Proceed`, `Terminated`;
    /// `None` for an instance never added.
    pub fn lifecycle_state(&self, instance_id: &str) -> Option<String> {
        let (inner, now) = self.shared.now();
        inner
            .instances
            .get(instance_id)
            .map(|i| i.state(now).to_string())
    }

    /// Completions by call and by timeout, in the order they happened.
    pub fn completions(&self) -> Vec<Completion> {
        self.shared.now().0.completions.clone()
    }

    /// `CompleteLifecycleAction` calls refused (injected faults are not counted).
    pub fn refused_completions(&self) -> Vec<RefusedCompletion> {
        self.shared.now().0.refused.clone()
    }

    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.shared.now().0.heartbeats.clone()
    }

    /// Injected faults, latency and the request log, each request with its `Action` (see
    /// [`http::fault_api!`]): an injected fault fails the call without effect, with the
    /// service's awsQuery error.
    pub fn faults(&self) -> &http::Faults {
        &self.faults
    }
}

http::fault_api!(AutoScalingServer);

/// The request's parameters, query string and form body together.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Non-empty value of `key`.
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// `Prefix.member.1`, `Prefix.member.2`, ... in index order.
    fn members(&self, prefix: &str) -> Vec<String> {
        let head = format!("{prefix}.member.");
        let mut found: Vec<(u32, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&head)?.parse().ok()?, v.clone())))
            .collect();
        found.sort_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, v)| v).collect()
    }
}

/// An awsQuery error answer.
struct ApiError {
    status: u16,
    kind: &'static str,
    code: String,
    message: String,
}

impl ApiError {
    fn validation(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "Sender",
            code: "ValidationError".into(),
            message: message.into(),
        }
    }

    /// The service's answer to a required parameter left out.
    fn missing(param: &str) -> ApiError {
        let mut chars = param.chars();
        let camel = match chars.next() {
            Some(c) => c.to_lowercase().chain(chars).collect::<String>(),
            None => String::new(),
        };
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{camel}' failed to satisfy constraint: Member must not be null"
        ))
    }

    /// An injected fault, as the service answers it.
    fn fault(fault: http::Fault, params: &Params) -> ApiError {
        match fault {
            http::Fault::Throttling => ApiError {
                status: 400,
                kind: "Sender",
                code: "Throttling".into(),
                message: "Rate exceeded".into(),
            },
            http::Fault::Status(503) => ApiError {
                status: 503,
                kind: "Receiver",
                code: "ServiceUnavailable".into(),
                message: "Service is unavailable. Please try again later.".into(),
            },
            http::Fault::Status(500) => ApiError {
                status: 500,
                kind: "Receiver",
                code: "InternalFailure".into(),
                message: "The request processing has failed because of an unknown error, exception or failure.".into(),
            },
            http::Fault::Status(status) => {
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error");
                ApiError {
                    status,
                    kind: if status < 500 { "Sender" } else { "Receiver" },
                    code: reason.split_whitespace().collect(),
                    message: reason.into(),
                }
            }
            http::Fault::ValidationError => ApiError::validation(no_active_action(
                params.value("LifecycleActionToken"),
                params.value("InstanceId").unwrap_or(""),
            )),
        }
    }

    fn into_response(self, request_id: &str) -> Response {
        let body = format!(
            "<ErrorResponse xmlns=\"{NS}\">\n  <Error>\n    <Type>{}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
            self.kind,
            self.code,
            esc(&self.message)
        );
        xml(self.status, request_id, body)
    }
}

fn no_active_action(token: Option<&str>, instance_id: &str) -> String {
    match token {
        Some(token) => format!("No active Lifecycle Action found with token {token}"),
        None => format!("No active Lifecycle Action found with instance ID {instance_id}"),
    }
}

/// The request's parameters: the query string, then the form body.
fn params(query: &str, body: &[u8]) -> Result<Params, serde_urlencoded::de::Error> {
    let mut pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query)?;
    pairs.extend(serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)?);
    Ok(Params(pairs))
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let request_id = uuid();
    let result = match params(uri.query().unwrap_or(""), &body) {
        Err(e) => Err(ApiError {
            status: 400,
            kind: "Sender",
            code: "MalformedQueryString".into(),
            message: format!("The query string is malformed: {e}"),
        }),
        Ok(params) => {
            let action = params.get("Action").unwrap_or("").to_string();
            dispatch(&shared, &action, &params, &request_id)
        }
    };
    match result {
        Ok(body) => xml(200, &request_id, body),
        Err(e) => e.into_response(&request_id),
    }
}

/// An injected fault, as the service answers it (awsQuery XML).
fn render(fault: http::Fault, req: &http::Incoming<'_>) -> Response {
    let params = params(req.query, req.body).unwrap_or(Params(Vec::new()));
    ApiError::fault(fault, &params).into_response(&uuid())
}

fn dispatch(
    shared: &Shared,
    action: &str,
    params: &Params,
    request_id: &str,
) -> Result<String, ApiError> {
    let (mut inner, now) = shared.now();
    let result = match action {
        "CompleteLifecycleAction" => match complete(&mut inner, now, params) {
            Ok(()) => Ok(String::new()),
            Err(e) => {
                let refused = refusal(&inner, now, params, &e);
                inner.refused.push(refused);
                Err(e)
            }
        },
        "RecordLifecycleActionHeartbeat" => {
            heartbeat(&mut inner, now, params).map(|()| String::new())
        }
        "DescribeAutoScalingInstances" => describe_instances(&inner, now, params),
        "DescribeLifecycleHooks" => describe_hooks(&inner, params),
        "" => {
            return Err(ApiError {
                status: 400,
                kind: "Sender",
                code: "MissingAction".into(),
                message: "The request must contain the parameter Action.".into(),
            })
        }
        other => {
            return Err(ApiError {
                status: 400,
                kind: "Sender",
                code: "InvalidAction".into(),
                message: format!("Could not find operation {other} for version 2011-01-01"),
            })
        }
    }?;
    Ok(format!(
        "<{action}Response xmlns=\"{NS}\">\n  {}\n  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n",
        if result.is_empty() {
            format!("<{action}Result/>")
        } else {
            format!("<{action}Result>\n{result}  </{action}Result>")
        }
    ))
}

/// The instance whose action for `hook` in `group` is waiting and matches the token or the
/// instance id given; the service's ValidationError otherwise.
fn find_waiting<'a>(
    inner: &'a mut Inner,
    now: Instant,
    params: &Params,
) -> Result<(String, &'a mut Instance, bool), ApiError> {
    let group = params
        .value("AutoScalingGroupName")
        .ok_or_else(|| ApiError::missing("AutoScalingGroupName"))?;
    let hook = params
        .value("LifecycleHookName")
        .ok_or_else(|| ApiError::missing("LifecycleHookName"))?;
    let token = params.value("LifecycleActionToken");
    let instance_id = params.value("InstanceId");
    if token.is_none() && instance_id.is_none() {
        return Err(ApiError::validation(
            "Either the LifecycleActionToken or the InstanceId must be specified",
        ));
    }
    let not_found = || ApiError::validation(no_active_action(token, instance_id.unwrap_or("")));
    let id = match (token, instance_id) {
        (Some(token), given) => {
            let id = inner.order.iter().find(|id| {
                inner.instances.get(*id).is_some_and(|i| {
                    i.termination
                        .as_ref()
                        .and_then(|t| t.action.as_ref())
                        .is_some_and(|a| a.token == token)
                })
            });
            match (id, given) {
                (Some(id), Some(given)) if id != given => return Err(not_found()),
                (Some(id), _) => id.clone(),
                (None, _) => return Err(not_found()),
            }
        }
        (None, Some(id)) => id.to_string(),
        (None, None) => return Err(not_found()),
    };
    let inst = inner.instances.get_mut(&id).ok_or_else(not_found)?;
    let waiting = inst.group == group
        && inst.state(now) == "Terminating:Wait"
        && inst
            .termination
            .as_ref()
            .and_then(|t| t.action.as_ref())
            .is_some_and(|a| a.hook == hook);
    if !waiting {
        return Err(not_found());
    }
    Ok((id, inst, token.is_some()))
}

fn complete(inner: &mut Inner, now: Instant, params: &Params) -> Result<(), ApiError> {
    let result = params
        .value("LifecycleActionResult")
        .ok_or_else(|| ApiError::missing("LifecycleActionResult"))?
        .to_string();
    let (id, inst, by_token) = find_waiting(inner, now, params)?;
    if result != "CONTINUE" && result != "ABANDON" {
        return Err(ApiError::validation(format!(
            "Invalid LifecycleActionResult {result}: must be CONTINUE or ABANDON"
        )));
    }
    let group = inst.group.clone();
    let Some(action) = inst.termination.as_mut().and_then(|t| t.action.as_mut()) else {
        return Err(ApiError::validation(no_active_action(None, &id)));
    };
    action.done = Some(now);
    let completion = Completion {
        group,
        hook: action.hook.clone(),
        instance_id: id,
        result,
        by_token,
        by_timeout: false,
        at: inner.since_start(now),
    };
    inner.completions.push(completion);
    Ok(())
}

fn refusal(inner: &Inner, now: Instant, params: &Params, err: &ApiError) -> RefusedCompletion {
    let by_token = params.value("LifecycleActionToken").and_then(|token| {
        inner.order.iter().find(|id| {
            inner.instances.get(*id).is_some_and(|i| {
                i.termination
                    .as_ref()
                    .and_then(|t| t.action.as_ref())
                    .is_some_and(|a| a.token == token)
            })
        })
    });
    let instance_id = params
        .value("InstanceId")
        .map(str::to_string)
        .or_else(|| by_token.cloned())
        .unwrap_or_default();
    let state = inner
        .instances
        .get(&instance_id)
        .map(|i| i.state(now).to_string())
        .unwrap_or_default();
    RefusedCompletion {
        instance_id,
        state,
        message: format!("{}: {}", err.code, err.message),
    }
}

fn heartbeat(inner: &mut Inner, now: Instant, params: &Params) -> Result<(), ApiError> {
    let (id, inst, _) = find_waiting(inner, now, params)?;
    let group = inst.group.clone();
    let Some(action) = inst.termination.as_mut().and_then(|t| t.action.as_mut()) else {
        return Err(ApiError::validation(no_active_action(None, &id)));
    };
    action.last_heartbeat = Some(now);
    let beat = Heartbeat {
        group,
        hook: action.hook.clone(),
        instance_id: id,
        at: inner.since_start(now),
    };
    inner.heartbeats.push(beat);
    Ok(())
}

fn describe_instances(inner: &Inner, now: Instant, params: &Params) -> Result<String, ApiError> {
    let ids = params.members("InstanceIds");
    if ids.len() > 50 {
        return Err(ApiError::validation(
            "The number of instance ids that may be passed in is limited to 50",
        ));
    }
    let wanted: Vec<&String> = if ids.is_empty() {
        inner.order.iter().collect()
    } else {
        ids.iter().collect()
    };
    let mut members = String::new();
    for id in wanted {
        let Some(inst) = inner.instances.get(id) else {
            continue;
        };
        let state = inst.state(now);
        // A terminated instance has left its group: it is simply absent, like any other
        // instance outside every group.
        if state == "Terminated" {
            continue;
        }
        members.push_str(&format!(
            "      <member>\n        <InstanceId>{}</InstanceId>\n        <InstanceType>{}</InstanceType>\n        <AutoScalingGroupName>{}</AutoScalingGroupName>\n        <AvailabilityZone>{}</AvailabilityZone>\n        <LifecycleState>{state}</LifecycleState>\n        <HealthStatus>HEALTHY</HealthStatus>\n        <ProtectedFromScaleIn>false</ProtectedFromScaleIn>\n      </member>\n",
            esc(id),
            esc(&inst.instance_type),
            esc(&inst.group),
            esc(&inst.az),
        ));
    }
    Ok(format!(
        "    <AutoScalingInstances>\n{members}    </AutoScalingInstances>\n"
    ))
}

fn describe_hooks(inner: &Inner, params: &Params) -> Result<String, ApiError> {
    let group = params
        .value("AutoScalingGroupName")
        .ok_or_else(|| ApiError::missing("AutoScalingGroupName"))?;
    let hooks = inner
        .groups
        .get(group)
        .ok_or_else(|| ApiError::validation(format!("Group {group} not found")))?;
    let names = params.members("LifecycleHookNames");
    let mut members = String::new();
    for hook in hooks
        .iter()
        .filter(|h| names.is_empty() || names.contains(&h.name))
    {
        // Whole seconds, rounded up so that a sub-second test timeout does not read as 0.
        let heartbeat =
            hook.heartbeat_timeout.as_secs() + u64::from(hook.heartbeat_timeout.subsec_nanos() > 0);
        let global = (heartbeat * u64::from(GLOBAL_FACTOR)).min(MAX_GLOBAL_TIMEOUT.as_secs());
        members.push_str(&format!(
            "      <member>\n        <LifecycleHookName>{}</LifecycleHookName>\n        <AutoScalingGroupName>{}</AutoScalingGroupName>\n        <LifecycleTransition>{}</LifecycleTransition>\n        <HeartbeatTimeout>{heartbeat}</HeartbeatTimeout>\n        <GlobalTimeout>{global}</GlobalTimeout>\n        <DefaultResult>{}</DefaultResult>\n      </member>\n",
            esc(&hook.name),
            esc(group),
            esc(&hook.transition),
            esc(&hook.default_result),
        ));
    }
    Ok(format!(
        "    <LifecycleHooks>\n{members}    </LifecycleHooks>\n"
    ))
}

fn xml(status: u16, request_id: &str, body: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [
            ("content-type", "text/xml".to_string()),
            ("x-amzn-requestid", request_id.to_string()),
        ],
        body,
    )
        .into_response()
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A random version-4 UUID, the shape of request ids and lifecycle action tokens.
fn uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        ["8", "9", "a", "b"][usize::from(b[8] & 3)],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The message Auto Scaling sends to the hook's queue when it terminates `instance_id`
/// (the direct SQS shape).
pub fn termination_message(group: &str, hook: &str, instance_id: &str, token: &str) -> String {
    serde_json::json!({
        "Origin": "AutoScalingGroup",
        "Destination": "EC2",
        "LifecycleHookName": hook,
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "AutoScalingGroupName": group,
        "EC2InstanceId": instance_id,
        "LifecycleActionToken": token,
        "AccountId": "123456789012",
        "RequestId": "4e5a7e4d-1b2c-4d3e-9f00-123456789abc",
        "Service": "AWS Auto Scaling",
        "Time": "2026-11-23T12:00:00.000Z"
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Fault, Match};
    use aws_sdk_autoscaling::config::retry::RetryConfig;
    use aws_sdk_autoscaling::config::{Credentials, Region};
    use aws_sdk_autoscaling::error::ProvideErrorMetadata;

    const GROUP: &str = "crawlers";
    const HOOK: &str = "drain";
    const ID: &str = "i-0a1b2c3d4e5f60718";

    fn client(url: &str) -> aws_sdk_autoscaling::Client {
        let conf = aws_sdk_autoscaling::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(Credentials::new("AKID", "secret", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_autoscaling::Client::from_conf(conf)
    }

    async fn bed(heartbeat_timeout: Duration) -> (AutoScalingServer, aws_sdk_autoscaling::Client) {
        let asg = AutoScalingServer::start().await;
        asg.add_group(
            GROUP,
            vec![HookSpec {
                name: HOOK.into(),
                transition: TERMINATING.into(),
                heartbeat_timeout,
                default_result: "ABANDON".into(),
            }],
        );
        asg.add_instance(GROUP, ID, "m5.large", "us-east-1b");
        let client = client(&asg.url());
        (asg, client)
    }

    async fn complete_by_id(
        client: &aws_sdk_autoscaling::Client,
    ) -> Result<
        (),
        aws_sdk_autoscaling::error::SdkError<
            aws_sdk_autoscaling::operation::complete_lifecycle_action::CompleteLifecycleActionError,
        >,
    > {
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .lifecycle_action_result("CONTINUE")
            .instance_id(ID)
            .send()
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn describe_instances_and_hooks() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .instance_ids("i-elsewhere")
            .send()
            .await
            .expect("describe instances");
        let list = out.auto_scaling_instances();
        assert_eq!(list.len(), 1, "an instance outside every group is absent");
        assert_eq!(list[0].instance_id(), Some(ID));
        assert_eq!(list[0].auto_scaling_group_name(), Some(GROUP));
        assert_eq!(list[0].lifecycle_state(), Some("InService"));
        assert_eq!(list[0].health_status(), Some("HEALTHY"));

        let hooks = client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("describe hooks");
        let hooks = hooks.lifecycle_hooks();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].lifecycle_hook_name(), Some(HOOK));
        assert_eq!(hooks[0].heartbeat_timeout(), Some(300));
        assert_eq!(hooks[0].global_timeout(), Some(30000));
        assert_eq!(hooks[0].default_result(), Some("ABANDON"));

        let err = client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name("nope")
            .send()
            .await
            .expect_err("unknown group");
        assert_eq!(err.code(), Some("ValidationError"));

        let actions: Vec<String> = asg.requests().iter().map(|r| r.action.clone()).collect();
        assert_eq!(
            actions,
            vec![
                "DescribeAutoScalingInstances",
                "DescribeLifecycleHooks",
                "DescribeLifecycleHooks"
            ]
        );
        assert_eq!(asg.requests()[2].status, 400);
    }

    #[tokio::test]
    async fn complete_only_while_waiting() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        let err = complete_by_id(&client).await.expect_err("in service");
        assert_eq!(err.code(), Some("ValidationError"));

        let token = asg
            .begin_termination(ID, Duration::from_millis(300))
            .expect("a terminating hook");
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating"));
        let err = complete_by_id(&client).await.expect_err("not waiting yet");
        assert_eq!(err.code(), Some("ValidationError"));
        assert!(
            err.message()
                .unwrap_or("")
                .starts_with("No active Lifecycle Action found with instance ID"),
            "{err:?}"
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating:Wait"));
        let err = client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .lifecycle_action_result("CONTINUE")
            .lifecycle_action_token("00000000-0000-4000-8000-000000000000")
            .send()
            .await
            .expect_err("wrong token");
        assert!(err
            .message()
            .unwrap_or("")
            .starts_with("No active Lifecycle Action found with token"));
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .lifecycle_action_result("CONTINUE")
            .lifecycle_action_token(&token)
            .send()
            .await
            .expect("completes by token");
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Terminating:Proceed")
        );
        let err = complete_by_id(&client).await.expect_err("already done");
        assert_eq!(err.code(), Some("ValidationError"));
        assert!(err
            .message()
            .unwrap_or("")
            .starts_with("No active Lifecycle Action found with instance ID"));

        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(done[0].by_token && !done[0].by_timeout);
        assert_eq!(done[0].result, "CONTINUE");
        assert_eq!(done[0].hook, HOOK);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminated"));
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .send()
            .await
            .expect("describe");
        assert!(
            out.auto_scaling_instances().is_empty(),
            "gone from the group"
        );
    }

    #[tokio::test]
    async fn complete_by_instance_id_and_faults() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        asg.begin_termination(ID, Duration::ZERO);
        asg.fail(
            Match::action("CompleteLifecycleAction"),
            Fault::Throttling,
            1,
        );
        asg.fail(
            Match::action("DescribeAutoScalingInstances"),
            Fault::Status(503),
            1,
        );
        asg.fail(
            Match::action("RecordLifecycleActionHeartbeat"),
            Fault::ValidationError,
            1,
        );
        let err = complete_by_id(&client).await.expect_err("throttled");
        assert_eq!(err.code(), Some("Throttling"));
        let err = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .send()
            .await
            .expect_err("unavailable");
        assert_eq!(err.code(), Some("ServiceUnavailable"));
        let err = client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Some("ValidationError"));
        assert_eq!(
            err.message(),
            Some(format!("No active Lifecycle Action found with instance ID {ID}").as_str())
        );
        assert!(
            asg.heartbeats().is_empty(),
            "an injected fault has no effect"
        );
        complete_by_id(&client).await.expect("completes by id");
        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(!done[0].by_token && !done[0].by_timeout);
        assert!(
            asg.refused_completions().is_empty(),
            "injected, not refused"
        );
        let statuses: Vec<u16> = asg.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![400, 503, 400, 200]);
    }

    #[tokio::test]
    async fn heartbeat_restarts_the_timeout_then_it_times_out() {
        let timeout = Duration::from_secs(2);
        let (asg, client) = bed(timeout).await;
        asg.begin_termination(ID, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect("heartbeat");
        let beats = asg.heartbeats();
        assert_eq!(beats.len(), 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // 2.4 s in: past the first timeout, within the restarted one.
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating:Wait"));
        assert!(asg.completions().is_empty());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let state = asg.lifecycle_state(ID);
        assert!(
            matches!(state.as_deref(), Some("Terminating:Proceed" | "Terminated")),
            "{state:?}"
        );
        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(done[0].by_timeout && !done[0].by_token);
        assert_eq!(done[0].result, "ABANDON");
        assert_eq!(
            done[0].at - beats[0].at,
            timeout,
            "timed out a timeout after the beat"
        );
        let err = client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect_err("timed out");
        assert_eq!(err.code(), Some("ValidationError"));
    }

    #[test]
    fn heartbeats_never_extend_past_the_global_cap() {
        let start = Instant::now();
        let mut action = Action {
            hook: HOOK.into(),
            heartbeat_timeout: Duration::from_secs(60),
            default_result: "ABANDON".into(),
            token: uuid(),
            last_heartbeat: None,
            done: None,
        };
        assert_eq!(action.deadline(start), start + Duration::from_secs(60));
        action.last_heartbeat = Some(start + Duration::from_secs(5990));
        assert_eq!(action.deadline(start), start + Duration::from_secs(6000));
        action.heartbeat_timeout = Duration::from_secs(7200);
        action.last_heartbeat = Some(start + Duration::from_secs(170_000));
        assert_eq!(action.deadline(start), start + MAX_GLOBAL_TIMEOUT);
    }

    #[tokio::test]
    async fn no_terminating_hook_goes_straight_on() {
        let asg = AutoScalingServer::start().await;
        asg.add_group("plain", vec![]);
        asg.add_instance("plain", "i-1", "t3.micro", "us-east-1a");
        assert_eq!(asg.begin_termination("i-1", Duration::ZERO), None);
        assert_eq!(
            asg.lifecycle_state("i-1").as_deref(),
            Some("Terminating:Proceed")
        );
        assert_eq!(asg.lifecycle_state("i-2"), None);
    }

    #[tokio::test]
    async fn bad_requests_get_service_errors() {
        let asg = AutoScalingServer::start().await;
        let http = reqwest::Client::new();
        let resp = http
            .post(asg.url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("Action=LaunchRockets&Version=2011-01-01")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 400);
        assert!(resp
            .text()
            .await
            .expect("body")
            .contains("<Code>InvalidAction</Code>"));
        let resp = http
            .post(asg.url())
            .body("Action=CompleteLifecycleAction&Version=2011-01-01")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 400);
        let body = resp.text().await.expect("body");
        assert!(body.contains("<Code>ValidationError</Code>"), "{body}");
        assert_eq!(asg.requests()[0].action, "LaunchRockets");
    }
}
