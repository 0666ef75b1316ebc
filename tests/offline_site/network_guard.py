"""The test suite's guard against reaching the network, installed in the pytest process by tests/conftest.py and in
every Python process a test starts by this folder's sitecustomize.py (conftest puts this folder on PYTHONPATH).

A connection or name lookup for anything but this machine (loopback, ``localhost``, the host's own name, Unix
sockets) raises at once, naming the address: a hub download in a test fails the test, rather than passing where a
network is at hand or hanging where there is none."""

from __future__ import annotations

import socket

MESSAGE = ("tried to reach {host!r} over the network; tests must not (build what they need locally: tiny_model(), "
           "a tokenizer made in tmp_path)")
_THIS_MACHINE = {"localhost", "::1", "0.0.0.0", "", socket.gethostname()}


def _on_this_machine(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in _THIS_MACHINE or host.startswith(("127.", "::ffff:127."))


def _refuse_remote(address) -> None:
    if isinstance(address, tuple) and not _on_this_machine(address[0]):
        raise RuntimeError("a test " + MESSAGE.format(host=address[0]))


def _guarded(original):
    def connect(self, address):
        _refuse_remote(address)
        return original(self, address)
    connect.network_guard = True
    return connect


def install() -> None:
    """Guards ``socket``'s connections and name lookups in this process (once)."""
    if getattr(socket.socket.connect, "network_guard", False):
        return
    lookup = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host is not None:
            _refuse_remote((host,))
        return lookup(host, *args, **kwargs)

    socket.socket.connect = _guarded(socket.socket.connect)
    socket.socket.connect_ex = _guarded(socket.socket.connect_ex)
    socket.getaddrinfo = getaddrinfo
