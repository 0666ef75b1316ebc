"""The suite's guard against reaching the network (tests/offline_site/network_guard.py, installed by tests/conftest.py):
a hub download fails at once, naming the host, in the test process and in the processes tests start; connections on
this machine (the two-process runs' rendezvous) still work."""

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import OFFLINE_SITE, python_path

_LOOKUP = "import socket; socket.getaddrinfo('huggingface.co', 443)"


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


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("pythonpath", ["inherited", "set by a test"])
def test_a_process_a_test_starts_is_guarded_too(pythonpath, tmp_path):
    env = dict(os.environ) if pythonpath == "inherited" else {**os.environ, "PYTHONPATH": python_path(tmp_path)}
    done = _python(_LOOKUP, env)
    assert done.returncode != 0 and "'huggingface.co' over the network" in done.stderr, done.stderr[-2000:]
    # (this machine still answers there, and the guard's folder is off the process's sys.path)
    done = _python("import socket, sys; socket.getaddrinfo('localhost', 80); print(sys.path)", env)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert str(OFFLINE_SITE) not in done.stdout


def test_the_sitecustomize_it_hides_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['HIDDEN_SITE_RAN'] = '1'\n")
    env = {**os.environ, "PYTHONPATH": python_path(tmp_path)}
    done = _python("import os; print(os.environ.get('HIDDEN_SITE_RAN'))", env)
    assert done.returncode == 0 and done.stdout.strip() == "1" and done.stderr == "", done.stderr[-2000:]
