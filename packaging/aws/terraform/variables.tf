# Every variable is validated here, so that a typo fails at plan time with the variable's
# name rather than at apply time, or worse on the hosts. Checks across variables are
# preconditions in main.tf (a validation block may name only its own variable before
# Terraform 1.9).
#
# No variable holds a secret: the Rancher secret key and the PagerDuty routing key live in
# SSM parameters (or Secrets Manager secrets) that the operator creates (see README.md);
# Terraform only learns their names, and drover on the instance reads them with the
# instance role.

variable "name" {
  description = "Prefix of every resource name (the group's name starts with \"<name>-\"), and the default value of the group tag that scopes the hosts' IAM permissions."
  type        = string
  default     = "rancher-hosts"

  validation {
    # Used in group, queue, alarm and role names; IAM allows a role name_prefix of 38
    # characters, and "<name>-lifecycle-" is the longest.
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9-]{0,26}$", var.name))
    error_message = "name: letters, digits and '-', at most 27 characters, not starting with '-'."
  }
}

variable "mode" {
  description = "How drover learns of a termination, and so which userdata the hosts get: \"queue\" (the termination hook publishes to an SQS queue shared by the environment's hosts; userdata/asg-sqs.yaml), \"imds\" (no queue: each host watches its own target lifecycle state; userdata/asg-imds.yaml) or \"warm_pool\" (a warm pool, watched through IMDS as well; userdata/asg-warm-pool.yaml)."
  type        = string
  default     = "queue"
  nullable    = false

  validation {
    condition     = contains(["queue", "imds", "warm_pool"], var.mode)
    error_message = "mode must be \"queue\", \"imds\" or \"warm_pool\"."
  }
}

variable "role" {
  description = "The hosts' role: a Rancher host label (role=<role>) set by the userdata, and an instance tag."
  type        = string

  validation {
    # A host label travels in CATTLE_HOST_LABELS (no '&' or '=') and is written into a TOML
    # string by the userdata (no '"', '\\' or line break).
    condition     = can(regex("^[^&=\"\\\\\\s]{1,128}$", var.role))
    error_message = "role: 1 to 128 characters, none of them '&', '=', '\"', '\\' or white space (it becomes the Rancher host label role=<role>)."
  }
}

variable "env" {
  description = "The hosts' environment (prod, staging, ...): a Rancher host label (env=<env>) set by the userdata, and an instance tag."
  type        = string

  validation {
    condition     = can(regex("^[^&=\"\\\\\\s]{1,128}$", var.env))
    error_message = "env: 1 to 128 characters, none of them '&', '=', '\"', '\\' or white space (it becomes the Rancher host label env=<env>)."
  }
}

variable "ami_id" {
  description = "AMI with drover and its systemd unit installed (the userdata only configures it; packaging/bake builds one)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8}([0-9a-f]{9})?$", var.ami_id))
    error_message = "ami_id must be an AMI id, like \"ami-0123456789abcdef0\"."
  }
}

variable "instance_type" {
  description = "Instance type of the hosts."
  type        = string
  default     = "m5.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type, like \"m5.large\"."
  }
}

variable "subnet_ids" {
  description = "Subnets the group launches hosts in; they must reach the Rancher server, SQS, Auto Scaling and SSM (directly or through VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "subnet_ids: at least one subnet id, each like \"subnet-0123456789abcdef0\"."
  }
}

variable "security_group_ids" {
  description = "Security groups of the hosts (Rancher 1.x hosts need UDP 500 and 4500 between each other for the IPsec overlay)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for s in var.security_group_ids : can(regex("^sg-[0-9a-f]{8,17}$", s))])
    error_message = "security_group_ids: each must be a security group id, like \"sg-0123456789abcdef0\"."
  }
}

variable "min_size" {
  description = "Fewest hosts in the group."
  type        = number
  default     = 1

  validation {
    condition     = var.min_size >= 0 && floor(var.min_size) == var.min_size
    error_message = "min_size must be a whole number, 0 or more."
  }
}

variable "max_size" {
  description = "Most hosts in the group (at least min_size)."
  type        = number
  default     = 3

  validation {
    condition     = var.max_size >= 1 && floor(var.max_size) == var.max_size
    error_message = "max_size must be a whole number, 1 or more."
  }
}

variable "desired_capacity" {
  description = "Hosts at creation, between min_size and max_size; afterwards scaling policies or people own it (ignored on later applies)."
  type        = number
  default     = 1

  validation {
    condition     = var.desired_capacity >= 0 && floor(var.desired_capacity) == var.desired_capacity
    error_message = "desired_capacity must be a whole number, 0 or more."
  }
}

variable "rancher_url" {
  description = "The Rancher server's base URL, without /v1 (drover's rancher.url). HTTPS only: the API key travels with every request."
  type        = string

  validation {
    condition     = can(regex("^https://[^/\\s\"\\\\]+(/[^\\s\"\\\\]*)?$", var.rancher_url)) && !can(regex("/(v1|v2-beta)/?$", var.rancher_url))
    error_message = "rancher_url must be an https:// URL without /v1 or /v2-beta at the end, like \"https://rancher.example.com\"."
  }
}

