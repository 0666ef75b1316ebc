"""The suite's guard against reaching the network (tests/conftest.py): a hub download fails at once, naming the host;
connections on this machine (the two-process runs' rendezvous) still work."""

import socket

import pytest


@pytest.mark.parametrize("connect", [
    lambda: socket.create_connection(("huggingface.co", 443), timeout=5),
    lambda: socket.getaddrinfo("huggingface.co", 443),
    lambda: socket.socket().connect_ex(("10.1.2.3", 80)),
], ids=["create_connection", "getaddrinfo", "connect_ex"])
def test_a_remote_address_is_refused(connect):
    with pytest.raises(RuntimeError, match="huggingface.co|10.1.2.3"):
        connect()


def test_a_hub_download_is_refused(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import hf_hub_download

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as where a user sets it
    with pytest.raises(Exception) as caught:
        hf_hub_download("openai-community/gpt2", "config.json", cache_dir=tmp_path, force_download=True)
    chain, error = [], caught.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    assert any("over the network" in link for link in chain), chain


def test_this_machine_is_reachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80)
