//! Launching a moto_server per test (a real SQS, SSM Parameter Store and Secrets Manager,
//! all on one port), and the few calls tests need.
//!
//! moto gives long polling, visibility timeouts and redrive to a dead-letter queue; tests
//! use the helpers here to set queues up and to look at them. Its SSM decrypts SecureString
//! parameters only when asked (`WithDecryption`), and serves a Secrets Manager secret as
//! the parameter `/aws/reference/secretsmanager/<id>`, as AWS does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{Message, QueueAttributeName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `moto_server` on a loopback port; killed when dropped.
pub struct MotoServer {
    child: Child,
    /// Dropped after the child is killed (see [`crate::pids`]).
    _recorded: crate::pids::Recorded,
    port: u16,
    /// Holds `moto.log`.
    dir: tempfile::TempDir,
}

/// `DROVER_MOTO_SERVER`, else the workspace's `.testbed/venv` (what CI sets up), else
/// `moto_server` on `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DROVER_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.testbed/venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

fn read_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether something answers HTTP on the port (any status will do).
async fn answers(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(&head == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

impl MotoServer {
    /// Spawns `moto_server -H 127.0.0.1 -p <free port>` and waits (up to 30 s) until it
    /// answers. A port taken between choosing and binding it is retried with another.
    pub async fn start() -> std::io::Result<MotoServer> {
        let dir = tempfile::Builder::new().prefix("tb-moto-").tempdir()?;
        let binary = binary();
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("moto.log"))?;
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "spawning {} (set DROVER_MOTO_SERVER): {e}",
                            binary.display()
                        ),
                    )
                })?;
            let recorded = crate::pids::record(child.id(), "moto_server", dir.path());
            // Killed if this start is given up, or its future dropped (a demo's Ctrl-C).
            let mut starting = Starting(Some(child));
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Some(child) = starting.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("moto_server exited with {status}:\n{}", read_log(&dir));
                    break;
                }
                if answers(port).await {
                    if let Some(child) = starting.0.take() {
                        return Ok(MotoServer {
                            child,
                            _recorded: recorded,
                            port,
                            dir,
                        });
                    }
                }
                if Instant::now() > deadline {
                    drop(starting);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "moto_server did not answer within 30 s:\n{}",
                            read_log(&dir)
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(std::io::Error::other(last_error))
    }

    /// `http://127.0.0.1:<port>`, the endpoint for every AWS service moto serves.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What moto has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// An SQS client for this server: us-east-1, static credentials `testing`/`testing`.
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "testing", "testing", None, None, "testbed",
            ))
            .endpoint_url(self.url())
            .load()
            .await;
        aws_sdk_sqs::Client::new(&config)
    }

    /// An SSM client for this server, like [`MotoServer::sqs`].
    pub async fn ssm(&self) -> aws_sdk_ssm::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "testing", "testing", None, None, "testbed",
            ))
            .endpoint_url(self.url())
            .load()
            .await;
        aws_sdk_ssm::Client::new(&config)
    }

    /// Puts the SecureString parameter `name` (encrypted with the default `aws/ssm` key),
    /// replacing the value it had: a first put, or a rotation.
    pub async fn put_secure_parameter(&self, name: &str, value: &str) {
        self.ssm()
            .await
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .expect("putting an SSM parameter");
    }

    /// Creates the Secrets Manager secret `id` holding `value` as its SecretString; SSM
    /// serves it as `/aws/reference/secretsmanager/<id>`. (One JSON call: not worth an SDK
    /// crate of its own.)
    pub async fn create_secret(&self, id: &str, value: &str) {
        let answer = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client")
            .post(self.url())
            // moto tells the service from the signature's credential scope; it checks
            // nothing else of it.
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("x-amz-target", "secretsmanager.CreateSecret")
            .header("content-type", "application/x-amz-json-1.1")
            .body(serde_json::json!({"Name": id, "SecretString": value}).to_string())
            .send()
            .await
            .expect("creating a Secrets Manager secret");
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        assert!(status.is_success(), "CreateSecret {id}: {status} {body}");
    }

    /// Creates `name` and returns its URL. With `Some(n)`, also creates `<name>-dlq` and
    /// gives `name` a redrive policy to it with `maxReceiveCount` n.
    pub async fn create_queue(&self, name: &str, dead_letter_max_receives: Option<u32>) -> String {
        let sqs = self.sqs().await;
        let mut create = sqs.create_queue().queue_name(name);
        if let Some(max) = dead_letter_max_receives {
            let dlq = sqs
                .create_queue()
                .queue_name(format!("{name}-dlq"))
                .send()
                .await
                .expect("creating the dead-letter queue");
            let dlq_url = dlq.queue_url().unwrap_or_default();
            let attributes = sqs
                .get_queue_attributes()
                .queue_url(dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("reading the dead-letter queue's ARN");
            let arn = attributes
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                .cloned()
                .unwrap_or_default();
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": max.to_string(),
            });
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        let created = create.send().await.expect("creating the queue");
        created.queue_url().unwrap_or_default().to_string()
    }

    /// Sends one message.
    pub async fn send(&self, queue_url: &str, body: &str) {
        self.sqs()
            .await
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .expect("sending a message");
    }

    /// Receives up to 10 messages, long-polling up to `wait_seconds` (they become invisible
    /// for the queue's visibility timeout, as for any consumer).
    pub async fn receive(&self, queue_url: &str, wait_seconds: i32) -> Vec<Message> {
        self.sqs()
            .await
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_seconds)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .expect("receiving messages")
            .messages
            .unwrap_or_default()
    }

    /// (`ApproximateNumberOfMessages`, `ApproximateNumberOfMessagesNotVisible`).
    pub async fn approximate_counts(&self, queue_url: &str) -> (u64, u64) {
        let attributes = self
            .sqs()
            .await
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("reading queue attributes");
        let count = |name: QueueAttributeName| {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }
}

