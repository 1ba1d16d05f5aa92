# The AWS side of drover for one group of hosts in a Rancher environment: the queue that
# carries termination lifecycle messages (mode = "queue"), the roles, the launching and
# termination hooks, and the group. Everything it reads is in this folder: the policies
# (iam-policy.json, policies/) and the userdata (userdata/, copies of the repository's
# cloud-init/ examples that the tests keep identical), so the module works from any source.

locals {
  uses_queue = var.mode == "queue"

  # Partition, region and account, from an ARN of this module's own: data.aws_region's
  # `name` is deprecated in provider 6 and its replacement `region` does not exist in 5.
  # The launch template exists in every mode and depends on nothing that needs these.
  arn_parts = split(":", aws_launch_template.host.arn)
  partition = local.arn_parts[1]
  region    = local.arn_parts[3]
  account   = local.arn_parts[4]
  arn_head  = "arn:${local.partition}"

  # The groups whose lifecycle actions the hosts may complete: those tagged so. A tag, not a
  # name prefix: "prod" as a prefix also matched "prod-eu-...".
  group_tag_value = var.group_tag_value != "" ? var.group_tag_value : var.name

  # Parameter ARNs drop the name's leading '/'; Secrets Manager names have none.
  secret_name_path = trimprefix(var.secret_path, "/")
  # Where secrets_store = "secrets_manager" reads: the parameter reference of each secret.
  secret_reference_path = "/aws/reference/secretsmanager/${local.secret_name_path}"

  # What iam-policy.json needs; templatefile() fails on a placeholder missing here. In a
  # mode without queue the queue's statements are dropped below, and queue_arn is unused.
  drover_policy_vars = {
    partition                   = local.partition
    region                      = local.region
    account_id                  = local.account
    group_tag_key               = var.group_tag_key
    group_tag_value             = local.group_tag_value
    queue_arn                   = local.uses_queue ? aws_sqs_queue.lifecycle[0].arn : ""
    secret_parameter_arn_prefix = "${local.arn_head}:ssm:${local.region}:${local.account}:parameter/${local.secret_name_path}"
    secret_reference_arn_prefix = "${local.arn_head}:ssm:${local.region}:${local.account}:parameter${local.secret_reference_path}"
    secret_arn_prefix           = "${local.arn_head}:secretsmanager:${local.region}:${local.account}:secret:${local.secret_name_path}"
    # Any key of this account and region, when none is named: decryption is still limited
    # to calls through SSM (or Secrets Manager) for these secrets only.
    kms_key_arn = var.secrets_kms_key_arn != "" ? var.secrets_kms_key_arn : "${local.arn_head}:kms:${local.region}:${local.account}:key/*"
  }

  # iam-policy.json's statements by what needs them; the hosts get only those in use. Every
  # statement of the file is in exactly one list (tests/e2e/aws_wiring.rs checks).
  drover_statements = {
    always = [
      "FindOwnGroupAndTerminationHook",
      "ReaperSeesTheOwnGroupsWarmPool",
      "KeepAliveAndCompleteLifecycleActionsOfTheEnvironmentsGroups",
    ]
    queue = [
      "ConsumeLifecycleMessagesFromTheEnvironmentQueue",
      "CheckTheLifecycleQueueIsReadable",
    ]
    ssm = [
      "ReadTheSecretsFromParameterStore",
      "DecryptSecureStringParametersOnlyThroughParameterStore",
    ]
    secrets_manager = [
      "OptionallyReadSecretsManagerSecretsThroughTheirParameterReference",
      "OptionallyDecryptSecretsOnlyThroughSecretsManager",
    ]
    none = []
  }
  drover_sids = concat(
    local.drover_statements.always,
    local.uses_queue ? local.drover_statements.queue : [],
    local.drover_statements[var.secrets_store],
  )
  # jsondecode() makes a broken template fail at plan time.
  drover_policy_all = jsondecode(templatefile("${path.module}/iam-policy.json", local.drover_policy_vars))
  drover_policy = merge(local.drover_policy_all, {
    Statement = [for s in local.drover_policy_all.Statement : s if contains(local.drover_sids, s.Sid)]
  })

  # The userdata each mode runs. The warm pool's is not the queue's: instances terminated
  # while still in the pool never had a Rancher host, and on a shared queue every host
  # would receive their messages and hand them back until the dead-letter queue took them.
  userdata_files = {
    queue     = "asg-sqs.yaml"
    imds      = "asg-imds.yaml"
    warm_pool = "asg-warm-pool.yaml"
  }

  # Exactly the placeholders of userdata/asg-sqs.yaml (the other two use all but the
  # queue's; templatefile() ignores extra variables and fails on a missing one). The secrets
  # travel as parameter names: drover reads them itself (rancher.secret_key_ssm,
  # pager.pagerduty_routing_key_ssm).
  userdata_vars = {
    rancher_url                  = var.rancher_url
    rancher_project_id           = var.rancher_project_id
    rancher_access_key           = var.rancher_access_key
    rancher_secret_key_parameter = var.rancher_secret_key_parameter
    pagerduty_key_parameter      = var.pagerduty_key_parameter
    lifecycle_queue_url          = local.uses_queue ? aws_sqs_queue.lifecycle[0].url : ""
    role                         = var.role
    env                          = var.env
  }
  user_data = var.user_data != "" ? var.user_data : templatefile("${path.module}/userdata/${local.userdata_files[var.mode]}", local.userdata_vars)

  # Instance tags, also readable from IMDS (instance_metadata_tags below).
  instance_tags = merge(var.tags, {
    Name                = "${var.name}-${var.role}"
    role                = var.role
    env                 = var.env
    (var.group_tag_key) = local.group_tag_value
  })

  alarm_actions = var.alarm_actions
}

