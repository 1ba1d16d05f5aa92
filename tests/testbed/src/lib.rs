//! drover's test bed: stand-ins of our own for IMDS, the Rancher 1.x API, Auto Scaling and
//! PagerDuty, plus a private Docker engine and a moto SQS, shared by the integration tests
//! and the local demo (`drover-testbed demo`).
//!
//! Every stand-in listens on `127.0.0.1:0`, follows `shared/reference.md` to the letter
//! (error bodies, asynchronous transitions, the AWS quirks), can inject faults and latency,
//! and keeps a log of the requests it answered so that tests can assert on what drover did.

pub mod autoscaling;
pub mod bench;
pub mod docker;
pub mod faults;
pub mod http;
pub mod imds;
pub mod moto;
pub mod pager;
pub mod proxy;
pub mod rancher;
