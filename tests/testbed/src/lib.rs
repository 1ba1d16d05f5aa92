//! drover's test bed: stand-ins of our own for IMDS, the Rancher 1.x API, Auto Scaling and
//! PagerDuty, plus a private Docker engine and a moto SQS, shared by the integration tests,
//! the bench, the fault campaign and the local demo (`drover-testbed`).
//!
//! Every stand-in listens on `127.0.0.1:0`, follows `shared/reference.md` to the letter
//! (error bodies, asynchronous transitions, the AWS quirks), and sits behind one fault layer
//! ([`http::Faults`]): injected faults, latency and the log of the requests it received,
//! with the same API on each (`fail(Match, Fault, times)`, `set_latency`, `requests`, `heal`).
//!
//! Around them: [`bed::Bed`], one instance's world for a test; [`config::DroverConfig`],
//! drover's config as a typed value; [`launch::Launcher`], the one way drover is started
//! (clean environment, output to files, every wait bounded); [`notify`], what drover tells
//! systemd (`READY=1`, `STOPPING=1`), which is what tests synchronise on; [`machine`], a
//! real systemd booted in a container, for drover's units as a host runs them.

pub mod autoscaling;
pub mod bed;
pub mod bench;
pub mod config;
pub mod docker;
pub mod faults;
pub mod faults_boot;
pub mod faults_reap;
pub mod http;
pub mod imds;
pub mod launch;
pub mod machine;
pub mod moto;
pub mod notify;
pub mod pager;
pub mod pids;
pub mod proxy;
pub mod rancher;
pub mod registry;
