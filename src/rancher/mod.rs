//! Rancher 1.x (Cattle): the API client ([`client`]), which owns its settings and errors,
//! and the cluster manager built on it ([`manager`]), which implements
//! [`Cluster`](crate::cluster::Cluster).

pub mod client;
pub mod manager;

pub use client::{
    ApiVersion, Host, HostEvent, Instance, Project, RancherClient, RancherError, RegistrationToken,
    ResolvedApi, Settings, EVACUATE_EVENT,
};
pub use manager::Rancher1;
