"""sssrd.systemd against real sockets: notify datagrams, watchdog settings, socket activation.

Socket activation is exercised in a child Python process that is given real listening sockets
at descriptors 3, 4, ... exactly as systemd would hand them over, with LISTEN_PID set to its own
pid; the parent then connects to each socket and learns which name the child adopted it under.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from sssrd.systemd import Notifier, listen_fds, watchdog_interval

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def path_socket(tmp_path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    receiver.bind(address)
    receiver.settimeout(10)  # a bound on a failing test, not a synchronisation
    yield address, receiver
    receiver.close()


@pytest.fixture
def abstract_socket():
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"sssrd-test-{uuid.uuid4().hex}"
    receiver.bind("\0" + name)
    receiver.settimeout(10)
    yield "@" + name, receiver
    receiver.close()


def receive_fields(receiver: socket.socket) -> dict[str, str]:
    datagram = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in datagram.split("\n"))


def test_notifier_sends_each_state_as_one_datagram_to_a_path_socket(path_socket):
    address, receiver = path_socket
    environ = {"NOTIFY_SOCKET": address, "OTHER": "kept"}
    notifier = Notifier.from_environment(environ)
    try:
        assert notifier.enabled
        notifier.ready(status="listening on :8080")
        notifier.status("3 streams, 1 pending")
        notifier.watchdog()
        notifier.stopping()
        assert receive_fields(receiver) == {"READY": "1", "STATUS": "listening on :8080"}
        assert receive_fields(receiver) == {"STATUS": "3 streams, 1 pending"}
        assert receive_fields(receiver) == {"WATCHDOG": "1"}
        assert receive_fields(receiver) == {"STOPPING": "1"}
    finally:
        notifier.close()


def test_notify_socket_is_removed_from_the_environment_so_children_do_not_inherit_it(
    path_socket,
):
    address, _ = path_socket
    environ = {"NOTIFY_SOCKET": address, "OTHER": "kept"}
    Notifier.from_environment(environ).close()
    assert environ == {"OTHER": "kept"}


def test_notifier_reaches_an_abstract_namespace_socket_named_with_at(abstract_socket):
    address, receiver = abstract_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    try:
        notifier.ready()
        notifier.stopping()
        assert receive_fields(receiver) == {"READY": "1"}
        assert receive_fields(receiver) == {"STOPPING": "1"}
    finally:
        notifier.close()


def test_reloading_carries_the_monotonic_time_of_the_request(path_socket):
    address, receiver = path_socket
    notifier = Notifier(address)
    try:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = receive_fields(receiver)
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= after
    finally:
        notifier.close()


def test_extend_timeout_is_sent_in_microseconds(path_socket):
    address, receiver = path_socket
    notifier = Notifier(address)
    try:
        notifier.extend_timeout(2.5)
        assert receive_fields(receiver) == {"EXTEND_TIMEOUT_USEC": "2500000"}
        with pytest.raises(ValueError, match="positive"):
            notifier.extend_timeout(0)
    finally:
        notifier.close()


def test_custom_fields_are_joined_into_one_datagram(path_socket):
    address, receiver = path_socket
    notifier = Notifier(address)
    try:
        notifier.notify(STATUS="draining", MAINPID=1234)
        assert receiver.recv(4096) == b"STATUS=draining\nMAINPID=1234"
    finally:
        notifier.close()


def test_a_field_containing_a_newline_is_refused_rather_than_corrupting_the_message(path_socket):
    address, receiver = path_socket
    notifier = Notifier(address)
    try:
        with pytest.raises(ValueError, match="STATUS"):
            notifier.status("line one\nREADY=1")
        notifier.watchdog()
        assert receive_fields(receiver) == {"WATCHDOG": "1"}
    finally:
        notifier.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_without_a_usable_notify_socket_the_notifier_is_a_silent_no_op(environ):
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    notifier.ready("ignored")
    notifier.watchdog()
    notifier.stopping()
    assert "NOTIFY_SOCKET" not in environ


def test_a_failed_send_is_logged_at_debug_and_never_raised(tmp_path, caplog):
    missing = str(tmp_path / "gone.sock")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": missing})
    try:
        assert notifier.enabled
        with caplog.at_level(logging.DEBUG, logger="sssrd"):
            notifier.ready()
        assert any(
            record.levelno == logging.DEBUG and missing in record.getMessage()
            for record in caplog.records
        )
    finally:
        notifier.close()


def test_watchdog_interval_is_half_the_timeout_and_the_variables_are_removed():
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "kept"}
    assert watchdog_interval(environ) == 15.0
    assert environ == {"OTHER": "kept"}


def test_watchdog_interval_without_a_pid_applies_to_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "1000000"}) == 0.5


def test_watchdog_meant_for_another_process_is_ignored_but_still_removed():
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(environ) is None
    assert environ == {}


def test_no_watchdog_configured_gives_none():
    assert watchdog_interval({}) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "5", "WATCHDOG_PID": "x"},
    ],
)
def test_malformed_watchdog_settings_raise_a_clear_error(environ):
    with pytest.raises(ValueError, match="WATCHDOG_"):
        watchdog_interval(environ)


def test_listen_fds_without_socket_activation_is_empty():
    assert listen_fds({}) == {}


def test_listen_fds_meant_for_another_process_are_ignored_and_removed():
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(environ) == {}
    assert environ == {}


def test_listen_fds_with_zero_descriptors_is_empty():
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert listen_fds(environ) == {}
    assert environ == {}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "LISTEN_PID"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "two"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "viewer"}, "LISTEN_FDNAMES"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "0", "LISTEN_FDNAMES": "viewer"}, "LISTEN_FDNAMES"),
    ],
)
def test_malformed_socket_activation_settings_raise_a_clear_error(environ, message):
    environ = {key: value.format(pid=os.getpid()) for key, value in environ.items()}
    with pytest.raises(ValueError, match=message):
        listen_fds(environ)
    assert not any(key.startswith("LISTEN_") for key in environ)


# The child moves the descriptors it was given to 3, 4, ... (clearing close-on-exec, as systemd
# leaves them), sets LISTEN_PID to its own pid, adopts them with listen_fds and reports what it
# got; then it accepts one connection per listening socket and answers with the socket's name.
ACTIVATED_CHILD = textwrap.dedent(
    """
    import fcntl, json, os, sys
    from sssrd.systemd import listen_fds

    spec = json.loads(sys.argv[1])
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in spec["fds"]]
    for fd in spec["fds"]:
        os.close(fd)
    for offset, fd in enumerate(parked):
        os.dup2(fd, 3 + offset, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(parked))
    if spec["names"] is not None:
        os.environ["LISTEN_FDNAMES"] = spec["names"]
    try:
        adopted = listen_fds()
    except ValueError as error:
        print(json.dumps({"error": str(error)}), flush=True)
        sys.exit(0)
    report = {
        "left_in_environment": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        "sockets": [
            {
                "name": name,
                "fd": sock.fileno(),
                "family": int(sock.family),
                "type": int(sock.type),
                "cloexec": bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
            }
            for name, socks in adopted.items()
            for sock in socks
        ],
    }
    print(json.dumps(report), flush=True)
    for name, socks in adopted.items():
        for sock in socks:
            connection, _ = sock.accept()
            connection.sendall(name.encode())
            connection.close()
    """
)


def run_activated_child(descriptors, names):
    """Start the child with these sockets (or raw fds) handed over as LISTEN_FDS."""
    fds = [item if isinstance(item, int) else item.fileno() for item in descriptors]
    spec = json.dumps({"fds": fds, "names": names})
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        environment.pop(variable, None)
    return subprocess.Popen(
        [sys.executable, "-c", ACTIVATED_CHILD, spec],
        pass_fds=fds,
        stdout=subprocess.PIPE,
        env=environment,
        text=True,
    )


def tcp_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def unix_listener(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    return listener


def name_answered_by(address, family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(address)
        return client.recv(100).decode()


@pytest.mark.daemon
def test_activated_sockets_are_adopted_by_name_and_accept_connections(tmp_path):
    viewer, callback, admin = tcp_listener(), tcp_listener(), unix_listener(tmp_path / "admin")
    addresses = [viewer.getsockname(), callback.getsockname(), admin.getsockname()]
    child = run_activated_child([viewer, callback, admin], "viewer:callback:admin")
    try:
        for sock in (viewer, callback, admin):
            sock.close()  # the child now holds the only copies
        report = json.loads(child.stdout.readline())
        assert report["left_in_environment"] == []
        assert report["sockets"] == [
            {"name": "viewer", "fd": 3, "family": socket.AF_INET, "type": socket.SOCK_STREAM,
             "cloexec": True},
            {"name": "callback", "fd": 4, "family": socket.AF_INET, "type": socket.SOCK_STREAM,
             "cloexec": True},
            {"name": "admin", "fd": 5, "family": socket.AF_UNIX, "type": socket.SOCK_STREAM,
             "cloexec": True},
        ]  # fmt: skip
        assert name_answered_by(addresses[0]) == "viewer"
        assert name_answered_by(addresses[1]) == "callback"
        assert name_answered_by(addresses[2], socket.AF_UNIX) == "admin"
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()


@pytest.mark.daemon
def test_activated_sockets_without_names_are_all_unknown_and_share_one_name():
    first, second = tcp_listener(), tcp_listener()
    addresses = [first.getsockname(), second.getsockname()]
    child = run_activated_child([first, second], None)
    try:
        first.close()
        second.close()
        report = json.loads(child.stdout.readline())
        assert [(entry["name"], entry["fd"]) for entry in report["sockets"]] == [
            ("unknown", 3),
            ("unknown", 4),
        ]
        assert [name_answered_by(address) for address in addresses] == ["unknown", "unknown"]
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()


@pytest.mark.daemon
def test_a_passed_descriptor_that_is_not_a_socket_is_a_clear_error():
    read_end, write_end = os.pipe()
    try:
        child = run_activated_child([read_end], "x")
        try:
            report = json.loads(child.stdout.readline())
            assert "fd 3" in report["error"]
            assert "'x'" in report["error"]
            assert child.wait(timeout=30) == 0
        finally:
            child.kill()
            child.wait()
    finally:
        os.close(read_end)
        os.close(write_end)
