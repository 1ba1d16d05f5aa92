# The AWS side of drover for one Rancher environment: the queue that carries termination
# lifecycle messages, the roles, and a group of hosts whose termination hook publishes to
# the queue. The IAM policies are the JSON files one directory up, rendered with
# templatefile(): one source of truth for Terraform and for the AWS CLI.

# Partition, region and account fill the ARNs in the policy templates.
data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  arn_head = "arn:${data.aws_partition.current.partition}"
  region   = data.aws_region.current.name
  account  = data.aws_caller_identity.current.account_id

  # Every group named like this may have its lifecycle actions completed by the hosts: the
  # queue is shared by the environment, and a host takes out a peer's host when the peer's
  # message reaches it (drover's lifecycle.handle_peers).
  group_name_prefix = "${var.name}-"

  # Parameter ARNs drop the name's leading '/'; Secrets Manager names have none.
  secret_name_path = trimprefix(var.secret_path, "/")

  # What ../iam-policy.json needs; templatefile() fails on a placeholder missing here.
  drover_policy_vars = {
    partition                   = data.aws_partition.current.partition
    region                      = local.region
    account_id                  = local.account
    group_name_prefix           = local.group_name_prefix
    queue_arn                   = aws_sqs_queue.lifecycle.arn
    secret_parameter_arn_prefix = "${local.arn_head}:ssm:${local.region}:${local.account}:parameter/${local.secret_name_path}"
    secret_reference_arn_prefix = "${local.arn_head}:ssm:${local.region}:${local.account}:parameter/aws/reference/secretsmanager/${local.secret_name_path}"
    secret_arn_prefix           = "${local.arn_head}:secretsmanager:${local.region}:${local.account}:secret:${local.secret_name_path}"
    kms_key_arn                 = var.secrets_kms_key_arn != "" ? var.secrets_kms_key_arn : "*"
  }

  # Exactly the placeholders of cloud-init/asg-sqs.yaml; templatefile() fails on a missing
  # one. The secrets travel as parameter names: drover reads them itself
  # (rancher.secret_key_ssm, pager.pagerduty_routing_key_ssm).
  userdata_vars = {
    rancher_url                  = var.rancher_url
    rancher_project_id           = var.rancher_project_id
    rancher_access_key           = var.rancher_access_key
    rancher_secret_key_parameter = var.rancher_secret_key_parameter
    pagerduty_key_parameter      = var.pagerduty_key_parameter
    lifecycle_queue_url          = aws_sqs_queue.lifecycle.url
    role                         = var.role
    env                          = var.env
  }

  # Instance tags, also readable from IMDS (instance_metadata_tags below).
  instance_tags = merge(var.tags, {
    Name = "${var.name}-${var.role}"
    role = var.role
    env  = var.env
  })
}

# ---------------------------------------------------------------------------------------
# The lifecycle queue
# ---------------------------------------------------------------------------------------

# Where lifecycle messages go after five receives without being deleted: malformed ones,
# and terminations nobody could complete. Kept 14 days (the most SQS allows) so that
# someone can read what went wrong.
resource "aws_sqs_queue" "lifecycle_dlq" {
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
  name = "${var.name}-lifecycle"
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
    deadLetterTargetArn = aws_sqs_queue.lifecycle_dlq.arn
    maxReceiveCount     = 5
  })
  tags = var.tags
}

# Only the lifecycle queue may use the dead-letter queue as such. A separate resource,
# because the queue's redrive policy already refers to the dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "lifecycle_dlq" {
  queue_url = aws_sqs_queue.lifecycle_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.lifecycle.arn]
  })
}

# Refuse plain-HTTP access to the queue: the messages carry lifecycle action tokens.
resource "aws_sqs_queue_policy" "lifecycle" {
  queue_url = aws_sqs_queue.lifecycle.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyPlainHttp"
      Effect    = "Deny"
      Principal = "*"
      Action    = "sqs:*"
      Resource  = aws_sqs_queue.lifecycle.arn
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

# A message in the dead-letter queue is a termination that was not handled through the
# queue (drover's IMDS polling may still have completed it) or a malformed message:
# someone should look.
resource "aws_cloudwatch_metric_alarm" "lifecycle_dlq" {
  alarm_name          = "${var.name}-lifecycle-dlq-not-empty"
  alarm_description   = "Lifecycle messages in ${aws_sqs_queue.lifecycle_dlq.name}: read them, then purge the queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.lifecycle_dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.dlq_alarm_actions
  tags                = var.tags
}

# ---------------------------------------------------------------------------------------
# The role Auto Scaling assumes to publish lifecycle messages
# ---------------------------------------------------------------------------------------

# Auto Scaling sends the hook's messages as this role, never as the hosts' role.
resource "aws_iam_role" "lifecycle_notification" {
  name_prefix = "${var.name}-lifecycle-"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "autoscaling.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

# Publishing to this one queue, and nothing else (the AWS managed
# AutoScalingNotificationAccessRole would allow every queue and topic).
resource "aws_iam_role_policy" "lifecycle_notification" {
  name = "publish-lifecycle-messages"
  role = aws_iam_role.lifecycle_notification.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "PublishToTheLifecycleQueue"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage", "sqs:GetQueueUrl"]
      Resource = aws_sqs_queue.lifecycle.arn
    }]
  })
}

