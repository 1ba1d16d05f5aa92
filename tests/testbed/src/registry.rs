//! A container registry stand-in (the Docker Registry HTTP API V2, read-only) serving one
//! image, so that the bed's real engine pulls by digest: an image made with `docker import`
//! has no repository digest, and only a registry gives an engine one.
//!
//! The image is an OCI image (manifest, config, one uncompressed layer) whose manifest is
//! served by its tag and by its digest. The engine treats any registry on 127.0.0.0/8 as
//! insecure and so speaks plain HTTP to it (after its HTTPS attempt fails), as it would to a
//! mirror on the host. Behind the bed's one fault layer: its requests are logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::http;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// OCI's uncompressed layer: the engine reads a plain tar as well as a gzipped one.
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

struct Image {
    repository: String,
    tag: String,
    manifest: Bytes,
    manifest_digest: String,
    /// Config and layer, by digest.
    blobs: HashMap<String, Bytes>,
}

/// A running registry with one image; stops when dropped.
pub struct RegistryServer {
    image: Arc<Image>,
    faults: http::Faults,
    server: http::Server,
}

impl RegistryServer {
    /// Serves `layer` (a tar of the image's root) as `repository:tag` with `entrypoint`.
    pub async fn start(
        repository: &str,
        tag: &str,
        layer: Vec<u8>,
        entrypoint: &[&str],
    ) -> std::io::Result<RegistryServer> {
        let layer_digest = sha256_digest(&layer);
        let config = serde_json::json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": { "Entrypoint": entrypoint },
            // Uncompressed: the layer's digest is its diff id.
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        })
        .to_string()
        .into_bytes();
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": { "mediaType": CONFIG_TYPE, "size": config.len(), "digest": config_digest },
            "layers": [{ "mediaType": LAYER_TYPE, "size": layer.len(), "digest": layer_digest }],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = sha256_digest(&manifest);
        let image = Arc::new(Image {
            repository: repository.to_string(),
            tag: tag.to_string(),
            manifest: Bytes::from(manifest),
            manifest_digest,
            blobs: HashMap::from([
                (config_digest, Bytes::from(config)),
                (layer_digest, Bytes::from(layer)),
            ]),
        });
        let faults = http::Faults::default();
        let router = Router::new()
            .route("/v2/", get(api_version))
            .route("/v2/{*rest}", get(content))
            .with_state(image.clone());
        let server = http::Server::start(faults.serve(router, render)).await?;
        Ok(RegistryServer {
            image,
            faults,
            server,
        })
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// The manifest's digest, `sha256:<hex>`: what `name@digest` pins.
    pub fn digest(&self) -> &str {
        &self.image.manifest_digest
    }

    /// `127.0.0.1:<port>/<repository>@sha256:<hex>`.
    pub fn by_digest(&self) -> String {
        format!(
            "{}/{}@{}",
            self.host(),
            self.image.repository,
            self.image.manifest_digest
        )
    }

    /// `127.0.0.1:<port>/<repository>:<tag>@sha256:<hex>`.
    pub fn by_tag_and_digest(&self) -> String {
        format!(
            "{}/{}:{}@{}",
            self.host(),
            self.image.repository,
            self.image.tag,
            self.image.manifest_digest
        )
    }

    pub fn faults(&self) -> &http::Faults {
        &self.faults
    }
}

http::fault_api!(RegistryServer);

async fn api_version() -> Response {
    (
        [("Docker-Distribution-API-Version", "registry/2.0")],
        axum::Json(serde_json::json!({})),
    )
        .into_response()
}

/// `<name>/manifests/<reference>` or `<name>/blobs/<digest>`; the name may hold slashes.
async fn content(State(image): State<Arc<Image>>, Path(rest): Path<String>) -> Response {
    let found = if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        (name == image.repository && (reference == image.tag || reference == image.manifest_digest))
            .then(|| {
                (
                    image.manifest.clone(),
                    MANIFEST_TYPE,
                    image.manifest_digest.clone(),
                )
            })
            .ok_or(("MANIFEST_UNKNOWN", "manifest unknown"))
    } else if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        (name == image.repository)
            .then(|| image.blobs.get(digest))
            .flatten()
            .map(|b| (b.clone(), "application/octet-stream", digest.to_string()))
            .ok_or(("BLOB_UNKNOWN", "blob unknown to registry"))
    } else {
        Err(("NAME_UNKNOWN", "repository name not known to registry"))
    };
    match found {
        Ok((body, kind, digest)) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            if let Ok(value) = HeaderValue::from_str(&digest) {
                headers.insert("Docker-Content-Digest", value);
            }
            response
        }
        Err((code, message)) => error(StatusCode::NOT_FOUND, code, message),
    }
}

/// The registry's error body: `{"errors":[{"code":..,"message":..}]}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "errors": [{ "code": code, "message": message }] })),
    )
        .into_response()
}

fn render(fault: http::Fault, _: &http::Incoming<'_>) -> Response {
    match fault {
        http::Fault::Status(code) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "UNKNOWN",
            "unknown error",
        ),
        http::Fault::Throttling => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "too many requests",
        ),
        http::Fault::ValidationError => {
            error(StatusCode::BAD_REQUEST, "UNSUPPORTED", "unsupported")
        }
    }
}
