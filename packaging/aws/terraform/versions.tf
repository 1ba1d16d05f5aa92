# A module (`source = "git::<repo>//packaging/aws/terraform"`), also usable in place
# (`terraform apply` here, region from AWS_REGION). It has no provider block on purpose: a
# module that configures its own provider cannot be used with count, for_each or
# depends_on, and the caller knows the region and credentials.
terraform {
  # 1.3: optional() object attributes with defaults (warm_pool, launch_hook,
  # instance_refresh) and startswith() in the preconditions.
  required_version = ">= 1.3"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5 and 6 both: the module uses no attribute that 6 removed or deprecated (it reads
      # the region from an ARN instead of data.aws_region, whose `name` 6 deprecates and
      # whose `region` 5 lacks).
      version = ">= 5.0"
    }
  }
}
