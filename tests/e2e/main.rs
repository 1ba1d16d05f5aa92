//! drover's end-to-end tests, one module per subject, in one test binary: each binary links
//! the AWS SDK, the Docker client and the test bed again (about 300 MB a binary in a debug
//! build), and a dozen of them filled the disk of a CI machine and spent a minute linking.
//! `cargo test --test e2e launch::` runs one subject.

mod aws_proxy;
mod aws_wiring;
mod check;
mod cloud_init;
mod config;
mod evacuate;
mod faults;
mod fetch_secret;
mod launch;
mod metrics;
mod packaging;
mod reaper;
mod register;
mod scripts;
mod secrets;
mod status;
mod stop;
mod systemd;
mod terminate;
mod versions;
