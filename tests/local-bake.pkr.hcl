# The image test's local bake (tests/test_image.py): ami/sssrd.pkr.hcl's steps, with a booted
# Debian 12 container in place of the EC2 build instance. A `null` source has no communicator,
# so each step is a shell-local provisioner that reaches into the container itself: files are
# copied into its root from the host, commands run in it through nsenter.

variable "container_pid" {
  type        = string
  description = "Host pid of the container's systemd, whose namespaces the commands enter."
}

variable "root" {
  type        = string
  description = "The container's root directory on the host."
}

variable "ami_dir" {
  type        = string
  description = "The ami/ directory (provision.sh, packages.txt, files/)."
}

variable "deb" {
  type        = string
  description = "The sssrd .deb to install."
}

variable "apt_source" {
  type        = string
  description = "provision.sh's --apt-source: the local repository the host prepared."
}

source "null" "container" {
  communicator = "none"
}

locals {
  # /var/tmp, not the real bake's /tmp: the container's /tmp is a tmpfs the host cannot see.
  upload    = "/var/tmp/sssrd-ami"
  in_root   = "nsenter --target ${var.container_pid} --all env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8"
  provision = "${local.in_root} bash ${local.upload}/provision.sh --apt-source '${var.apt_source}' ${local.upload}/sssrd.deb"
}

build {
  sources = ["source.null.container"]

  # The real bake's file provisioners: this directory and the .deb, uploaded.
  provisioner "shell-local" {
    inline = [
      "mkdir -p ${var.root}${local.upload}",
      "cp -R ${var.ami_dir}/. ${var.root}${local.upload}/",
      "cp ${var.deb} ${var.root}${local.upload}/sssrd.deb",
    ]
  }

  provisioner "shell-local" {
    inline = [local.provision]
  }

  # Again, on the provisioned machine: provision.sh must be idempotent (a re-bake, a repair).
  provisioner "shell-local" {
    inline = [local.provision, "rm -rf ${var.root}${local.upload}"]
  }
}
