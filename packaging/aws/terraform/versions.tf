# An example, usable in place (`terraform apply` here, region from AWS_REGION) or as a module
# (`source = "git::<repo>//packaging/aws/terraform"`). It has no provider block on purpose:
# a module that configures its own provider cannot be used with count, for_each or
# depends_on, and the caller knows the region and credentials.
terraform {
  # 1.3: optional() object attributes (warm_pool) and startswith() in the preconditions.
  required_version = ">= 1.3"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # The major version this example is written and checked against.
      version = "~> 5.0"
    }
  }
}