# Resources that became conditional on the mode keep their state.
moved {
  from = aws_sqs_queue.lifecycle
  to   = aws_sqs_queue.lifecycle[0]
}
moved {
  from = aws_sqs_queue.lifecycle_dlq
  to   = aws_sqs_queue.lifecycle_dlq[0]
}
moved {
  from = aws_sqs_queue_redrive_allow_policy.lifecycle_dlq
  to   = aws_sqs_queue_redrive_allow_policy.lifecycle_dlq[0]
}
moved {
  from = aws_sqs_queue_policy.lifecycle
  to   = aws_sqs_queue_policy.lifecycle[0]
}
moved {
  from = aws_cloudwatch_metric_alarm.lifecycle_dlq
  to   = aws_cloudwatch_metric_alarm.lifecycle_dlq[0]
}
moved {
  from = aws_iam_role.lifecycle_notification
  to   = aws_iam_role.lifecycle_notification[0]
}
moved {
  from = aws_iam_role_policy.lifecycle_notification
  to   = aws_iam_role_policy.lifecycle_notification[0]
}

# ---------------------------------------------------------------------------------------
# The lifecycle queue (mode = "queue")
# ---------------------------------------------------------------------------------------

# Where lifecycle messages go after five receives without being deleted: malformed ones,
# and terminations nobody could complete. Kept 14 days (the most SQS allows) so that
# someone can read what went wrong.
resource "aws_sqs_queue" "lifecycle_dlq" {
  count                     = local.uses_queue ? 1 : 0
  name                      = "${var.name}-lifecycle-dlq"
  message_retention_seconds = 1209600
  # SSE with SQS-owned keys: encrypted at rest, and no KMS grants needed for the Auto
  # Scaling notification role or the hosts (a customer key would need both).
  sqs_managed_sse_enabled = true
  tags                    = var.tags
}

# One queue for the environment: the termination hook publishes here, every host of the
# environment long-polls it, and the first host that receives a message handles it.
resource "aws_sqs_queue" "lifecycle" {
  count = local.uses_queue ? 1 : 0
  name  = "${var.name}-lifecycle"
  # drover hides a message it works on for 90 s and renews that every 30 s, and hands a
  # message back at once when it is not its business, so this only decides how soon a
  # malformed message, or one whose host died mid-work, comes back: a minute.
  visibility_timeout_seconds = 60
  # A lifecycle action waits at most 48 hours (less with a short heartbeat timeout): an
  # older message can no longer be acted on.
  message_retention_seconds = 172800
  # drover long-polls for 20 s itself; this makes any other consumer long-poll too.
  receive_wait_time_seconds = 20
  sqs_managed_sse_enabled   = true
  # Five receives leave room for hand-backs among peers (each raises the receive count)
  # and for a host dying mid-work, and still park a message that nobody can handle after
  # a few minutes instead of churning for two days.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.lifecycle_dlq[0].arn
    maxReceiveCount     = 5
  })
  tags = var.tags
}

