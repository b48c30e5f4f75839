"""Fuzz: every config loader answers any input with a config or a ConfigError naming the file.

Three parts, each fast and reproducible:

- a seeded mutation loop over real app.yaml, queue.yaml, cron.yaml, dispatch.yaml, index.yaml
  and web.xml files (bytes, lines, keys, tags, anchors, nesting);
- hypothesis over generated documents: random trees of App Engine's own key names, and
  valid handler lists that must load into exactly the rules they describe;
- the known bombs (alias and entity "billion laughs", deep nesting, floods, huge regexes), each
  loaded in a child process under an address-space limit and a timeout, so that a loader that
  stopped bounding its work fails the test instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from taskhandler.checkcmd import run_check
from taskhandler.config import (
    APP_YAML_SCHEMA,
    HANDLER_SCHEMA,
    AccessRule,
    load_app_yaml,
    load_cron_yaml,
    load_web_xml,
)
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import load_queue_yaml

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"

Loader = Callable[[Path], object]
LOADERS: dict[str, Loader] = {
    "app.yaml": load_app_yaml,
    "queue.yaml": load_queue_yaml,
    "cron.yaml": load_cron_yaml,
    "web.xml": load_web_xml,
    # The check command first tells the kind from the content, then loads: any file at all.
    "check": lambda path: run_check([str(path)]),
}

SAMPLES: list[tuple[Path, str]] = [
    *((path, "app.yaml") for path in sorted(ROOT.glob("examples/*/app.yaml"))),
    *((path, "queue.yaml") for path in sorted(ROOT.glob("examples/*/queue.yaml"))),
    *((path, "app.yaml") for path in sorted((DATA / "config").glob("app_*.yaml"))),
    (DATA / "app_realworld.yaml", "app.yaml"),
    (DATA / "config" / "queue.yaml", "queue.yaml"),
    (DATA / "config" / "cron.yaml", "cron.yaml"),
    (DATA / "config" / "dispatch.yaml", "check"),
    (DATA / "config" / "index.yaml", "check"),
    (DATA / "config" / "web.xml", "web.xml"),
    (DATA / "web.xml", "web.xml"),
    (DATA / "web_legacy.xml", "web.xml"),
]

# Bytes a hostile or careless author puts into a config file.
TOKENS = [
    b"&a ", b"*a", b"<<: ", b"<<: *a\n", b"!!int ", b"!!float ", b"!!bool ", b"!!timestamp ",
    b"!!binary ", b"!!python/object/apply:os.system ", b"!!set ", b"!foo ", b"! ", b"[", b"]",
    b"{", b"}", b"\t", b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\r", b"---\n", b"...\n",
    b"? ", b"- ", b": ", b"'", b'"', b"%YAML 1.1\n", b"((((((((", b"{4294967295}", b"9" * 80,
    b"1:2:3:4:5", b"&amp;", b"&lol;", b"<!ENTITY a 'b'>", b"<!DOCTYPE web-app [", b"<![CDATA[",
    b"]]>", b"<?xml version='1.0' encoding='x-nope'?>", b"yes", b"null", b"~", b"1: x\n",
    b"2001-02-30", b".inf", b"0x", b"0b2", b"\xe2\x80\xae", b"\\u0000",
]  # fmt: skip
VALUES = [
    b"yes", b"no", b"~", b"", b"[]", b"{}", b"[a, b]", b"{a: b}", b"!!int abc", b"!!binary x",
    b"*a", b"&a x", b"2001-02-30", b"9" * 70, b"'" + b"x" * 3000 + b"'", b"/((((a)))", b"/a{99999999999}",
    b"admin", b"always", b"/tasks/.*", b"\"\\x00\"", b"1:2:3", b".nan", b"-1",
]  # fmt: skip


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One random change of ``data``: a byte, a slice, a line, a key, a value, a nesting."""
    choice = rng.randrange(10)
    lines = _lines(data)
    if choice == 0 and data:
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if choice == 1:
        i = rng.randrange(len(data) + 1)
        return data[:i] + rng.choice(TOKENS) + data[i:]
    if choice == 2 and data:
        i = rng.randrange(len(data))
        return data[:i] + data[i + rng.randrange(1, 40) :]
    if choice == 3:
        i = rng.randrange(len(lines))
        return b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    if choice == 4:
        del lines[rng.randrange(len(lines))]
        return b"\n".join(lines)
    if choice == 5:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if choice == 6:
        i = rng.randrange(len(lines))
        lines[i] = b"  " + lines[i] if rng.random() < 0.5 else lines[i][2:]
        return b"\n".join(lines)
    keyed = [i for i, line in enumerate(lines) if re.match(rb"\s*-?\s*[A-Za-z_]+:", line)]
    if choice == 7 and keyed:
        i = rng.choice(keyed)
        key = re.match(rb"\s*-?\s*([A-Za-z_]+):", lines[i])
        assert key is not None
        start, end = key.span(1)
        pos = rng.randrange(start, end)
        lines[i] = lines[i][:pos] + bytes([rng.randrange(97, 123)]) + lines[i][pos + 1 :]
        return b"\n".join(lines)
    if choice == 8 and keyed:
        i = rng.choice(keyed)
        head = lines[i].split(b":", 1)[0]
        lines[i] = head + b": " + rng.choice(VALUES)
        return b"\n".join(lines)
    if keyed:
        i = rng.choice(keyed)
        head, _, value = lines[i].partition(b":")
        depth = rng.choice([1, 5, 31, 32, 33, 200])
        open_, close = (b"[", b"]") if rng.random() < 0.5 else (b"{a: ", b"}")
        lines[i] = head + b": " + open_ * depth + (value.strip() or b"x") + close * depth
        return b"\n".join(lines)
    return data + rng.choice(TOKENS)


