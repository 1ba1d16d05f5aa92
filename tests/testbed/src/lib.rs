//! drover's test bed: stand-ins of our own for IMDS, the Rancher 1.x API, Auto Scaling and
//! PagerDuty, plus a private Docker engine and a moto SQS, shared by the integration tests
//! and the local demo (`drover-testbed demo`).
//!
//! Every stand-in listens on `127.0.0.1:0`, follows `shared/reference.md` to the letter
//! (error bodies, asynchronous transitions, the AWS quirks), and sits behind one fault layer
//! ([`http::Faults`]): injected faults, latency and the log of the requests it received,
//! with the same API on each (`fail(Match, Fault, times)`, `set_latency`, `requests`), so
//! that tests can break it and assert on what drover did.

pub mod autoscaling;
pub mod bed;
pub mod bench;
pub mod config;
pub mod docker;
pub mod faults;
pub mod http;
pub mod imds;
pub mod launch;
pub mod moto;
pub mod notify;
pub mod pager;
pub mod proxy;
pub mod rancher;
