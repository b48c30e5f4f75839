"""queue.yaml loading and the retry policy (backoff, limits) with App Engine's defaults."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import (
    QueueConfig,
    RetryParameters,
    RetryPolicy,
    _queue_yaml,
    describe_queue_yaml,
    format_rate,
    load_queue_yaml,
)

FULL = """\
total_storage_limit: 120M
queue:
- name: default
  rate: 1/s
- name: mail
  rate: 10/m
  bucket_size: 20
  max_concurrent_requests: 3
  target: v2.worker
  retry_parameters:
    task_retry_limit: 7
    task_age_limit: 2d
    min_backoff_seconds: 10
    max_backoff_seconds: 200
    max_doublings: 2
- name: slow
  rate: 1/h
- name: paused
  rate: 0
- name: inbox
  mode: pull
  acl:
  - user_email: someone@example.com
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "queue.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_full_file(tmp_path: Path) -> None:
    """Every supported key is read, with rates in tasks per second and ages in seconds."""
    queues = load_queue_yaml(_write(tmp_path, FULL))
    assert list(queues) == ["default", "mail", "slow", "paused", "inbox"]
    mail = queues["mail"]
    assert mail.rate == pytest.approx(10 / 60)
    assert (mail.bucket_size, mail.max_concurrent_requests, mail.target) == (20, 3, "v2.worker")
    assert mail.retry_parameters == RetryParameters(
        task_retry_limit=7,
        task_age_limit=2 * 86400.0,
        min_backoff_seconds=10.0,
        max_backoff_seconds=200.0,
        max_doublings=2,
    )
    assert queues["default"].rate == 1.0
    assert queues["slow"].rate == pytest.approx(1 / 3600)
    assert queues["paused"].paused
    assert queues["inbox"].mode == "pull"
    assert mail.source == str(tmp_path / "queue.yaml")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty file"),
        pytest.param("queue:\n", id="empty queue list"),
        pytest.param("queue:\n- name: other\n  rate: 5/s\n", id="only another queue"),
    ],
)
def test_default_queue_always_exists(tmp_path: Path, text: str) -> None:
    """`default` is present at 5/s with bucket 5 when the file does not define it."""
    default = load_queue_yaml(_write(tmp_path, text))["default"]
    assert (default.rate, default.bucket_size, default.mode) == (5.0, 5, "push")


BAD_FILES = [
    pytest.param("queue:\n- name: a\n  rate: 5/x\n", 3, "rate", id="rate with unit x"),
    pytest.param("queue:\n- name: a\n  rate: fast\n", 3, "rate", id="rate not a number"),
    pytest.param("queue:\n- name: a\n  rate: -1/s\n", 3, "rate", id="negative rate"),
    pytest.param("queue:\n- name: a\n  colour: red\n", 3, "colour", id="unknown queue key"),
    pytest.param("queues:\n- name: a\n", 1, "queues", id="unknown top-level key"),
    pytest.param("queue:\n- rate: 5/s\n", 2, "no name", id="queue without name"),
    pytest.param("queue:\n- name: a_b\n", 2, "name", id="underscore in queue name"),
    pytest.param("queue:\n- name: a\n- name: a\n", 3, "twice", id="queue defined twice"),
    pytest.param("queue:\n- name: a\n  bucket_size: 0\n", 3, "bucket_size", id="bucket of 0"),
    pytest.param("queue:\n- name: a\n  bucket_size: 501\n", 3, "bucket_size", id="bucket over 500"),
    pytest.param(
        "queue:\n- name: a\n  max_concurrent_requests: 0\n",
        3,
        "max_concurrent_requests",
        id="zero concurrency",
    ),
    pytest.param("queue:\n- name: a\n  mode: poll\n", 3, "mode", id="unknown mode"),
    pytest.param("queue:\n- name: a\n  target: Bad_Target\n", 3, "target", id="bad target"),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    min_backoff_seconds: -1\n",
        4,
        "min_backoff_seconds",
        id="negative backoff",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    task_retry_limit: -1\n",
        4,
        "task_retry_limit",
        id="negative retry limit",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    task_age_limit: 2w\n",
        4,
        "task_age_limit",
        id="age limit in weeks",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    task_age_limit: 0s\n",
        4,
        "task_age_limit",
        id="zero age limit",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    max_doublings: 1.5\n",
        4,
        "max_doublings",
        id="fractional doublings",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    max_tries: 3\n",
        4,
        "max_tries",
        id="unknown retry key",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n"
        "    min_backoff_seconds: 10\n    max_backoff_seconds: 5\n",
        4,
        "max_backoff_seconds",
        id="max backoff below min",
    ),
    pytest.param(
        "queue:\n- name: a\n  retry_parameters:\n    task_retry_limit: yes\n",
        4,
        "task_retry_limit",
        id="boolean retry limit",
    ),
    pytest.param("queue: [\n", 2, "YAML", id="broken YAML"),
    pytest.param("queue:\n  name: a\n", 2, "list", id="queue not a list"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_FILES)
