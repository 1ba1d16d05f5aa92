//! Auto Scaling calls about an instance's group and its lifecycle hooks: the client behind
//! [`LifecycleActions`].

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::Client;

use crate::aws::describe;
use std::collections::HashMap;

use crate::lifecycle::{
    ActionRef, CallFailure, GroupMembership, LifecycleActions, LifecycleHook, LifecycleResult,
    WarmedInstance, DESCRIBE_INSTANCES_LIMIT,
};

#[derive(Debug, thiserror::Error)]
#[error("Auto Scaling {operation}: {detail}")]
pub struct AutoScalingError {
    pub operation: &'static str,
    /// The service's error code (`ValidationError`, `AccessDenied`, ...), when it answered.
    pub code: Option<String>,
    pub message: Option<String>,
    pub detail: String,
}

impl AutoScalingError {
    fn from_sdk<E>(operation: &'static str, err: aws_sdk_autoscaling::error::SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, message) = match err.as_service_error() {
            Some(service) => (
                service.code().map(str::to_string),
                service.message().map(str::to_string),
            ),
            None => (None, None),
        };
        AutoScalingError {
            operation,
            code,
            message,
            detail: describe(&err),
        }
    }
}

impl CallFailure for AutoScalingError {
    /// `ValidationError: No active Lifecycle Action found ...`: the instance is not waiting on
    /// the hook, either not yet (before `Terminating:Wait`) or no more (someone completed it).
    fn is_no_active_action(&self) -> bool {
        self.code.as_deref() == Some("ValidationError")
            && self
                .message
                .as_deref()
                .is_some_and(|m| m.contains("No active Lifecycle Action"))
    }

    /// Throttling, server trouble, or no answer at all: worth another try.
    fn is_transient(&self) -> bool {
        match self.code.as_deref() {
            None => true,
            Some(code) => {
                matches!(
                    code,
                    "Throttling"
                        | "ThrottlingException"
                        | "RequestLimitExceeded"
                        | "ServiceUnavailable"
                        | "InternalFailure"
                        | "InternalError"
                ) || code.starts_with("5")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct AutoScaling {
    client: Client,
}

impl AutoScaling {
    pub fn new(config: &aws_config::SdkConfig) -> AutoScaling {
        AutoScaling {
            client: Client::new(config),
        }
    }
}

impl LifecycleActions for AutoScaling {
    type Error = AutoScalingError;

    /// `DescribeAutoScalingInstances` for one instance; `None` when it is in no group.
    async fn membership(
        &self,
        instance_id: &str,
    ) -> Result<Option<GroupMembership>, AutoScalingError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| AutoScalingError::from_sdk("DescribeAutoScalingInstances", e))?;
        Ok(out
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id))
            .and_then(|i| {
                i.auto_scaling_group_name().map(|g| GroupMembership {
                    group: g.to_string(),
                    lifecycle_state: i.lifecycle_state().map(str::to_string),
                })
            }))
    }

    /// `DescribeAutoScalingInstances`, [`DESCRIBE_INSTANCES_LIMIT`] ids a call (the
    /// service's limit), every page of each.
    async fn memberships(
        &self,
        instance_ids: &[String],
    ) -> Result<HashMap<String, GroupMembership>, AutoScalingError> {
        let mut found = HashMap::new();
        for chunk in instance_ids.chunks(DESCRIBE_INSTANCES_LIMIT) {
            let mut next: Option<String> = None;
            loop {
                let out = self
                    .client
                    .describe_auto_scaling_instances()
                    .set_instance_ids(Some(chunk.to_vec()))
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| AutoScalingError::from_sdk("DescribeAutoScalingInstances", e))?;
                for i in out.auto_scaling_instances() {
                    let (Some(id), Some(group)) = (i.instance_id(), i.auto_scaling_group_name())
                    else {
                        continue;
                    };
                    // Only what was asked: an answer about another instance is no answer.
                    if chunk.iter().any(|asked| asked == id) {
                        found.insert(
                            id.to_string(),
                            GroupMembership {
                                group: group.to_string(),
                                lifecycle_state: i.lifecycle_state().map(str::to_string),
                            },
                        );
                    }
                }
                match out.next_token().filter(|t| !t.is_empty()) {
                    Some(token) => next = Some(token.to_string()),
                    None => break,
                }
            }
        }
        Ok(found)
    }

    /// `DescribeWarmPool` for a group, every page.
    async fn warm_pool(&self, group: &str) -> Result<Vec<WarmedInstance>, AutoScalingError> {
        let mut instances = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_warm_pool()
                .auto_scaling_group_name(group)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| AutoScalingError::from_sdk("DescribeWarmPool", e))?;
            instances.extend(out.instances().iter().filter_map(|i| {
                Some(WarmedInstance {
                    instance_id: i.instance_id()?.to_string(),
                    lifecycle_state: i.lifecycle_state().map(|s| s.as_str().to_string()),
                })
            }));
            match out.next_token().filter(|t| !t.is_empty()) {
                Some(token) => next = Some(token.to_string()),
                None => break,
            }
        }
        Ok(instances)
    }

    /// `CompleteLifecycleAction` with `result` (`CONTINUE` or `ABANDON`).
    async fn complete(
        &self,
        action: ActionRef<'_>,
        result: LifecycleResult,
    ) -> Result<(), AutoScalingError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(action.group)
            .lifecycle_hook_name(action.hook)
            .lifecycle_action_result(result.as_str())
            .instance_id(action.instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AutoScalingError::from_sdk("CompleteLifecycleAction", e))
    }

    /// `RecordLifecycleActionHeartbeat`: restarts the hook's timeout.
    async fn heartbeat(&self, action: ActionRef<'_>) -> Result<(), AutoScalingError> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(action.group)
            .lifecycle_hook_name(action.hook)
            .instance_id(action.instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AutoScalingError::from_sdk("RecordLifecycleActionHeartbeat", e))
    }

    /// `DescribeLifecycleHooks` for a group.
    async fn hooks(&self, group: &str) -> Result<Vec<LifecycleHook>, AutoScalingError> {
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| AutoScalingError::from_sdk("DescribeLifecycleHooks", e))?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .map(|h| LifecycleHook {
                name: h.lifecycle_hook_name().unwrap_or_default().to_string(),
                transition: h.lifecycle_transition().unwrap_or_default().to_string(),
                heartbeat_timeout_secs: h.heartbeat_timeout(),
            })
            .collect())
    }
}