# ---------------------------------------------------------------------------------------
# The hosts' role
# ---------------------------------------------------------------------------------------

# What drover (and the userdata) on the hosts may do, through the instance profile.
resource "aws_iam_role" "host" {
  name_prefix = "${var.name}-host-"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

# Exactly the calls drover makes (tests/e2e/aws_wiring.rs checks the file against src/), with
# the decryption SSM does on its behalf. jsondecode() makes a broken template fail at plan
# time; jsonencode() normalizes it.
resource "aws_iam_role_policy" "drover" {
  name   = "drover"
  role   = aws_iam_role.host.id
  policy = jsonencode(jsondecode(templatefile("${path.module}/../iam-policy.json", local.drover_policy_vars)))

  lifecycle {
    # The policy grants secret_path only: a parameter elsewhere could not be read.
    precondition {
      condition = alltrue([
        for p in [var.rancher_secret_key_parameter, var.pagerduty_key_parameter] :
        startswith(p, var.secret_path)
      ])
      error_message = "rancher_secret_key_parameter and pagerduty_key_parameter must be under secret_path (${var.secret_path})."
    }
  }
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
    # drover reads the group's name from the aws:autoscaling:groupName tag here instead of
    # calling DescribeAutoScalingInstances.
    instance_metadata_tags = "enabled"
  }

  user_data = base64encode(templatefile("${path.module}/../../../cloud-init/asg-sqs.yaml", local.userdata_vars))

  # Tags of the template itself; the instances get theirs from the group below.
  tags = var.tags
}

# The hosts. drover joins each to Rancher at boot and takes it out when the group
# terminates it.
resource "aws_autoscaling_group" "host" {
  # Must start with local.group_name_prefix: the IAM policy scopes lifecycle actions by it.
  name_prefix         = local.group_name_prefix
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  vpc_zone_identifier = var.subnet_ids
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.host.id
    version = aws_launch_template.host.latest_version
  }

  # Propagated to the instances: the Name in the console, role and env for cost reports
  # and for anything reading instance tags from IMDS.
  dynamic "tag" {
    for_each = local.instance_tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  # Pre-initialized hosts, when wanted. A Warmed:* instance is not registered by drover; it
  # registers when it goes in service. An instance terminated from the pool still passes
  # the termination hook: no host handles its message, which is handed back until the
  # dead-letter queue takes it, and the hook ends after heartbeat_timeout.
  dynamic "warm_pool" {
    for_each = var.warm_pool == null ? [] : [var.warm_pool]
    content {
      pool_state                  = warm_pool.value.pool_state
      min_size                    = warm_pool.value.min_size
      max_group_prepared_capacity = warm_pool.value.max_group_prepared_capacity

      instance_reuse_policy {
        reuse_on_scale_in = warm_pool.value.reuse_on_scale_in
      }
    }
  }

  lifecycle {
    # After creation, scaling policies or people set the size, not every apply.
    ignore_changes = [desired_capacity]
  }
}

# The termination hook: the group keeps a terminating instance in Terminating:Wait, and
# sends a message to the queue, until drover has taken the host out of Rancher and
# completes the action (or the timeout runs out). Hooks apply when an instance leaves, so
# instances launched before this exists are covered too.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                    = "drain"
  autoscaling_group_name  = aws_autoscaling_group.host.name
  lifecycle_transition    = "autoscaling:EC2_INSTANCE_TERMINATING"
  notification_target_arn = aws_sqs_queue.lifecycle.arn
  role_arn                = aws_iam_role.lifecycle_notification.arn
  # 300 s by default: drover heartbeats every third of it (100 s), so two lost heartbeats
  # are survived, while a host whose drover died holds its termination only 5 minutes.
  # drover's take-out is bounded by its drain_timeout (10m by default), kept alive by the
  # heartbeats; the total wait is capped at 100 x heartbeat_timeout (8 h here) anyway.
  heartbeat_timeout = var.heartbeat_timeout
  # On timeout, go on terminating: ABANDON would also terminate (this is a termination
  # hook) but skip the group's other hooks. drover pages when it could not finish.
  default_result = "CONTINUE"

  # Auto Scaling sends a test message when the hook is created: the role must be able to
  # publish by then.
  depends_on = [aws_iam_role_policy.lifecycle_notification]
}
