# No variable holds a secret: the Rancher secret key and the PagerDuty routing key live in
# SecureString SSM parameters that the operator creates (see ../README.md); Terraform only
# learns their names, and drover on the instance reads them with the instance role.

variable "name" {
  description = "Prefix of every resource name. The group's name starts with \"<name>-\", and the instance role may complete lifecycle actions only of groups whose name starts with it."
  type        = string
  default     = "rancher-hosts"

  validation {
    # Used in an IAM ARN pattern and in group, queue and role names; IAM allows a role
    # name_prefix of 38 characters, and "<name>-lifecycle-" is the longest.
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9-]{0,26}$", var.name))
    error_message = "name: letters, digits and '-', at most 27 characters, not starting with '-'."
  }
}

variable "role" {
  description = "The hosts' role: a Rancher host label (role=<role>) set by the userdata, and an instance tag."
  type        = string
}

variable "env" {
  description = "The hosts' environment (prod, staging, ...): a Rancher host label (env=<env>) set by the userdata, and an instance tag."
  type        = string
}

variable "ami_id" {
  description = "AMI with drover and its systemd unit installed (the userdata only configures it)."
  type        = string
}

variable "instance_type" {
  description = "Instance type of the hosts."
  type        = string
  default     = "m5.large"
}

variable "subnet_ids" {
  description = "Subnets the group launches hosts in; they must reach the Rancher server, SQS, Auto Scaling and SSM (directly or through VPC endpoints)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the hosts (Rancher 1.x hosts need UDP 500 and 4500 between each other for the IPsec overlay)."
  type        = list(string)
  default     = []
}

variable "min_size" {
  description = "Fewest hosts in the group."
  type        = number
  default     = 1
}

variable "max_size" {
  description = "Most hosts in the group."
  type        = number
  default     = 3
}

variable "desired_capacity" {
  description = "Hosts at creation; afterwards scaling policies or people own it (ignored on later applies)."
  type        = number
  default     = 1
}

variable "rancher_url" {
  description = "The Rancher server's base URL, without /v1 (drover's rancher.url)."
  type        = string
}

variable "rancher_project_id" {
  description = "The Rancher environment (project) the hosts join, e.g. 1a5 (drover's rancher.project_id)."
  type        = string
}

variable "rancher_access_key" {
  description = "Access key of a Rancher environment API key (drover's rancher.access_key). It names the key and is not a secret; its secret half is in the SSM parameter rancher_secret_key_parameter."
  type        = string
}

variable "secret_path" {
  description = "SSM path (\"/drover/prod/\") under which the operator stores drover's secrets, ending in '/'. The instance may read, and decrypt, only parameters under it (or Secrets Manager secrets named with it, without the leading '/')."
  type        = string
  default     = "/drover/"

  validation {
    condition     = can(regex("^/([A-Za-z0-9_.-]+/)+$", var.secret_path))
    error_message = "secret_path must start and end with '/', like \"/drover/prod/\"."
  }
}

variable "rancher_secret_key_parameter" {
  description = "Name of the SecureString SSM parameter holding the Rancher API key's secret, under secret_path. Not created here: put it with `aws ssm put-parameter --type SecureString`."
  type        = string
  default     = "/drover/rancher-secret-key"
}

variable "pagerduty_key_parameter" {
  description = "Name of the SecureString SSM parameter holding the PagerDuty Events v2 routing key, under secret_path. Not created here."
  type        = string
  default     = "/drover/pagerduty-routing-key"
}

variable "secrets_kms_key_arn" {
  description = "ARN of the customer managed KMS key encrypting the SecureString parameters. Empty: any key, still only through SSM and only for parameters under secret_path (the default aws/ssm key needs no grant at all)."
  type        = string
  default     = ""
}

variable "heartbeat_timeout" {
  description = "Seconds the termination hook waits for a heartbeat before it goes on with CONTINUE. drover heartbeats at a third of it."
  type        = number
  default     = 300

  validation {
    condition     = var.heartbeat_timeout >= 30 && var.heartbeat_timeout <= 7200
    error_message = "heartbeat_timeout: Auto Scaling accepts 30 to 7200 seconds."
  }
}

variable "warm_pool" {
  description = "A warm pool of pre-initialized hosts, or null for none. drover does not register a Warmed:* instance; it registers when the instance goes in service."
  type = object({
    pool_state                  = optional(string, "Stopped")
    min_size                    = optional(number, 0)
    max_group_prepared_capacity = optional(number)
    reuse_on_scale_in           = optional(bool, false)
  })
  default = null
}

variable "dlq_alarm_actions" {
  description = "SNS topic ARNs told when a lifecycle message lands in the dead-letter queue. Empty: the alarm exists but tells nobody."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource that takes them. Keys are also instance metadata tags: no spaces or '/' in them (launches fail otherwise)."
  type        = map(string)
  default     = {}
}

variable "imds_hop_limit" {
  description = "IMDSv2 PUT response hop limit: 1 keeps IMDS (and the instance role) to the host; 2 lets containers on bridge networks use it too."
  type        = number
  default     = 1

  validation {
    condition     = var.imds_hop_limit >= 1 && var.imds_hop_limit <= 64
    error_message = "imds_hop_limit must be between 1 and 64."
  }
}
