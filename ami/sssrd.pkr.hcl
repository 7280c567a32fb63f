# The sssrd AMI: the official Debian 12 AMI, provisioned by provision.sh with sssrd's .deb.
# How to bake for real, and the first-boot contract the instance's user data follows:
# README.md beside this file.
#
# Written for both Debian's packer 1.6.6 (CI validates with it) and current Packer with the
# Amazon plugin: hence no `packer { required_plugins }` and no `data` blocks here, and the two
# IMDSv2 settings 1.6.6 does not know sit between the `newer-packer` markers below (CI's
# validation leaves exactly that block out).

variable "region" {
  type        = string
  description = "Region the build instance runs in and the AMI is registered in first."
}

variable "arch" {
  type        = string
  default     = "amd64"
  description = "Debian architecture of the image: amd64 or arm64 (the .deb must match)."
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance type; empty picks one for arch (t3.small or t4g.small)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty uses the default VPC."
}

variable "ssh_source_cidrs" {
  type        = list(string)
  default     = ["0.0.0.0/0"]
  description = "Who may reach the build instance's SSH port (Packer's own temporary key)."
}

variable "deb" {
  type        = string
  description = "The sssrd .deb to install (make deb): dist/sssrd_<version>_<arch>.deb."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Further regions the finished AMI is copied to."
}

variable "volume_size" {
  type        = number
  default     = 8
  description = "Root volume (gp3, encrypted) in GiB."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the root volume; empty uses the account's default EBS key."
}

variable "git_revision" {
  type        = string
  default     = "unknown"
  description = "The sssrd commit the .deb was built from (tagged on the AMI)."
}

variable "manifest" {
  type        = string
  default     = "dist/ami-manifest.json"
  description = "Where the manifest post-processor writes the AMI ids per region."
}

locals {
  # The .deb's file name carries the version: sssrd_<version>_<arch>.deb.
  sssrd_version = split("_", basename(var.deb))[1]
  now           = timestamp()
  built_at      = formatdate("YYYY-MM-DD'T'hh:mm:ssZ", local.now)
  instance_type = var.instance_type != "" ? var.instance_type : (
    var.arch == "arm64" ? "t4g.small" : "t3.small"
  )
  tags = {
    Name          = "sssrd ${local.sssrd_version} ${var.arch}"
    sssrd_version = local.sssrd_version
    source_ami    = "{{ .SourceAMI }}"
    source_name   = "{{ .SourceAMIName }}"
    git_revision  = var.git_revision
    built_at      = local.built_at
  }
}

source "amazon-ebs" "sssrd" {
  region        = var.region
  ami_regions   = var.ami_regions
  instance_type = local.instance_type
  subnet_id     = var.subnet_id

  # The official Debian 12 AMI, newest first (Debian's account; names debian-12-<arch>-<date>).
  source_ami_filter {
    owners      = ["136693071363"]
    most_recent = true
    filters = {
      name                = "debian-12-${var.arch}-*"
      architecture        = var.arch == "arm64" ? "arm64" : "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
  }

  ssh_username                          = "admin"
  ssh_timeout                           = "10m"
  ssh_clear_authorized_keys             = true
  temporary_security_group_source_cidrs = var.ssh_source_cidrs

  # An encrypted gp3 root: the AMI's snapshot is made from it, so it is encrypted too.
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_type           = "gp3"
    volume_size           = var.volume_size
    iops                  = 3000 # gp3's baseline, free of charge
    throughput            = 125
    encrypted             = true
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }

  ami_name        = "sssrd-${local.sssrd_version}-${var.arch}-${formatdate("YYYYMMDD-hhmmss", local.now)}"
  ami_description = "sssrd ${local.sssrd_version} on Debian 12 (${var.arch})"
  ena_support     = true
  sriov_support   = true
  tags            = local.tags
  snapshot_tags   = local.tags
  run_tags        = merge(local.tags, { Name = "sssrd image build" })

  # begin: newer-packer (Amazon plugin >= 1.2.2; Debian's packer 1.6.6 knows neither setting)
  # IMDSv2 only, on the build instance and on every instance launched from the AMI: a token
  # is needed for every metadata read, so a forwarded request cannot steal the role.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"
  # end: newer-packer
}

build {
  sources = ["source.amazon-ebs.sssrd"]

  # Upload this directory (provision.sh, packages.txt, files/) and the .deb, then provision.
  provisioner "shell" {
    inline = ["mkdir -p /tmp/sssrd-ami"]
  }
  provisioner "file" {
    source      = "${path.root}/"
    destination = "/tmp/sssrd-ami"
  }
  provisioner "file" {
    source      = var.deb
    destination = "/tmp/sssrd-ami/sssrd.deb"
  }
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }}"
    inline = [
      "bash /tmp/sssrd-ami/provision.sh /tmp/sssrd-ami/sssrd.deb",
      "rm -rf /tmp/sssrd-ami",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest
    strip_path = true
    custom_data = {
      sssrd_version = local.sssrd_version
      git_revision  = var.git_revision
      arch          = var.arch
    }
  }
}