# Only the lifecycle queue may use the dead-letter queue as such. A separate resource,
# because the queue's redrive policy already refers to the dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "lifecycle_dlq" {
  count     = local.uses_queue ? 1 : 0
  queue_url = aws_sqs_queue.lifecycle_dlq[0].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.lifecycle[0].arn]
  })
}

# Only Auto Scaling, as the notification role, may send: a message carries a lifecycle
# action token and makes a host take a Rancher host out, so no other principal of the
# account may write one, whatever its own policies allow (an explicit Deny wins). Plain
# HTTP is refused for everyone.
resource "aws_sqs_queue_policy" "lifecycle" {
  count     = local.uses_queue ? 1 : 0
  queue_url = aws_sqs_queue.lifecycle[0].id
  policy = templatefile("${path.module}/policies/lifecycle-queue.json", {
    queue_arn       = aws_sqs_queue.lifecycle[0].arn
    sender_role_arn = aws_iam_role.lifecycle_notification[0].arn
  })
}

# A message in the dead-letter queue is a termination that was not handled through the
# queue (drover's IMDS polling may still have completed it) or a malformed message:
# someone should look.
resource "aws_cloudwatch_metric_alarm" "lifecycle_dlq" {
  count               = local.uses_queue ? 1 : 0
  alarm_name          = "${var.name}-lifecycle-dlq-not-empty"
  alarm_description   = "Lifecycle messages in ${aws_sqs_queue.lifecycle_dlq[0].name}: read them, then purge the queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.lifecycle_dlq[0].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = distinct(concat(local.alarm_actions, var.dlq_alarm_actions))
  tags                = var.tags
}

# drover deletes a message once its hook is completed, and a take-out lasts at most
# drain_timeout: a message older than that is one no host handles (every drover down, the
# hosts' role broken, the queue not in their config), while instances wait in
# Terminating:Wait.
resource "aws_cloudwatch_metric_alarm" "lifecycle_oldest_message" {
  count               = local.uses_queue ? 1 : 0
  alarm_name          = "${var.name}-lifecycle-message-not-handled"
  alarm_description   = "A lifecycle message in ${aws_sqs_queue.lifecycle[0].name} is older than ${var.oldest_message_alarm_seconds} s: are the hosts' drovers running (journalctl -u drover)?"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.lifecycle[0].name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_message_alarm_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  tags                = var.tags
}

# ---------------------------------------------------------------------------------------
# The role Auto Scaling assumes to publish lifecycle messages (mode = "queue")
# ---------------------------------------------------------------------------------------

# Auto Scaling sends the hook's messages as this role, never as the hosts' role; the
# queue accepts messages from it alone.
resource "aws_iam_role" "lifecycle_notification" {
  count              = local.uses_queue ? 1 : 0
  name_prefix        = "${var.name}-lifecycle-"
  assume_role_policy = templatefile("${path.module}/policies/trust.json", { service = "autoscaling.amazonaws.com" })
  tags               = var.tags
}

# Publishing to this queue only (the AWS managed AutoScalingNotificationAccessRole would
# allow every queue and topic).
resource "aws_iam_role_policy" "lifecycle_notification" {
  count  = local.uses_queue ? 1 : 0
  name   = "publish-lifecycle-messages"
  role   = aws_iam_role.lifecycle_notification[0].id
  policy = templatefile("${path.module}/policies/lifecycle-notification.json", { queue_arn = aws_sqs_queue.lifecycle[0].arn })
}

# ---------------------------------------------------------------------------------------
# The hosts' role
# ---------------------------------------------------------------------------------------

