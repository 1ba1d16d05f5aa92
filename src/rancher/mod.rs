//! Rancher 1.x (Cattle): the API client ([`client`]), which owns its settings and errors,
//! and the cluster manager built on it ([`manager`]), which implements
//! [`Cluster`](crate::cluster::Cluster).

pub mod client;
pub mod manager;

pub use client::{
    ApiVersion, Host, Project, RancherClient, RancherError, RegistrationToken, ResolvedApi,
    Settings,
};
pub use manager::Rancher1;