/// A `moto_server` not answering yet: stopped when dropped.
struct Starting(Option<Child>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn moto_is_a_real_sqs() {
        let moto = MotoServer::start().await.expect("moto_server");
        let queue = moto.create_queue("lifecycle", Some(2)).await;
        assert!(queue.ends_with("/lifecycle"), "{queue}");
        moto.send(&queue, r#"{"Event":"autoscaling:TEST_NOTIFICATION"}"#)
            .await;
        assert_eq!(moto.approximate_counts(&queue).await, (1, 0));

        let messages = moto.receive(&queue, 1).await;
        assert_eq!(messages.len(), 1);
        assert_eq!(
            messages[0].body(),
            Some(r#"{"Event":"autoscaling:TEST_NOTIFICATION"}"#)
        );
        assert_eq!(moto.approximate_counts(&queue).await, (0, 1));

        // Handing it back at once, as drover does with other environments' messages.
        let sqs = moto.sqs().await;
        sqs.change_message_visibility()
            .queue_url(&queue)
            .receipt_handle(messages[0].receipt_handle().unwrap())
            .visibility_timeout(0)
            .send()
            .await
            .expect("visibility 0");
        assert_eq!(moto.approximate_counts(&queue).await, (1, 0));

        // The second receive hits maxReceiveCount 2; the third finds it in the DLQ.
        let again = moto.receive(&queue, 1).await;
        assert_eq!(again.len(), 1);
        sqs.change_message_visibility()
            .queue_url(&queue)
            .receipt_handle(again[0].receipt_handle().unwrap())
            .visibility_timeout(0)
            .send()
            .await
            .expect("visibility 0");
        assert!(moto.receive(&queue, 1).await.is_empty());
        let dlq = sqs
            .get_queue_url()
            .queue_name("lifecycle-dlq")
            .send()
            .await
            .expect("dlq")
            .queue_url
            .unwrap();
        assert_eq!(moto.approximate_counts(&dlq).await.0, 1);

        // An empty queue makes a long poll wait.
        let empty = moto.create_queue("other", None).await;
        let started = Instant::now();
        assert!(moto.receive(&empty, 1).await.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    /// What drover's `*_ssm` keys rely on: SecureString values decrypted only on request,
    /// an overwrite seen at the next read, and Secrets Manager secrets behind their SSM
    /// reference.
    #[tokio::test(flavor = "multi_thread")]
    async fn moto_is_a_parameter_store_with_secrets_manager_references() {
        let moto = MotoServer::start().await.expect("moto_server");
        let ssm = moto.ssm().await;
        let read = |name: &str, decrypt: bool| {
            let ssm = ssm.clone();
            let name = name.to_string();
            async move {
                ssm.get_parameter()
                    .name(name)
                    .with_decryption(decrypt)
                    .send()
                    .await
                    .map(|out| out.parameter.and_then(|p| p.value).unwrap_or_default())
            }
        };
        moto.put_secure_parameter("/drover/rancher-secret", "first")
            .await;
        assert_eq!(
            read("/drover/rancher-secret", true).await.expect("read"),
            "first"
        );
        let encrypted = read("/drover/rancher-secret", false).await.expect("read");
        assert_ne!(encrypted, "first", "not decrypted without WithDecryption");
        moto.put_secure_parameter("/drover/rancher-secret", "second")
            .await;
        assert_eq!(
            read("/drover/rancher-secret", true).await.expect("read"),
            "second"
        );
        let missing = read("/drover/nothing", true).await.expect_err("missing");
        assert_eq!(
            aws_sdk_ssm::error::ProvideErrorMetadata::code(&missing),
            Some("ParameterNotFound")
        );

        moto.create_secret("drover/pd", "from-secrets-manager")
            .await;
        assert_eq!(
            read("/aws/reference/secretsmanager/drover/pd", true)
                .await
                .expect("read"),
            "from-secrets-manager"
        );
    }
}