# What drover (and the userdata) on the hosts may do, through the instance profile.
resource "aws_iam_role" "host" {
  name_prefix        = "${var.name}-host-"
  assume_role_policy = templatefile("${path.module}/policies/trust.json", { service = "ec2.amazonaws.com" })
  tags               = var.tags
}

# Exactly the calls drover makes (tests/e2e/aws_wiring.rs checks the file against src/), with
# the decryption SSM does on its behalf; only the statements this mode and secrets_store
# use. jsonencode() normalizes the JSON.
resource "aws_iam_role_policy" "drover" {
  name   = "drover"
  role   = aws_iam_role.host.id
  policy = jsonencode(local.drover_policy)

  lifecycle {
    # The policy grants secret_path only: a parameter elsewhere could not be read.
    precondition {
      condition = var.secrets_store != "ssm" || alltrue([
        for p in [var.rancher_secret_key_parameter, var.pagerduty_key_parameter] :
        startswith(p, var.secret_path)
      ])
      error_message = "secrets_store = \"ssm\": rancher_secret_key_parameter and pagerduty_key_parameter must be under secret_path (${var.secret_path})."
    }
    precondition {
      condition = var.secrets_store != "secrets_manager" || alltrue([
        for p in [var.rancher_secret_key_parameter, var.pagerduty_key_parameter] :
        startswith(p, local.secret_reference_path)
      ])
      error_message = "secrets_store = \"secrets_manager\": rancher_secret_key_parameter and pagerduty_key_parameter must be parameter references under ${local.secret_reference_path} (the secrets' ids start with ${local.secret_name_path})."
    }
    precondition {
      condition     = var.secrets_store != "none" || var.user_data != ""
      error_message = "secrets_store = \"none\": the module's userdata reads the secrets from SSM; give your own user_data that brings them."
    }
  }
}

# Session Manager and Run Command on the hosts, when wanted: a shell without SSH keys or
# an open port.
resource "aws_iam_role_policy_attachment" "ssm_managed_instance" {
  count      = var.ssm_access ? 1 : 0
  role       = aws_iam_role.host.name
  policy_arn = "${local.arn_head}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# The launch template can only refer to a role through a profile.
resource "aws_iam_instance_profile" "host" {
  name_prefix = "${var.name}-host-"
  role        = aws_iam_role.host.name
  tags        = var.tags
}

# ---------------------------------------------------------------------------------------
# The hosts
# ---------------------------------------------------------------------------------------

# How a host is launched: the AMI with drover, the profile, IMDSv2 and the userdata that
# writes drover's config.
resource "aws_launch_template" "host" {
  name_prefix            = "${var.name}-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = var.security_group_ids
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.host.arn
  }

  metadata_options {
    http_endpoint = "enabled"
    # IMDSv2 only: drover uses tokens, and a stolen-URL (SSRF) read of credentials fails.
    http_tokens = "required"
    # drover and rancher-agent (--net=host) run on the host and need 1 hop. 2 lets containers
    # on bridge networks reach IMDS too, and with it the instance role and the secrets:
    # raise it only for workloads that need IMDS.
    http_put_response_hop_limit = var.imds_hop_limit
    # drover reads the group's name from the aws:autoscaling:groupName tag and the target
    # lifecycle state here instead of calling DescribeAutoScalingInstances.
    instance_metadata_tags = "enabled"
  }

  user_data = base64encode(local.user_data)

  # Tags of the template itself; the instances get theirs from the group below.
  tags = var.tags
}