def _answer(loader: Loader, path: Path, data: bytes) -> str:
    """``loaded`` or ``refused``; anything but a ConfigError naming the file fails the test."""
    path.write_bytes(data)
    error: ConfigError | None = None
    try:
        loader(path)
    except ConfigError as exc:
        error = exc
    except Exception as exc:
        raise AssertionError(
            f"{type(exc).__name__} escaped for input {data[:300]!r}... ({len(data)} bytes)"
        ) from exc
    if error is None:
        return "loaded"
    message = str(error)
    assert error.path == str(path), message
    assert message.startswith(str(path)), message
    assert len(message) < len(str(path)) + 400, message[:500]
    return "refused"


MUTANTS_PER_SAMPLE = 120


@pytest.mark.parametrize(
    ("sample", "kind"),
    [pytest.param(path, kind, id=str(path.relative_to(ROOT))) for path, kind in SAMPLES],
)
def test_mutated_samples(tmp_path: Path, sample: Path, kind: str) -> None:
    """Mutations of a real file are loaded or refused with a short ConfigError naming the file."""
    original = sample.read_bytes()
    rng = random.Random(f"{sample.name}-{kind}")
    path = tmp_path / sample.name
    outcomes = {"loaded": 0, "refused": 0}
    assert _answer(LOADERS[kind], path, original) == "loaded"
    for _ in range(MUTANTS_PER_SAMPLE):
        data = original
        for _ in range(rng.randrange(1, 4)):
            data = _mutate(rng, data)
        outcomes[_answer(LOADERS[kind], path, data)] += 1
        outcomes[_answer(LOADERS["check"], path, data)] += 1
    # Both answers occur: the mutations neither leave every file valid nor break every one.
    assert outcomes["loaded"] > 0
    assert outcomes["refused"] > 0


# --------------------------------------------------------------------------- hypothesis

_KEYS = sorted({*APP_YAML_SCHEMA.keys, *HANDLER_SCHEMA.keys, "handler", "logn", "<<", "1"})
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["admin", "required", "always", "/tasks/.*", "auto", "(", "a{9999999999}"]),
)
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=12))
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file the hypothesis examples overwrite (function-scoped fixtures do not mix with @given)."""
    return tmp_path_factory.mktemp("fuzz") / "app.yaml"


@settings(max_examples=250, deadline=None)
@given(document=st.dictionaries(_keys, _documents, max_size=6))
def test_generated_documents(scratch: Path, document: dict[str, object]) -> None:
    """Any tree of App Engine key names and odd values is loaded or refused, as any file kind."""
    data = yaml.safe_dump(document, allow_unicode=True).encode()
    for kind in ("app.yaml", "queue.yaml", "cron.yaml", "check"):
        _answer(LOADERS[kind], scratch, data)


_handlers = st.lists(
    st.fixed_dictionaries(
        {
            "url": st.from_regex(r"/[a-z]{1,8}(/\.\*)?", fullmatch=True),
            "script": st.just("auto"),
        },
        optional={
            "login": st.sampled_from(["optional", "required", "admin"]),
            "auth_fail_action": st.sampled_from(["redirect", "unauthorized"]),
            "secure": st.sampled_from(["optional", "always", "never", "default"]),
        },
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(handlers=_handlers, style=st.sampled_from([False, True, None]))
def test_valid_handlers_load_exactly(
    scratch: Path, handlers: list[dict[str, str]], style: bool | None
) -> None:
    """A valid handler list, in any YAML style, loads into exactly the rules it describes."""
    document = {"runtime": "python312", "handlers": handlers}
    scratch.write_text(yaml.safe_dump(document, default_flow_style=style), encoding="utf-8")
    expected = tuple(
        AccessRule(**{k: v for k, v in handler.items() if k != "script"}) for handler in handlers
    )
    assert load_app_yaml(scratch).rules == expected


# --------------------------------------------------------------------------- bombs


def _yaml_laughs(top: str) -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    lines.append(f"{top}: *i")
    return ("\n".join(lines) + "\n").encode()


XML_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE web-app [
  <!ENTITY a "lol">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
  <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
  <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
  <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
  <!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">
]>
<web-app><security-constraint>&h;</security-constraint></web-app>
"""
NEAR_CAP = 1024 * 1024 - 64  # just under the loaders' file size cap

