"""``inspect``'s output formats: ``dead-letters --json`` is one JSON document with
binary values kept losslessly; ``state`` on a missing stream warns and exits 0."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from shop_adapters import inspector
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import DeadLetter, Position
from shop_adapters.shop_domain.wire import encode_event
from shop_core import TopUp

pytestmark = pytest.mark.redis

BINARY = b"\x92\xff\x00not utf-8"


def test_no_dead_letters_is_an_empty_json_array(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    result = CliRunner().invoke(
        inspector.cli, ["--redis-url", redis_server.url, "dead-letters", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_dead_letters_json_is_one_document_and_lossless(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    log = RedisStreamLog(redis_client, "orders")
    log.dead_letter(DeadLetter(Position(1, 0), {b"type": b"TopUp", b"data": BINARY}, "bad"))
    log.dead_letter(DeadLetter(Position(2, 0), {b"\xfe": b"caf\xc3\xa9"}, "worse"))
    result = CliRunner().invoke(
        inspector.cli, ["--redis-url", redis_server.url, "dead-letters", "--json"]
    )
    assert result.exit_code == 0, result.output
    letters = json.loads(result.stdout)  # one valid document
    assert letters == [
        {
            "position": "1-0",
            "reason": "bad",
            "fields": [
                ["type", "TopUp"],
                ["data", {"base64": base64.b64encode(BINARY).decode()}],
            ],
        },
        {"position": "2-0", "reason": "worse", "fields": [[{"base64": "/g=="}, "café"]]},
    ]
    text = CliRunner().invoke(inspector.cli, ["--redis-url", redis_server.url, "dead-letters"])
    assert text.exit_code == 0
    assert repr(BINARY) in text.stdout and "café" in text.stdout
    assert "\ufffd" not in text.stdout  # nothing replaced


def test_state_of_a_missing_stream_warns_and_exits_0(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    result = CliRunner().invoke(
        inspector.cli, ["--redis-url", redis_server.url, "--stream", "nope", "state", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "stream nope does not exist or is empty" in result.stderr
    assert json.loads(result.stdout)["position"] == "0-0"
    redis_client.xadd("yes", encode_event(TopUp(1, 5)))  # type: ignore[arg-type]
    present = CliRunner().invoke(
        inspector.cli, ["--redis-url", redis_server.url, "--stream", "yes", "state"]
    )
    assert present.exit_code == 0 and "does not exist" not in present.stderr


def test_the_help_documents_the_output_formats_and_connects_to_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    for command, needle in (("dead-letters", "base64"), ("state", "digest"), ("verify", "Exit 0")):
        shown = CliRunner().invoke(inspector.cli, [command, "--help"])
        assert needle in shown.output, shown.output
    # --help must not start the embedded Redis in ./.shop-data.
    assert not (tmp_path / ".shop-data").exists()
