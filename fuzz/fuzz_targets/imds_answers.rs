//! What IMDS answers, and the endpoint it is reached at (src/imds.rs): the
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` value, IPv4 answers (`local-ipv4`, `public-ipv4`), the
//! `spot/instance-action` JSON with the deadline drover takes from it, and the target
//! lifecycle state. The first byte picks which; the rest is the answer.
//!
//! Beyond "does not panic":
//! - an accepted endpoint is an http(s) URL to which appending an IMDS path gives exactly
//!   that path on that host (no query, fragment or credentials to swallow it);
//! - an accepted IPv4 answer is the address, written the one way it is written;
//! - a Spot deadline can be turned into a tokio deadline without overflow;
//! - every refusal is one short line.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use drover::fuzzing::{imds_endpoint, imds_ipv4, imds_spot_action};
use drover::lifecycle::is_warm_pool_state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 4 {
        0 => endpoint(text),
        1 => ipv4(text),
        2 => spot(text),
        _ => {
            // What the sources do with `autoscaling/target-lifecycle-state`.
            let state = text.trim();
            if is_warm_pool_state(state) {
                assert!(state.starts_with("Warmed:"));
            }
        }
    }
});

fn endpoint(value: &str) {
    match imds_endpoint(value) {
        Ok(endpoint) => {
            assert!(!endpoint.ends_with('/'), "{endpoint:?}");
            assert_eq!(endpoint, endpoint.trim());
            let base = url::Url::parse(&endpoint).expect("an accepted endpoint parses");
            assert!(matches!(base.scheme(), "http" | "https"));
            for path in ["/latest/api/token", "/latest/meta-data/instance-id"] {
                let url = url::Url::parse(&format!("{endpoint}{path}"))
                    .expect("endpoint and path make a URL");
                assert_eq!(url.host(), base.host(), "{endpoint:?} + {path}");
                assert_eq!(url.port_or_known_default(), base.port_or_known_default());
                assert!(
                    url.path().ends_with(path),
                    "{endpoint:?} + {path} requests {:?}",
                    url.path()
                );
                assert_eq!(url.query(), None, "{endpoint:?} + {path}");
                assert_eq!(url.fragment(), None, "{endpoint:?} + {path}");
                assert!(url.username().is_empty() && url.password().is_none());
            }
        }
        Err(shown) => {
            assert!(shown.chars().count() <= 81, "{shown:?}");
        }
    }
}

fn ipv4(value: &str) {
    match imds_ipv4(value) {
        Ok(ip) => assert_eq!(ip.to_string(), value.trim(), "{value:?}"),
        Err(e) => {
            let line = e.to_string();
            assert!(line.chars().count() <= 600, "{line}");
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }
}

fn spot(body: &str) {
    let Ok(action) = imds_spot_action(body) else {
        return;
    };
    // As src/sources/imds_poll.rs and src/workflow.rs turn the notice into a deadline.
    let deadline = humantime::parse_rfc3339_weak(&action.time)
        .ok()
        .or_else(|| SystemTime::now().checked_add(Duration::from_secs(120)));
    if let Some(hard) = deadline {
        let left = hard
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(10));
        assert!(
            Instant::now().checked_add(left).is_some(),
            "Spot time {:?} overflows a deadline",
            action.time
        );
    }
}
