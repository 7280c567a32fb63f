"""The AMI (ami/): the Packer template validates, and a local bake boots into a working sssrd.

The bake: a Debian 12 container booted under systemd-nspawn (nspawn.py: the packaging test's
cached root, plus what the official Debian AMI has: cloud-init, openssh-server and its host
keys, a machine-id, a random seed) stands in for the EC2 build instance. Debian's packer runs
tests/local-bake.pkr.hcl, a `null` build whose shell-local provisioners upload ami/ and the
.deb `make deb` built (the packaging test's, see conftest.py), then run ami/provision.sh in
the container, twice (it must be idempotent). The container is powered off, as Packer stops
the instance before its snapshot, and the baked root is inspected. Then the same root boots
as instances launched from the image: one with no user data (sssrd must stay down), and one
whose user data is the #cloud-config document of ami/README.md, applied by the real
cloud-init (NoCloud datasource; the one line added is the fake Invoke API's endpoint_url);
sssrd must then serve health, metrics and a page streamed through its Lambda invoker.

Isolation: every boot gets a network namespace of its own (nspawn.NetworkNamespace), so the
image keeps its real ports (8080, 8081, 9090, 9100) and applies its own network sysctls with
no collision with the packaging test, another run of this one, or the host; the test reaches
it by running host tools (curl) inside that namespace. There, before the instance boots, the
test starts the AWS it would see (fake_aws.py): IMDSv2 with a role on 169.254.169.254, and a
Lambda Invoke API running the demo renderer. Without a network, provision.sh installs from a
repository of .debs the host downloaded (offline_apt.py), through its --apt-source option.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nspawn
import offline_apt
import pytest
from system_tools import require, tool

pytestmark = [pytest.mark.timeout(600), pytest.mark.container, pytest.mark.system_tools]

REPO = Path(__file__).resolve().parent.parent
AMI = REPO / "ami"
TEMPLATE = AMI / "sssrd.pkr.hcl"
LOCAL_BAKE = Path(__file__).resolve().parent / "local-bake.pkr.hcl"
FAKE_AWS = Path(__file__).resolve().parent / "fake_aws.py"
UNIT = "sssrd.service"
CONFIG = "etc/sssrd/sssrd.toml"
SYSCTLS = "etc/sysctl.d/60-sssrd.conf"
# What the official Debian AMI has and the packaging test's root lacks: the root the image is
# baked from is the packaging test's package list plus these (one more cached tarball, made
# once per machine by the same nspawn.cached_root, instead of ~40 s of installs every run).
SOURCE_IMAGE_PACKAGES = ("cloud-init", "openssh-server")
NEWER_PACKER_BLOCK = ("# begin: newer-packer", "# end: newer-packer")

REGION = "eu-west-1"
FUNCTION = "render"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:{FUNCTION}"
PRIVATE_IP = "10.0.1.23"
IMDS_ADDRESS = "169.254.169.254"
INVOKE_API = "127.0.0.1:9001"
VIEWER_PORT, ADMIN_PORT, NODE_EXPORTER_PORT = 8080, 9090, 9100
HTTP_TIMEOUT = 30


def packer(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("packer"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        # No version check against HashiCorp's servers; packer's cache stays in the test's dir.
        env={**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(cwd / "cache")},
    )


def template_for_debians_packer(text: str) -> tuple[str, str]:
    """The template without its newer-packer block (which Debian's packer 1.6.6 cannot parse),
    and that block."""
    begin, end = (text.index(marker) for marker in NEWER_PACKER_BLOCK)
    return text[:begin] + text[end + len(NEWER_PACKER_BLOCK[1]) :], text[begin:end]


def test_template_validates_with_debians_packer(tmp_path: Path):
    text, newer = template_for_debians_packer(TEMPLATE.read_text())
    # The block left out holds the two IMDSv2 settings and nothing else.
    lines = (line.strip() for line in newer.splitlines())
    settings = [line for line in lines if line and not line.startswith("#")]
    assert settings == [
        "metadata_options {",
        'http_endpoint               = "enabled"',
        'http_tokens                 = "required"',
        "http_put_response_hop_limit = 1",
        "}",
        'imds_support = "v2.0"',
    ]
    checked = tmp_path / "ami"
    shutil.copytree(AMI, checked)  # path.root must be the real directory's contents
    (checked / TEMPLATE.name).write_text(text)
    deb = tmp_path / "sssrd_0.1.0_amd64.deb"  # only its name is read (the version tag)
    deb.touch()
    variables = ["-var", f"region={REGION}", "-var", f"deb={deb}"]
    for arch in ("amd64", "arm64"):
        validated = packer(
            "validate", *variables, "-var", f"arch={arch}", TEMPLATE.name, cwd=checked
        )
        assert validated.returncode == 0, validated.stdout + validated.stderr
    for template in (TEMPLATE, LOCAL_BAKE):
        formatted = packer("fmt", "-check", "-diff", str(template), cwd=tmp_path)
        assert formatted.returncode == 0, formatted.stdout + formatted.stderr


@dataclass(frozen=True)
class RootFacts:
    """What a root holds that would make two machines launched from it the same machine."""

    machine_id: str
    ssh_host_keys: dict[str, bytes]
    apt_lists: list[str]
    apt_debs: list[str]
    cloud_init_instances: list[str]
    random_seed: bool
    journal_directories: list[str]
    placeholder_config: bool
    nonempty_text_logs: list[str]

    @classmethod
    def of(cls, root: Path) -> RootFacts:
        def names(directory: str, pattern: str = "*") -> list[str]:
            return sorted(path.name for path in (root / directory).glob(pattern))

        logs = root / "var/log"
        text_logs = [
            path
            for path in logs.rglob("*")
            if path.is_file()
            and not path.is_symlink()
            and path.relative_to(logs).parts[0] != "journal"
            # The shutdown record of the stop that follows provisioning, as on EC2.
            and path != logs / "wtmp"
        ]
        return cls(
            machine_id=(root / "etc/machine-id").read_text(),
            ssh_host_keys={
                path.name: path.read_bytes() for path in (root / "etc/ssh").glob("ssh_host_*")
            },
            apt_lists=[
                name for name in names("var/lib/apt/lists") if name not in ("lock", "partial")
            ],
            apt_debs=names("var/cache/apt/archives", "*.deb"),
            cloud_init_instances=names("var/lib/cloud/instances"),
            random_seed=(root / "var/lib/systemd/random-seed").exists(),
            journal_directories=names("var/log/journal"),
            placeholder_config=(root / CONFIG).exists(),
            nonempty_text_logs=sorted(str(path) for path in text_logs if path.stat().st_size),
        )


@dataclass(frozen=True)
class Baked:
    container: nspawn.Container  # powered off; its root is the image
    source: RootFacts  # the root before the bake
    image: RootFacts  # the root after it


def make_source_image(root: Path) -> None:
    """What a booted official Debian AMI has beyond the cached root (which already has its
    cloud-init and openssh-server, whose install made host keys): the random seed systemd
    saves on a VM (systemd-random-seed does not run in a container)."""
    (root / "var/lib/systemd/random-seed").write_bytes(os.urandom(512))


def image_packages() -> list[str]:
    lines = (
        line.partition("#")[0].strip() for line in (AMI / "packages.txt").read_text().splitlines()
    )
    return [line for line in lines if line]


@pytest.fixture(scope="module")
def baked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baked]:
    assert os.geteuid() == 0, "booting a container needs root"
    require(*nspawn.REQUIRED_TOOLS, "packer", "dpkg-scanpackages")
    workdir = tmp_path_factory.mktemp("image")
    name = f"sssrd-image-{os.getpid()}"
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(nspawn.NetworkNamespace(f"{name}-bake"))
        root = nspawn.cached_root((*nspawn.BASE_PACKAGES, *SOURCE_IMAGE_PACKAGES))
        container = stack.enter_context(nspawn.Container(root, workdir, name, network))
        make_source_image(container.root)
        apt_source = offline_apt.repository(container.root, image_packages())
        source = RootFacts.of(container.root)
        built = packer(
            "build",
            "-color=false",
            "-var",
            f"container_pid={container.init_pid}",
            "-var",
            f"root={container.root}",
            "-var",
            f"ami_dir={AMI}",
            "-var",
            f"deb={deb}",
            "-var",
            f"apt_source={apt_source}",
            str(LOCAL_BAKE),
            cwd=workdir,
        )
        assert built.returncode == 0, f"packer build failed:\n{built.stdout[-6000:]}{built.stderr}"
        container.power_off()
        network.close()
        shutil.rmtree(container.root / "var/tmp/sssrd-apt")  # the test's, not the image's
        yield Baked(container, source, RootFacts.of(container.root))


def test_source_image_is_a_machine_of_its_own(baked: Baked):
    # Else the checks on the baked root below could not fail.
    assert baked.source.machine_id.strip()
    assert baked.source.ssh_host_keys
    # (APT lists: the root has none, but provision.sh's own apt-get update makes them.)
    assert baked.source.random_seed
    assert baked.source.journal_directories


def test_baked_root_holds_nothing_of_the_build_machine(baked: Baked):
    image = baked.image
    assert image.machine_id == ""  # empty, not missing: systemd makes one at first boot
    assert image.ssh_host_keys == {}
    assert image.apt_lists == []
    assert image.apt_debs == []
    assert image.cloud_init_instances == []
    assert not image.random_seed
    assert image.journal_directories == []
    assert image.nonempty_text_logs == []


def test_baked_root_has_sssrd_enabled_but_no_config(baked: Baked):
    root = baked.container.root
    assert not baked.image.placeholder_config
    assert (root / "etc/sssrd/sssrd.toml.example").read_text().startswith("# /etc/sssrd/sssrd.toml")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in (UNIT, "prometheus-node-exporter.service", "chrony.service"):
        assert (wants / unit).is_symlink(), unit
    assert (root / "opt/sssrd/bin/sssrd").exists()


@dataclass(frozen=True)
class Instance:
    container: nspawn.Container
    network: nspawn.NetworkNamespace

    def boot(self) -> None:
        self.container.boot(self.network)


@contextlib.contextmanager
def launched(baked: Baked, name: str) -> Iterator[Instance]:
    """The image as an instance about to boot, with a network namespace of its own (where the
    caller may first start what the instance should find); powered off on leaving."""
    with nspawn.NetworkNamespace(f"{baked.container.name}-{name}") as network:
        try:
            yield Instance(baked.container, network)
        finally:
            baked.container.power_off()


def curl(network: nspawn.NetworkNamespace, url: str, *options: str) -> tuple[int, str, bytes]:
    """(status, response head, body) of a GET from inside the namespace; status 0: no answer."""
    result = subprocess.run(
        network.command(
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            str(HTTP_TIMEOUT),
            "--dump-header",
            "/dev/stderr",
            "--output",
            "-",
            "--write-out",
            "%{stderr}%{http_code}",
            *options,
            url,
        ),
        capture_output=True,
        timeout=HTTP_TIMEOUT + 10,
    )
    head, _, status = result.stderr.decode(errors="replace").rpartition("\n")
    return (int(status) if status.isdigit() else 0), head, result.stdout


def test_an_instance_without_user_data_never_serves_health(baked: Baked):
    with launched(baked, "unconfigured") as instance:
        instance.boot()
        container = instance.container
        assert container.systemctl("is-enabled", UNIT) == "enabled"
        assert container.systemctl("is-active", UNIT, check=False) == "inactive"
        assert container.unit_property(UNIT, "ConditionResult") == "no"
        assert container.unit_property(UNIT, "LogRateLimitIntervalUSec") == "0"  # the drop-in
        status, head, _ = curl(instance.network, f"http://127.0.0.1:{VIEWER_PORT}/healthz")
        assert status == 0, head  # nothing listens: the ALB health check fails
        # The first boot made the machine its own: a machine-id of its own.
        machine_id = (container.root / "etc/machine-id").read_text().strip()
        assert machine_id and machine_id != baked.source.machine_id.strip()


def user_data(endpoint_url: str) -> str:
    """The first-boot contract of ami/README.md, as the CDK app writes it. The one line the
    test adds is endpoint_url: the Invoke API is the fake one in the instance's namespace."""
    settings = [
        'invoker = "lambda"',
        f'function = "{FUNCTION_ARN}"',
        'qualifier = "live"',
        f'region = "{REGION}"',
        'callback_url = "auto"',
        'admin_listen = "0.0.0.0:9090"',
        f'endpoint_url = "{endpoint_url}"',
    ]
    content = "".join(f"      {line}\n" for line in settings)
    return (
        "#cloud-config\n"
        "write_files:\n"
        "  - path: /etc/sssrd/sssrd.toml\n"
        "    owner: root:root\n"
        '    permissions: "0644"\n'
        "    content: |\n"
        f"{content}"
        'runcmd: [["systemctl", "restart", "sssrd.service"]]\n'
    )


def give_user_data(root: Path, document: str) -> None:
    """What EC2 does for cloud-init, done with a NoCloud seed: the same document, as the
    instance's user data, under an instance id of its own."""
    seed = root / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True)
    (seed / "user-data").write_text(document)
    (seed / "meta-data").write_text("instance-id: i-0123456789abcdef0\nlocal-hostname: sssrd-1\n")
    # Look only there, leave the container's network alone, and keep the root's locale (the
    # bare root generates none, so cloud-init's default en_US.UTF-8 could not be set).
    (root / "etc/cloud/cloud.cfg.d/99-image-test.cfg").write_text(
        "datasource_list: [NoCloud]\nnetwork: {config: disabled}\nlocale: C.UTF-8\n"
    )