def test_bad_file(tmp_path: Path, text: str, line: int, words: str) -> None:
    """A bad queue.yaml raises ConfigError naming the file, the line and the problem."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_queue_yaml(path)
    assert info.value.path == str(path)
    assert info.value.line == line
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    """A missing queue.yaml raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"queue\.yaml"):
        load_queue_yaml(tmp_path / "queue.yaml")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"name": "a b"}, id="space in name"),
        pytest.param({"name": "a", "rate": -1.0}, id="negative rate"),
        pytest.param({"name": "a", "bucket_size": 0}, id="empty bucket"),
        pytest.param({"name": "a", "max_concurrent_requests": 0}, id="no concurrency"),
        pytest.param({"name": "a", "mode": "poll"}, id="unknown mode"),
    ],
)
def test_queue_config_validates(kwargs: dict[str, object]) -> None:
    """QueueConfig built in code is validated like the file."""
    with pytest.raises(ConfigError):
        QueueConfig(**kwargs)  # type: ignore[arg-type]


BACKOFF = [
    pytest.param(
        {"min_backoff_seconds": 10, "max_backoff_seconds": 300, "max_doublings": 3},
        [10, 20, 40, 80, 160, 240, 300, 300],
        id="App Engine's example: 3 doublings then linear, capped",
    ),
    pytest.param({}, [0.1, 0.2, 0.4, 0.8, 1.6], id="defaults: 0.1 s doubling"),
    pytest.param(
        {"min_backoff_seconds": 1, "max_doublings": 0},
        [1, 2, 3, 4, 5],
        id="no doubling: linear from the start",
    ),
    pytest.param(
        {"min_backoff_seconds": 1, "max_backoff_seconds": 5, "max_doublings": 16},
        [1, 2, 4, 5, 5],
        id="doubling capped by max",
    ),
    pytest.param({"min_backoff_seconds": 0, "max_doublings": 2}, [0, 0, 0, 0], id="zero backoff"),
]


@pytest.mark.parametrize(("params", "delays"), BACKOFF)
def test_backoff(params: dict[str, float], delays: list[float]) -> None:
    """The wait before retry n doubles max_doublings times, then grows linearly, capped."""
    policy = RetryParameters(**params).policy()  # type: ignore[arg-type]
    assert [policy.backoff(n) for n in range(1, len(delays) + 1)] == pytest.approx(delays)


def test_policy_defaults_and_adjustment() -> None:
    """App Engine's defaults apply, and a lone min above the default max raises the max."""
    assert RetryParameters().policy() == RetryPolicy(
        None, None, min_backoff_seconds=0.1, max_backoff_seconds=3600.0, max_doublings=16
    )
    assert RetryParameters(min_backoff_seconds=7200).policy().max_backoff_seconds == 7200
    assert RetryParameters(max_backoff_seconds=0.05).policy().min_backoff_seconds == 0.05


GIVES_UP = [
    pytest.param({}, 1000, 10**9, False, id="no limits: retried forever"),
    pytest.param({"task_retry_limit": 0}, 1, 0.0, True, id="retry limit 0: one attempt"),
    pytest.param({"task_retry_limit": 3}, 3, 0.0, False, id="third retry allowed"),
    pytest.param({"task_retry_limit": 3}, 4, 0.0, True, id="fourth retry refused"),
    pytest.param({"task_age_limit": 60}, 50, 60.0, False, id="age at the limit: retried"),
    pytest.param({"task_age_limit": 60}, 1, 60.5, True, id="age past the limit"),
    pytest.param(
        {"task_retry_limit": 2, "task_age_limit": 60},
        5,
        30.0,
        False,
        id="both set, only retries exceeded: retried",
    ),
    pytest.param(
        {"task_retry_limit": 2, "task_age_limit": 60},
        2,
        120.0,
        False,
        id="both set, only age exceeded: retried",
    ),
    pytest.param(
        {"task_retry_limit": 2, "task_age_limit": 60},
        3,
        61.0,
        True,
        id="both exceeded: given up",
    ),
]


@pytest.mark.parametrize(("params", "next_retry", "age", "stops"), GIVES_UP)
def test_gives_up(params: dict[str, float], next_retry: int, age: float, stops: bool) -> None:
    """A task stops only when every limit that is set is exceeded."""
    policy = RetryParameters(**params).policy()  # type: ignore[arg-type]
    assert policy.gives_up(next_retry, age) is stops


