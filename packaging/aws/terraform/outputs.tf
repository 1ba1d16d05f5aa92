# What drover's config and the operator need from here.

output "lifecycle_queue_url" {
  description = "drover's lifecycle.queue_url (the userdata already sets it)."
  value       = aws_sqs_queue.lifecycle.url
}

output "lifecycle_queue_arn" {
  description = "The lifecycle queue, for other groups of the same environment to publish to."
  value       = aws_sqs_queue.lifecycle.arn
}

output "lifecycle_dlq_url" {
  description = "Where unhandled lifecycle messages end up; read it when the alarm fires."
  value       = aws_sqs_queue.lifecycle_dlq.url
}

output "autoscaling_group_name" {
  description = "The group of hosts."
  value       = aws_autoscaling_group.host.name
}

output "lifecycle_hook_name" {
  description = "The termination hook (drover finds it by itself; lifecycle.hook_name may name it)."
  value       = aws_autoscaling_lifecycle_hook.drain.name
}

output "host_role_arn" {
  description = "The hosts' role, carrying the drover and boot-secrets policies."
  value       = aws_iam_role.host.arn
}

output "instance_profile_name" {
  description = "The hosts' instance profile."
  value       = aws_iam_instance_profile.host.name
}

output "lifecycle_notification_role_arn" {
  description = "The role Auto Scaling assumes to publish lifecycle messages to the queue."
  value       = aws_iam_role.lifecycle_notification.arn
}

output "launch_template_id" {
  description = "The hosts' launch template."
  value       = aws_launch_template.host.id
}
