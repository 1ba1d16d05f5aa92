# Packer template: an EBS-backed AMI with Docker and drover baked in, drover.service enabled
# for the instances' first boot. Build the .deb first (packaging/build.sh deb), then:
#
#   packer init packaging/bake && packer build -var region=us-east-1 packaging/bake
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

variable "deb" {
  type        = string
  description = "The drover .deb to bake in."
  default     = "target/debian/drover_0.1.0-1_amd64.deb"
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

source "amazon-ebs" "drover" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "drover-host-{{timestamp}}"
  ssh_username  = "admin"

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
    source      = var.deb
    destination = "/tmp/drover.deb"
  }

  # install.sh installs Docker, the AWS CLI and the package, checks drover is enabled and
  # not running, and removes the build VM's state before the snapshot.
  provisioner "shell" {
    script           = "${path.root}/install.sh"
    environment_vars = ["DROVER_DEB=/tmp/drover.deb"]
    execute_command  = "sudo -E sh -eu '{{ .Path }}'"
  }
}
