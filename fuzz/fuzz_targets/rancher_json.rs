//! Rancher's answers (src/rancher/client.rs): collections of hosts and of registration tokens with
//! their `pagination.next` link, single hosts, tokens and projects, and error bodies. The
//! first byte picks which answer the rest is; for an error the next two are the status.
//!
//! Beyond "does not panic":
//! - an error is one line of bounded length, and never shows a registration URL, token or
//!   command from the body (they let anyone add hosts to the environment);
//! - a token's `Debug` never shows them either;
//! - a host's state, activeness and instance id agree with its fields, and the host picked
//!   for an instance carries that instance's label and is not on its way out;
//! - a `pagination.next` link that is followed stays on the same server.
#![no_main]

use drover::fuzzing::{
    rancher_error, rancher_host, rancher_hosts_page, rancher_next_page, rancher_pick_host,
    rancher_project, rancher_token, rancher_tokens_page, RANCHER_BASE,
};
use drover::labels::INSTANCE_ID_LABEL;
use drover::rancher::{Host, RancherError, RegistrationToken};
use secrecy::ExposeSecret;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

/// The keys of a registration token that are credentials.
const SECRET_KEYS: [&str; 3] = ["registrationUrl", "token", "command"];

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let which = which % 7;
    // An error answer starts with its status; the rest is the body.
    let (status, body) = input.split_at(if which == 5 { input.len().min(2) } else { 0 });
    // The credentials in the body are replaced by markers: a marker in any output is a
    // credential shown.
    let (body, markers) = match std::str::from_utf8(body)
        .ok()
        .and_then(|text| common::mark(text, &secrets_in(text)))
    {
        Some((marked, markers)) => (marked.into_bytes(), markers),
        None => (body.to_vec(), Vec::new()),
    };
    let body = body.as_slice();
    let markers = markers.as_slice();
    match which {
        0 => match rancher_hosts_page(body) {
            Ok((hosts, next)) => {
                hosts.iter().for_each(check_host);
                check_pick(&hosts);
                check_next(next);
            }
            Err(e) => check_error(&e, markers),
        },
        1 => match rancher_tokens_page(body) {
            Ok((tokens, next)) => {
                tokens.iter().for_each(|t| check_token(t, markers));
                check_next(next);
            }
            Err(e) => check_error(&e, markers),
        },
        2 => match rancher_host(body) {
            Ok(host) => check_host(&host),
            Err(e) => check_error(&e, markers),
        },
        3 => match rancher_token(body) {
            Ok(token) => check_token(&token, markers),
            Err(e) => check_error(&e, markers),
        },
        4 => match rancher_project(body) {
            Ok(project) => assert!(format!("{project:?}").contains("Project")),
            Err(e) => check_error(&e, markers),
        },
        5 => {
            let Ok(status) = <[u8; 2]>::try_from(status) else {
                return;
            };
            let status = u16::from_be_bytes(status);
            if let Some(e) = rancher_error(status, body) {
                check_error(&e, markers);
                assert_eq!(e.status(), Some(status));
                let text = e.to_string();
                assert!(text.contains(&format!(" {status} ")), "{text}");
                assert_eq!(
                    e.is_transient(),
                    status == 409 || status == 429 || status >= 500
                );
            }
        }
        _ => {
            if let Ok(link) = std::str::from_utf8(body) {
                check_next(Some(link.to_string()));
            }
        }
    }
});

fn check_error(e: &RancherError, markers: &[String]) {
    let line = e.to_string();
    common::assert_hidden(&format!("{line} {e:?}"), markers, "error");
    assert!(
        line.chars().count() <= 1000,
        "error longer than a log line: {} chars",
        line.chars().count()
    );
    assert!(
        !line.chars().any(|c| c.is_control()),
        "error breaks the log line: {line:?}"
    );
}

fn check_host(h: &Host) {
    let state = h.effective_state();
    match h.agent_state.as_deref() {
        Some(agent) if h.state == "active" && !agent.is_empty() && agent != "active" => {
            assert_eq!(state, agent)
        }
        _ => assert_eq!(state, h.state),
    }
    assert_eq!(h.is_active(), state == "active");
    assert_eq!(
        h.instance_id(),
        h.labels.get(INSTANCE_ID_LABEL).map(String::as_str)
    );
    for action in h.actions.keys() {
        assert!(h.offers(action));
    }
}

fn check_token(t: &RegistrationToken, markers: &[String]) {
    let shown = format!("{t:?}");
    common::assert_hidden(&shown, markers, "token Debug");
    let clear = [
        t.id.as_str(),
        t.state.as_str(),
        t.image.as_deref().unwrap_or(""),
    ];
    let url = t.registration_url.as_ref().map(|u| u.expose_secret());
    if let Some(url) = url {
        if url.len() >= 8 && !clear.iter().any(|c| c.contains(url)) {
            assert!(
                !shown.contains(url),
                "token Debug shows the registration URL"
            );
        }
    }
    assert_eq!(
        t.is_usable(),
        t.state == "active" && url.is_some_and(|u| !u.is_empty())
    );
}

fn check_pick(hosts: &[Host]) {
    let mut ids: Vec<&str> = hosts.iter().filter_map(Host::instance_id).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids.into_iter().take(4).chain(["i-0a1b2c3d4e5f60718"]) {
        let eligible: Vec<&Host> = hosts
            .iter()
            .filter(|h| h.instance_id() == Some(id))
            .filter(|h| !matches!(h.state.as_str(), "removed" | "purged" | "purging"))
            .collect();
        match rancher_pick_host(hosts.to_vec(), id) {
            Some(picked) => {
                assert_eq!(picked.instance_id(), Some(id));
                assert!(!matches!(
                    picked.state.as_str(),
                    "removed" | "purged" | "purging"
                ));
                if eligible.iter().any(|h| h.is_active()) {
                    assert!(picked.is_active(), "an active host was passed over");
                }
            }
            None => assert!(eligible.is_empty(), "no host picked for {id}"),
        }
    }
}

fn check_next(link: Option<String>) {
    let base = url::Url::parse(RANCHER_BASE).expect("base URL");
    match rancher_next_page(link.clone()) {
        Ok(Some(next)) => {
            assert_eq!(
                next.origin(),
                base.origin(),
                "followed {link:?} off the server"
            );
        }
        Ok(None) => assert!(link.is_none_or(|l| l.is_empty())),
        Err(e) => check_error(&e, &[]),
    }
}

/// The credentials a body carries: the string values of a token's secret keys, at any
/// depth (`common::mark` keeps those that occur once, as they are, 8 characters or more).
fn secrets_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        collect(&v, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        Value::Object(map) => {
            for (k, item) in map {
                if let (true, Value::String(s)) = (SECRET_KEYS.contains(&k.as_str()), item) {
                    out.push(s.clone());
                }
                collect(item, out);
            }
        }
        _ => {}
    }
}
