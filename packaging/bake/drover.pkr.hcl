# Packer template: an EBS-backed AMI with Docker, drover and the rancher/agent image baked
# in, drover.service enabled for the instances' first boot, named and tagged with drover's
# version. Build the .deb first (packaging/build.sh deb), then:
#
#   packer init packaging/bake && packer build -var region=us-east-1 \
#     -var drover_version=0.1.0 -var agent_image=rancher/agent:v1.2.11@sha256:... packaging/bake
#
# Launch instances of it with one of the cloud-init/ userdata files; packaging/aws/terraform
# wires a launch template, group, queue and hook around it.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type        = string
  description = "Region the AMI is built in."
}

variable "drover_version" {
  type        = string
  description = "drover's version, as `drover --version` prints it: the AMI's name and its drover:version tag. install.sh refuses a .deb of another version."
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+([-+~][0-9A-Za-z.+~-]+)?$", var.drover_version))
    error_message = "The drover_version must be a version such as 0.1.0."
  }
}

variable "deb" {
  type        = string
  description = "The drover .deb to bake in; empty: target/debian/drover_<drover_version>-1_amd64.deb."
  default     = ""
}

variable "agent_image" {
  type        = string
  description = "The rancher/agent image pulled into the AMI, the same reference as agent.image in drover.toml; pin it by digest (name@sha256:... or name:tag@sha256:...) so that every instance runs the same bytes."
  default     = "rancher/agent:v1.2.11"
}

locals {
  deb = var.deb != "" ? var.deb : "target/debian/drover_${var.drover_version}-1_amd64.deb"
  tags = {
    Name                 = "drover-host"
    "drover:version"     = var.drover_version
    "drover:agent-image" = var.agent_image
  }
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

source "amazon-ebs" "drover" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "drover-host-${var.drover_version}-{{timestamp}}"
  ssh_username  = "admin"
  # The AMI and its snapshots say which drover (and which agent) they carry.
  tags          = local.tags
  snapshot_tags = local.tags

  # Debian 12, from Debian's own account; Ubuntu 22.04+ works too (ssh_username "ubuntu").
  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["136693071363"]
    most_recent = true
  }

  # Instances launched from the AMI default to IMDSv2 only, as drover expects.
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
}

build {
  sources = ["source.amazon-ebs.drover"]

  provisioner "file" {
    source      = local.deb
    destination = "/tmp/drover.deb"
  }

  # install.sh installs Docker, the AWS CLI and the package, checks drover is the version
  # the AMI is tagged with, enabled and not running, pulls the agent image, and removes the
  # build VM's state before the snapshot.
  provisioner "shell" {
    script = "${path.root}/install.sh"
    environment_vars = [
      "DROVER_DEB=/tmp/drover.deb",
      "DROVER_VERSION=${var.drover_version}",
      "DROVER_AGENT_IMAGE=${var.agent_image}",
    ]
    execute_command = "sudo -E sh -eu '{{ .Path }}'"
  }
}
