# What drover's config and the operator need from here. The queue's outputs are null
# unless mode = "queue".

output "lifecycle_queue_url" {
  description = "drover's lifecycle.queue_url (the userdata already sets it); null without a queue."
  value       = local.uses_queue ? aws_sqs_queue.lifecycle[0].url : null
}

output "lifecycle_queue_arn" {
  description = "The lifecycle queue, for the termination hooks of other groups of the same environment (they publish as lifecycle_notification_role_arn: the queue accepts no other sender)."
  value       = local.uses_queue ? aws_sqs_queue.lifecycle[0].arn : null
}

output "lifecycle_dlq_url" {
  description = "Where unhandled lifecycle messages end up; read it when the alarm fires."
  value       = local.uses_queue ? aws_sqs_queue.lifecycle_dlq[0].url : null
}

output "lifecycle_notification_role_arn" {
  description = "The role Auto Scaling assumes to publish lifecycle messages to the queue, the only sender it accepts."
  value       = local.uses_queue ? aws_iam_role.lifecycle_notification[0].arn : null
}

output "autoscaling_group_name" {
  description = "The group of hosts."
  value       = aws_autoscaling_group.host.name
}

output "group_tag" {
  description = "The tag (key and value) every group of this Rancher environment carries: the hosts may complete lifecycle actions of those groups only."
  value       = { key = var.group_tag_key, value = local.group_tag_value }
}

output "lifecycle_hook_name" {
  description = "The termination hook (drover finds it by itself; lifecycle.hook_name may name it)."
  value       = aws_autoscaling_lifecycle_hook.drain.name
}

output "launch_hook_name" {
  description = "The launching hook drover completes once the host is registered; null without one."
  value       = var.launch_hook == null ? null : "register"
}

output "host_role_arn" {
  description = "The hosts' role, carrying the drover policy (and AmazonSSMManagedInstanceCore with ssm_access)."
  value       = aws_iam_role.host.arn
}

output "instance_profile_name" {
  description = "The hosts' instance profile."
  value       = aws_iam_instance_profile.host.name
}

output "launch_template_id" {
  description = "The hosts' launch template."
  value       = aws_launch_template.host.id
}