# The hosts. drover joins each to Rancher at boot and takes it out when the group
# terminates it.
resource "aws_autoscaling_group" "host" {
  name_prefix         = "${var.name}-"
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  vpc_zone_identifier = var.subnet_ids
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.host.id
    version = aws_launch_template.host.latest_version
  }

  # Propagated to the instances: the Name in the console, role and env for cost reports,
  # and the group tag that the hosts' IAM permissions are scoped by (on the group; on the
  # instances it only says which environment they serve).
  dynamic "tag" {
    for_each = local.instance_tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  # The launching hook, on the group from its creation so that its first instances wait
  # too: Auto Scaling counts an instance as capacity once drover has registered it in
  # Rancher (CONTINUE), and replaces it when registration fails (ABANDON, drover pages).
  # drover finds it itself (lifecycle.launch_hook_name = "" looks the group's up). Auto
  # Scaling applies it when an instance enters the warm pool too; drover answers it there
  # without registering.
  dynamic "initial_lifecycle_hook" {
    for_each = var.launch_hook == null ? [] : [var.launch_hook]
    content {
      name                 = "register"
      lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
      heartbeat_timeout    = initial_lifecycle_hook.value.heartbeat_timeout
      default_result       = initial_lifecycle_hook.value.default_result
    }
  }

  # Pre-initialized hosts (mode = "warm_pool"). A Warmed:* instance is not registered by
  # drover; it registers when it goes in service. The warm-pool userdata watches IMDS, not
  # a queue: an instance terminated from the pool still passes the termination hook, and
  # the reaper of a host in service completes it (Warmed:Terminating:Wait).
  dynamic "warm_pool" {
    for_each = var.mode == "warm_pool" ? [var.warm_pool == null ? { pool_state = "Stopped", min_size = 0, max_group_prepared_capacity = null, reuse_on_scale_in = false } : var.warm_pool] : []
    content {
      pool_state                  = warm_pool.value.pool_state
      min_size                    = warm_pool.value.min_size
      max_group_prepared_capacity = warm_pool.value.max_group_prepared_capacity

      instance_reuse_policy {
        reuse_on_scale_in = warm_pool.value.reuse_on_scale_in
      }
    }
  }

  # Replacing the hosts when the launch template changes, when wanted: each old instance
  # passes the termination hook, so drover takes its host out of Rancher first.
  dynamic "instance_refresh" {
    for_each = var.instance_refresh == null ? [] : [var.instance_refresh]
    content {
      strategy = "Rolling"
      preferences {
        min_healthy_percentage = instance_refresh.value.min_healthy_percentage
        instance_warmup        = instance_refresh.value.instance_warmup
        skip_matching          = instance_refresh.value.skip_matching
      }
    }
  }

  # Hosts that boot before drover may read its secrets or complete its hook would fail
  # their registration.
  depends_on = [aws_iam_role_policy.drover]

  lifecycle {
    # After creation, scaling policies or people set the size, not every apply.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = var.min_size <= var.desired_capacity && var.desired_capacity <= var.max_size
      error_message = "min_size <= desired_capacity <= max_size does not hold (${var.min_size}, ${var.desired_capacity}, ${var.max_size})."
    }
    precondition {
      condition     = var.warm_pool == null || var.mode == "warm_pool"
      error_message = "warm_pool is set but mode is \"${var.mode}\": a warm pool needs mode = \"warm_pool\", whose userdata watches IMDS (the queue's would hand back, again and again, the messages of instances terminated in the pool)."
    }
  }
}

# The termination hook: the group keeps a terminating instance in Terminating:Wait (and, in
# mode "queue", sends a message to the queue) until drover has taken the host out of
# Rancher and completes the action, or the timeout runs out. Hooks apply when an instance
# leaves, so instances launched before this exists are covered too.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = "drain"
  autoscaling_group_name = aws_autoscaling_group.host.name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  # No target without a queue: drover sees the target lifecycle state in IMDS.
  notification_target_arn = local.uses_queue ? aws_sqs_queue.lifecycle[0].arn : null
  role_arn                = local.uses_queue ? aws_iam_role.lifecycle_notification[0].arn : null
  # 300 s by default: drover heartbeats every third of it (100 s), so two lost heartbeats
  # are survived, while a host whose drover died holds its termination only 5 minutes.
  # drover's take-out is bounded by its drain_timeout (10m by default), kept alive by the
  # heartbeats; the total wait is capped at 100 x heartbeat_timeout (8 h here) anyway.
  heartbeat_timeout = var.heartbeat_timeout
  # On timeout, go on terminating: ABANDON would also terminate (this is a termination
  # hook) but skip the group's other hooks. drover pages when it could not finish.
  default_result = "CONTINUE"

  # Auto Scaling sends a test message when the hook is created: the role must be able to
  # publish, and the queue to accept it, by then.
  depends_on = [aws_iam_role_policy.lifecycle_notification, aws_sqs_queue_policy.lifecycle]
}