def test_task_options_override_queue_values() -> None:
    """A task's retry options replace the queue's values they set and keep the others."""
    queue = RetryParameters(task_retry_limit=5, min_backoff_seconds=10.0, max_doublings=1)
    task = RetryParameters(task_retry_limit=0)
    merged = queue.overridden_by(task)
    assert merged == RetryParameters(task_retry_limit=0, min_backoff_seconds=10.0, max_doublings=1)


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        pytest.param(5.0, "5/s", id="per second"),
        pytest.param(10 / 60, "10/m", id="per minute"),
        pytest.param(1 / 3600, "1/h", id="per hour"),
        pytest.param(2 / 86400, "2/d", id="per day"),
        pytest.param(0.0, "0 (paused)", id="paused"),
    ],
)
def test_format_rate(rate: float, text: str) -> None:
    """Rates are shown in the unit queue.yaml would use."""
    assert format_rate(rate) == text


def test_describe_queue_yaml(tmp_path: Path) -> None:
    """`taskhandler check` describes each queue with its effective retry policy."""
    text = describe_queue_yaml(_write(tmp_path, FULL))
    lines = text.splitlines()
    assert lines[0].split() == [
        "queue",
        "mode",
        "rate",
        "bucket",
        "concurrent",
        "target",
        "retries",
    ]
    mail = next(line for line in lines if line.startswith("mail "))
    assert mail.split()[:6] == ["mail", "push", "10/m", "20", "3", "v2.worker"]
    assert "7 retries or 172800 s; backoff 10-200 s, 2 doublings" in mail


HOSTILE_QUEUE_FILES = [
    pytest.param(
        "base: &b {rate: 1/s}\nqueue:\n- <<: *b\n  name: a\n", 1, "anchor &b", id="merge via anchor"
    ),
    pytest.param("queue:\n- <<: {rate: 1/s}\n  name: a\n", 2, "merge keys", id="merge key"),
    pytest.param("queue:\n- name: a\n  rate: !!int x\n", 3, "!!int", id="int tag on text"),
    pytest.param("queue:\n- name: !!binary YQ==\n", 2, "!!binary", id="binary tag"),
    pytest.param("queue:\n- name: a\n  name: b\n", 3, "duplicate key 'name'", id="duplicate key"),
    pytest.param("queue:\n- name: a\nqueue: []\n", 3, "duplicate key 'queue'", id="second queue"),
    pytest.param("queue: " + "[" * 1000 + "\n", 1, "", id="deep nesting"),
    pytest.param(
        "queue:\n- name: a\n  rate: '" + "9" * 100_000 + "/s'\n",
        3,
        "rate '99999",
        id="huge rate",
    ),
    pytest.param(
        "queue:\n- name: a\n  acl:\n  - user: x@example.com\n",
        4,
        "unknown key 'user' in acl[1]",
        id="unknown acl key",
    ),
    pytest.param("queue:\n- name: a\n  retry_parameters: 5\n", 3, "mapping", id="retry not a map"),
    pytest.param("total_storage_limit: [1]\n", 1, "single value", id="limit a list"),
    pytest.param("queue:\n- name: [a]\n", 2, "single value", id="name a list"),
    pytest.param("1: x\n", 1, "unknown key '1'", id="number as a key"),
]


@pytest.mark.parametrize(("text", "line", "words"), HOSTILE_QUEUE_FILES)
def test_hostile_queue_yaml(tmp_path: Path, text: str, line: int, words: str) -> None:
    """Unsafe or odd YAML in queue.yaml is a short ConfigError with file and line, never a crash."""
    path = tmp_path / "queue.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_queue_yaml(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert words in str(info.value)
    assert len(str(info.value)) < len(str(path)) + 300


def _queueinfo() -> Any:
    try:
        from google.appengine.api import queueinfo
    except ImportError:
        return None
    return queueinfo


@pytest.mark.skipif(
    _queueinfo() is None,
    reason="App Engine's queueinfo (package appengine-python-standard, a test dependency) "
    "is not importable, so the queue.yaml keys cannot be compared with it",
)
def test_queue_keys_match_app_engine() -> None:
    """queue.yaml's keys, at every level, are App Engine's queueinfo ATTRIBUTES."""
    queueinfo = _queueinfo()
    assert set(queueinfo.QueueInfoExternal.ATTRIBUTES) == _queue_yaml._TOP_KEYS
    assert set(queueinfo.QueueEntry.ATTRIBUTES) == _queue_yaml._QUEUE_KEYS
    assert set(queueinfo.RetryParameters.ATTRIBUTES) == _queue_yaml._RETRY_KEYS
    assert set(queueinfo.Acl.ATTRIBUTES) == set(_queue_yaml._ACL_SCHEMA.item.keys)  # type: ignore[union-attr]


def test_sample_queue_yaml_loads() -> None:
    """The realistic queue.yaml sample loads."""
    queues = load_queue_yaml(Path(__file__).parent / "data" / "config" / "queue.yaml")
    assert list(queues) == ["default", "mail", "inbox"]