BOMBS: dict[str, tuple[str, bytes]] = {
    "yaml laughs in app.yaml": ("app.yaml", _yaml_laughs("handlers")),
    "yaml laughs in queue.yaml": ("queue.yaml", _yaml_laughs("queue")),
    "yaml laughs in cron.yaml": ("cron.yaml", _yaml_laughs("cron")),
    "yaml laughs via check": ("check", _yaml_laughs("runtime")),
    "deep flow lists": ("app.yaml", b"[" * NEAR_CAP),
    "deep flow mappings": ("queue.yaml", b"{a: " * (NEAR_CAP // 4)),
    "deep block lists": ("cron.yaml", b"- " * (NEAR_CAP // 2)),
    "value flood": ("app.yaml", b"a: [" + b"1," * (NEAR_CAP // 2 - 4) + b"]"),
    "huge integer": ("app.yaml", b"runtime: " + b"9" * NEAR_CAP),
    "deep regex groups": (
        "app.yaml",
        b"handlers:\n- url: /"
        + b"(" * (NEAR_CAP // 2 - 40)
        + b")" * (NEAR_CAP // 2 - 40)
        + b"\n  script: auto\n",
    ),
    "huge repeat count": ("app.yaml", b"handlers:\n- url: /a{4294967295}\n  script: auto\n"),
    "oversized file": ("app.yaml", b"# " + b"x" * (2 * NEAR_CAP)),
    "xml laughs": ("web.xml", XML_LAUGHS),
    "deep xml": ("web.xml", b"<web-app>" + b"<a>" * (NEAR_CAP // 3 - 10)),
    "xml element flood": ("web.xml", b"<web-app>" + b"<a/>" * (NEAR_CAP // 4 - 10) + b"</web-app>"),
    "unknown xml encoding": ("web.xml", b'<?xml version="1.0" encoding="x-nope"?><web-app/>'),
}

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    from taskhandler.checkcmd import run_check
    from taskhandler.config import load_app_yaml, load_cron_yaml, load_web_xml
    from taskhandler.exceptions import ConfigError
    from taskhandler.taskqueue import load_queue_yaml

    loaders = {
        "app.yaml": load_app_yaml, "queue.yaml": load_queue_yaml, "cron.yaml": load_cron_yaml,
        "web.xml": load_web_xml, "check": lambda path: run_check([path]),
    }
    # Everything is imported: from here on the process may grow by LIMIT bytes at most.
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answers = {}
    for name, kind, path in json.loads(sys.argv[1]):
        try:
            loaders[kind](path)
            answers[name] = "loaded"
        except ConfigError as exc:
            answers[name] = "ConfigError" if len(str(exc)) < len(path) + 400 else "long message"
        except BaseException as exc:
            answers[name] = type(exc).__name__
    print(json.dumps(answers))
    """
)
# The headroom each bomb may use: the 511-byte alias bomb once took 5.5 GB.
CHILD_MEMORY = 512 * 1024 * 1024


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the address-space limit is read from /proc"
)
def test_bombs_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Every bomb is a ConfigError in a child process limited to 512 MiB more and a timeout."""
    jobs = []
    for i, (name, (kind, data)) in enumerate(BOMBS.items()):
        path = tmp_path / f"bomb{i}.{'xml' if kind == 'web.xml' else 'yaml'}"
        path.write_bytes(data)
        jobs.append((name, kind, str(path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The timeout is a safety net for a regression, not a measurement.
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(jobs), str(CHILD_MEMORY)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout)
    assert answers == dict.fromkeys(BOMBS, "ConfigError")