variable "rancher_project_id" {
  description = "The Rancher environment (project) the hosts join, e.g. 1a5 (drover's rancher.project_id)."
  type        = string

  validation {
    condition     = can(regex("^[0-9]+a[0-9]+$", var.rancher_project_id))
    error_message = "rancher_project_id must be a Rancher 1.x project id, like \"1a5\"."
  }
}

variable "rancher_access_key" {
  description = "Access key of a Rancher environment API key (drover's rancher.access_key). It names the key and is not a secret; its secret half is in rancher_secret_key_parameter."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]{1,64}$", var.rancher_access_key))
    error_message = "rancher_access_key: the key's public half, letters and digits only (not the secret key)."
  }
}

variable "secrets_store" {
  description = "Where the hosts read drover's two secrets, and so the one set of secrets permissions the hosts' role gets: \"ssm\" (SecureString parameters under secret_path), \"secrets_manager\" (secrets named with secret_path, read through their /aws/reference/secretsmanager/ parameter) or \"none\" (no secret from AWS: the image or your own user_data brings them)."
  type        = string
  default     = "ssm"
  nullable    = false

  validation {
    condition     = contains(["ssm", "secrets_manager", "none"], var.secrets_store)
    error_message = "secrets_store must be \"ssm\", \"secrets_manager\" or \"none\"."
  }
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
  description = "SSM parameter holding the Rancher API key's secret half: under secret_path (secrets_store = \"ssm\"), or /aws/reference/secretsmanager/<secret_path without its leading '/'><id> (\"secrets_manager\"). Not created here."
  type        = string
  default     = "/drover/rancher-secret-key"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+[^/]$", var.rancher_secret_key_parameter))
    error_message = "rancher_secret_key_parameter must be an SSM parameter name starting with '/', like \"/drover/prod/rancher-secret-key\"."
  }
}

variable "pagerduty_key_parameter" {
  description = "SSM parameter holding the PagerDuty Events v2 routing key, named like rancher_secret_key_parameter. Not created here."
  type        = string
  default     = "/drover/pagerduty-routing-key"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+[^/]$", var.pagerduty_key_parameter))
    error_message = "pagerduty_key_parameter must be an SSM parameter name starting with '/', like \"/drover/prod/pagerduty-routing-key\"."
  }
}

variable "secrets_kms_key_arn" {
  description = "ARN of the customer managed KMS key encrypting the secrets. Empty: any key of this account and region, still only through SSM (or Secrets Manager) and only for the secrets under secret_path (the default aws/ssm key needs no grant at all)."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.secrets_kms_key_arn == "" || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.secrets_kms_key_arn))
    error_message = "secrets_kms_key_arn must be empty or a KMS key ARN, like \"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab\"."
  }
}

variable "user_data" {
  description = "Your own userdata instead of the one mode picks (it must write /etc/drover/drover.toml in write_files; see cloud-init/README.md). Needed with secrets_store = \"none\". Empty: the module's."
  type        = string
  default     = ""
  nullable    = false

  validation {
    # EC2 takes at most 16 KiB of userdata before base64.
    condition     = var.user_data == "" || (startswith(var.user_data, "#cloud-config") && length(var.user_data) <= 16384)
    error_message = "user_data must be empty or cloud-config (starting with \"#cloud-config\") of at most 16384 characters."
  }
}

variable "group_tag_key" {
  description = "Tag key that marks the Auto Scaling groups of one Rancher environment. The hosts may heartbeat and complete lifecycle actions only of groups tagged group_tag_key = group_tag_value: a host completes a peer's hook (drover's lifecycle.handle_peers, the reaper), so every group sharing the environment carries the tag."
  type        = string
  default     = "drover:environment"

  validation {
    # A tag key IAM can name in autoscaling:ResourceTag/<key>, and that instance metadata
    # tags accept (propagated to the instances: no '/' or space).
    condition     = can(regex("^[A-Za-z0-9_.:+=@-]{1,128}$", var.group_tag_key)) && !startswith(lower(var.group_tag_key), "aws:")
    error_message = "group_tag_key: 1 to 128 letters, digits or _ . : + = @ -, not starting with \"aws:\"."
  }
}

variable "group_tag_value" {
  description = "Value of group_tag_key on this group. Empty: name. Give every group of the same Rancher environment the same value."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_.:+=@-]{0,256}$", var.group_tag_value))
    error_message = "group_tag_value: at most 256 letters, digits or _ . : + = @ -."
  }
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