@pytest.fixture(scope="module")
def configured(baked: Baked) -> Iterator[Instance]:
    with launched(baked, "configured") as instance:
        for address in (IMDS_ADDRESS, PRIVATE_IP):
            instance.network.ip("address", "add", f"{address}/32", "dev", "lo")
        fakes = subprocess.Popen(
            instance.network.command(
                sys.executable,
                str(FAKE_AWS),
                "--imds",
                f"{IMDS_ADDRESS}:80",
                "--private-ip",
                PRIVATE_IP,
                "--lambda",
                INVOKE_API,
                "--region",
                REGION,
                "--function",
                FUNCTION,
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert fakes.stdout is not None
            assert fakes.stdout.readline().strip() == "ready"  # both listen: boot the instance
            give_user_data(instance.container.root, user_data(f"http://{INVOKE_API}"))
            instance.boot()
            # Returns once cloud-init's last stage (runcmd) is over; its verdict is checked below.
            instance.container.run("cloud-init", "status", "--wait", timeout=120, check=False)
            yield instance
        finally:
            fakes.terminate()
            fakes.wait(timeout=30)


def journal(container: nspawn.Container, unit: str = UNIT) -> str:
    return container.run("journalctl", "--unit", unit, "--output", "cat", "--no-pager").stdout


def test_cloud_init_applies_the_user_data_and_starts_sssrd(configured: Instance):
    container = configured.container
    status = container.run("cloud-init", "status", "--long", check=False).stdout
    assert "status: done" in status, status
    config = (container.root / CONFIG).read_text()
    assert f'function = "{FUNCTION_ARN}"' in config
    assert container.systemctl("is-active", UNIT, check=False) == "active", journal(container)


def test_configured_instance_serves_health_and_a_page_streamed_through_lambda(
    configured: Instance,
):
    status, _, body = curl(configured.network, f"http://127.0.0.1:{VIEWER_PORT}/healthz")
    assert status == 200, body
    # The demo renderer runs in the fake Lambda and posts the page to the callback URL sssrd
    # advertised: the private address it learnt from IMDSv2 (the only one the fake knows).
    status, head, page = curl(
        configured.network, f"http://{PRIVATE_IP}:{VIEWER_PORT}/?lines=3&delay_ms=0"
    )
    assert status == 200, (head, page, journal(configured.container))
    assert "transfer-encoding: chunked" in head.lower()
    assert b"Line 3 of 3" in page
    assert page.rstrip().endswith(b"</html>")


def test_configured_instance_serves_metrics_on_every_address(configured: Instance):
    # admin_listen = "0.0.0.0:9090" from the user data (the default is loopback only).
    status, _, metrics = curl(configured.network, f"http://{PRIVATE_IP}:{ADMIN_PORT}/metrics")
    assert status == 200
    assert b"sssrd_requests_total" in metrics
    status, _, host_metrics = curl(
        configured.network, f"http://{PRIVATE_IP}:{NODE_EXPORTER_PORT}/metrics"
    )
    assert status == 200
    assert b"node_exporter_build_info" in host_metrics


def test_configured_instance_booted_with_the_images_sysctls(configured: Instance):
    wanted = {}
    for line in (configured.container.root / SYSCTLS).read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith("#"):
            wanted[key.strip()] = " ".join(value.split())
    assert len(wanted) >= 6
    found = {
        key: " ".join(configured.container.run("sysctl", "--values", key).stdout.split())
        for key in wanted
    }
    assert found == wanted


def test_configured_instance_has_ssh_host_keys_of_its_own(configured: Instance, baked: Baked):
    root = configured.container.root
    keys = {path.name: path.read_bytes() for path in (root / "etc/ssh").glob("ssh_host_*_key")}
    assert keys  # cloud-init made them at the instance's first boot
    assert not set(keys.values()) & set(baked.source.ssh_host_keys.values())