variable "launch_hook" {
  description = "The launching hook: an instance counts as capacity only once drover has registered it in Rancher (CONTINUE), and is replaced when registration fails (ABANDON). null: no launching hook."
  type = object({
    # Longer than drover's agent.register_timeout (5m): drover heartbeats when it is not.
    heartbeat_timeout = optional(number, 600)
    # What happens when drover never answers (it died, or never started).
    default_result = optional(string, "ABANDON")
  })
  default = {}

  validation {
    condition     = var.launch_hook == null || (try(var.launch_hook.heartbeat_timeout >= 30 && var.launch_hook.heartbeat_timeout <= 7200, false) && contains(["ABANDON", "CONTINUE"], try(var.launch_hook.default_result, "")))
    error_message = "launch_hook: heartbeat_timeout 30 to 7200 seconds, default_result \"ABANDON\" or \"CONTINUE\"."
  }
}

variable "warm_pool" {
  description = "The warm pool (mode = \"warm_pool\" only; null there means the defaults). drover does not register a Warmed:* instance; it registers when the instance goes in service."
  type = object({
    pool_state                  = optional(string, "Stopped")
    min_size                    = optional(number, 0)
    max_group_prepared_capacity = optional(number)
    reuse_on_scale_in           = optional(bool, false)
  })
  default = null

  validation {
    # `||` does not short-circuit in Terraform: a null attribute is tested with `?:`, and
    # try() turns any other failure into "not valid".
    condition = var.warm_pool == null || try(
      contains(["Stopped", "Running", "Hibernated"], var.warm_pool.pool_state)
      && var.warm_pool.min_size >= 0
      && (var.warm_pool.max_group_prepared_capacity == null ? true : var.warm_pool.max_group_prepared_capacity >= -1)
      && var.warm_pool.reuse_on_scale_in != null,
      false
    )
    error_message = "warm_pool: pool_state \"Stopped\", \"Running\" or \"Hibernated\"; min_size 0 or more; max_group_prepared_capacity -1 (the group's maximum) or more."
  }
}

variable "instance_refresh" {
  description = "Replace the hosts, a few at a time, when the launch template changes (a new AMI or userdata): each old host is taken out of Rancher by drover through the termination hook. null: no refresh (new launches use the new template)."
  type = object({
    min_healthy_percentage = optional(number, 90)
    instance_warmup        = optional(number)
    skip_matching          = optional(bool, true)
  })
  default = null

  validation {
    condition = var.instance_refresh == null || try(
      var.instance_refresh.min_healthy_percentage >= 0
      && var.instance_refresh.min_healthy_percentage <= 100
      && (var.instance_refresh.instance_warmup == null ? true : var.instance_refresh.instance_warmup >= 0)
      && var.instance_refresh.skip_matching != null,
      false
    )
    error_message = "instance_refresh: min_healthy_percentage 0 to 100, instance_warmup 0 seconds or more."
  }
}

variable "ssm_access" {
  description = "Attach AmazonSSMManagedInstanceCore to the hosts' role, for Session Manager shells and Run Command instead of SSH."
  type        = bool
  default     = false
  nullable    = false

  validation {
    # The type says it all; the check is here so that every variable has one.
    condition     = var.ssm_access == true || var.ssm_access == false
    error_message = "ssm_access must be true or false."
  }
}

variable "oldest_message_alarm_seconds" {
  description = "mode = \"queue\": the alarm fires when the lifecycle queue's oldest message is older than this. A take-out keeps its message for at most drain_timeout (10m) and the hook's completion; an older message is one that nobody handles."
  type        = number
  default     = 900

  validation {
    condition     = var.oldest_message_alarm_seconds >= 60 && var.oldest_message_alarm_seconds <= 172800
    error_message = "oldest_message_alarm_seconds must be 60 to 172800 (the queue keeps messages 2 days)."
  }
}

variable "alarm_actions" {
  description = "ARNs (SNS topics, mostly) told when an alarm fires: the lifecycle queue's oldest message too old, a message in the dead-letter queue. Empty: the alarms exist but tell nobody."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.alarm_actions : can(regex("^arn:aws[a-z-]*:", a))])
    error_message = "alarm_actions: each must be an ARN, like \"arn:aws:sns:us-east-1:123456789012:pager\"."
  }
}

variable "dlq_alarm_actions" {
  description = "Kept for configurations written before alarm_actions: ARNs told only when a message lands in the dead-letter queue."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.dlq_alarm_actions : can(regex("^arn:aws[a-z-]*:", a))])
    error_message = "dlq_alarm_actions: each must be an ARN, like \"arn:aws:sns:us-east-1:123456789012:pager\"."
  }
}

variable "tags" {
  description = "Tags for every resource that takes them. Keys are also instance metadata tags: no spaces or '/' in them (launches fail otherwise)."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition = alltrue([
      for k, v in var.tags :
      can(regex("^[A-Za-z0-9_.:+=@-]{1,128}$", k)) && !startswith(lower(k), "aws:") && length(v) <= 256
    ])
    error_message = "tags: keys of 1 to 128 letters, digits or _ . : + = @ - (no space or '/', not \"aws:...\"), values of at most 256 characters."
  }
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
