"""app.yaml and web.xml loading: rules in order, deadlines, and loud errors with file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskhandler.config import (
    AccessRule,
    AppConfig,
    load_app_yaml,
    load_web_xml,
    static_dir_regex,
    url_pattern_regex,
)
from taskhandler.exceptions import ConfigError

DATA = Path(__file__).parent / "data"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- app.yaml


def test_real_world_app_yaml_loads() -> None:
    """A service's app.yaml with runtime, env_variables, scaling and static handlers loads."""
    config = load_app_yaml(DATA / "app_realworld.yaml")
    assert config.entrypoint == "gunicorn -b :$PORT -w 2 main:app"
    assert config.task_deadline == 600.0
    assert config.source == str(DATA / "app_realworld.yaml")
    assert [(r.url, r.login, r.auth_fail_action, r.secure) for r in config.rules] == [
        ("(?:/static)/.*", "optional", "redirect", "optional"),
        (r"/favicon\.ico", "optional", "redirect", "optional"),
        ("/tasks/.*", "admin", "redirect", "optional"),
        ("/account/.*", "required", "unauthorized", "always"),
        ("/.*", "optional", "redirect", "always"),
    ]


def test_access_app_fixture_loads() -> None:
    """The end-to-end fixture's app.yaml is itself a valid app.yaml."""
    config = load_app_yaml(DATA / "access_app.yaml")
    assert [r.login for r in config.rules] == [
        "optional",
        "admin",
        "required",
        "optional",
        "optional",
    ]


@pytest.mark.parametrize(
    ("scaling", "deadline"),
    [
        pytest.param("", 600.0, id="no scaling section is automatic"),
        pytest.param("automatic_scaling:\n  max_instances: 3\n", 600.0, id="automatic"),
        pytest.param("basic_scaling:\n  max_instances: 3\n", 86400.0, id="basic"),
        pytest.param("manual_scaling:\n  instances: 1\n", 86400.0, id="manual"),
        pytest.param("automatic_scaling:\n", 600.0, id="empty automatic section"),
    ],
)
def test_task_deadline_follows_scaling(tmp_path: Path, scaling: str, deadline: float) -> None:
    """The scaling type sets the task deadline: automatic 10 min, basic/manual 24 h."""
    path = _write(tmp_path, "app.yaml", f"runtime: python312\n{scaling}")
    assert load_app_yaml(path).task_deadline == deadline


def test_handler_order_is_kept(tmp_path: Path) -> None:
    """Static and script handlers keep their place: the first match decides, as on App Engine."""
    text = """\
handlers:
- url: /tasks/public\\.txt
  static_files: public.txt
  upload: public\\.txt
- url: /tasks/.*
  script: auto
  login: admin
"""
    rules = load_app_yaml(_write(tmp_path, "app.yaml", text)).rules
    assert [r.url for r in rules] == [r"/tasks/public\.txt", "/tasks/.*"]
    assert rules[0].matches("/tasks/public.txt")
    assert rules[1].matches("/tasks/public.txt")


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        pytest.param("/static", "/static/app.css", True, id="file under the prefix"),
        pytest.param("/static", "/static/a/b/c.js", True, id="nested file"),
        pytest.param("/static", "/static", False, id="the prefix itself"),
        pytest.param("/static", "/staticfoo/x", False, id="longer name is another prefix"),
        pytest.param("/static/", "/static/x", True, id="prefix given with slash"),
        pytest.param("/(css|js)", "/js/app.js", True, id="prefix keeps regex meaning"),
        pytest.param("/(css|js)", "/img/a.png", False, id="regex prefix does not over-match"),
        pytest.param("/static", "/static/a\nb", True, id="newline is matched like any char"),
    ],
)
def test_static_dir_prefix(prefix: str, path: str, matches: bool) -> None:
    """A static_dir url covers the prefix and everything below it, as a regex prefix."""
    assert (re.fullmatch(static_dir_regex(prefix), path, re.DOTALL) is not None) is matches


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  login: admni\n",
            4,
            "handlers[1].login: 'admni' is not one of optional, required, admin",
            id="bad login",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  auth_fail_action: deny\n",
            4,
            "handlers[1].auth_fail_action: 'deny'",
            id="bad auth_fail_action",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  secure: yes\n",
            4,
            "secure: True",
            id="yes is a bool",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  login: yes\n",
            4,
            "login: True",
            id="login yes is a bool",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  login:\n",
            4,
            "login: no value",
            id="login with no value",
        ),
        pytest.param("handlers:\n- url: /a(\n  script: auto\n", 2, "bad url regex", id="bad regex"),
        pytest.param(
            "handlers:\n- url: /a\n  login: [admin\n", None, "invalid YAML", id="bad YAML"
        ),
        pytest.param("runtime: x\n\tbad: tab\n", 2, "invalid YAML", id="tab indentation"),
        pytest.param("handlers:\n- script: auto\n", 2, "has no url", id="handler without url"),
        pytest.param("handlers:\n- url: 7\n  script: auto\n", 2, "has no url", id="url a number"),
        pytest.param(
            "handlers:\n- url: tasks/.*\n  script: auto\n  login: admin\n",
            2,
            "must start with /",
            id="url without a leading slash never matches",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  login: admin\n",
            2,
            "has no script, static_files, static_dir",
            id="handler without a type",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  static_dir: s\n",
            3,
            "handlers[1].script is not allowed in a static_dir handler",
            id="handler with two types",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  mime_type: text/plain\n",
            4,
            "mime_type is not allowed in a script handler",
            id="static key in a script handler",
        ),
        pytest.param(
            "handlers:\n- url: /a\n  static_files: a.txt\n",
            2,
            "static_files but no upload",
            id="static_files without upload",
        ),
        pytest.param(
            "handlers:\n- /tasks/.*\n", 2, "handlers[1]: expected a mapping", id="handler not a map"
        ),
        pytest.param("handlers: /tasks\n", 1, "expected a list", id="handlers not a list"),
        pytest.param("- a\n- b\n", 1, "mapping", id="top level is a list"),
        pytest.param("", None, "mapping", id="empty file"),
        pytest.param("# only a comment\n", None, "mapping", id="only a comment"),
        pytest.param(
            "basic_scaling: {}\nmanual_scaling: {}\n",
            2,
            "only one scaling",
            id="two scaling sections",
        ),
        pytest.param("entrypoint: [a, b]\n", 1, "entrypoint", id="entrypoint not a string"),
        pytest.param("entrypoint: 7\n", 1, "entrypoint: expected text", id="entrypoint a number"),
        pytest.param(
            "a: !!python/object:os.system x\n", 1, "!!python/object:os.system", id="python tag"
        ),
    ],
)
def test_bad_app_yaml(tmp_path: Path, text: str, line: int | None, fragment: str) -> None:
    """A bad app.yaml raises ConfigError naming the file, the line and the problem."""
    path = _write(tmp_path, "app.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_app_yaml(path)
    error = info.value
    assert error.path == str(path)
    if line is not None:
        assert error.line == line
        assert str(error).startswith(f"{path}:{line}: ")
    assert fragment in str(error)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_app_yaml(tmp_path / "nope.yaml")
    assert info.value.path == str(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- AccessRule


def test_rule_regex_is_compiled_once() -> None:
    """A rule compiles its regex on first use and keeps it."""
    rule = AccessRule(url="/tasks/.*", login="admin")
    assert rule.regex is rule.regex
    assert rule.regex.flags & re.DOTALL


def test_rule_equality_ignores_the_regex_cache() -> None:
    """Two rules with the same fields are equal whether or not one has been used yet."""
    used, fresh = (
        AccessRule(url="/tasks/.*", login="admin"),
        AccessRule(url="/tasks/.*", login="admin"),
    )
    assert used.matches("/tasks/x")
    assert used == fresh
    assert hash(used) == hash(fresh)
    assert used != AccessRule(url="/tasks/.*", login="required")


def test_rule_copy_with_new_url_recompiles() -> None:
    """A copy with another url does not keep the old compiled regex."""
    rule = AccessRule(url="/tasks/.*", login="admin")
    assert rule.matches("/tasks/x")
    copy = rule.model_copy(update={"url": "/jobs/.*"})
    assert copy.matches("/jobs/x")
    assert not copy.matches("/tasks/x")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"url": "/a("}, id="bad regex"),
        pytest.param({"url": "/a", "login": "root"}, id="unknown login"),
        pytest.param({"url": "/a", "secure": "sometimes"}, id="unknown secure"),
        pytest.param({"url": "/a", "methods": ["GET"]}, id="unknown field"),
    ],
)
def test_bad_rule_is_refused(kwargs: dict[str, object]) -> None:
    """AccessRule refuses values App Engine does not know."""
    with pytest.raises(ValueError, match=r"."):
        AccessRule(**kwargs)  # type: ignore[arg-type]


def test_app_config_is_frozen() -> None:
    """A loaded configuration cannot be changed by accident."""
    config = AppConfig(rules=[AccessRule(url="/a")])
    with pytest.raises(ValueError, match="frozen"):
        config.task_deadline = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- web.xml


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        pytest.param("/cron/run", "/cron/run", True, id="exact"),
        pytest.param("/cron/run", "/cron/run/x", False, id="exact is not a prefix"),
        pytest.param("/a.b", "/aXb", False, id="exact dot is literal"),
        pytest.param("/tasks/*", "/tasks", True, id="prefix itself"),
        pytest.param("/tasks/*", "/tasks/a/b", True, id="below prefix"),
        pytest.param("/tasks/*", "/tasksx", False, id="prefix needs a segment boundary"),
        pytest.param("*.csv", "/r/report.csv", True, id="extension"),
        pytest.param("*.csv", "/r/report.csv/x", False, id="extension only on last segment"),
        pytest.param("*.csv", "/r/reportxcsv", False, id="extension dot is literal"),
        pytest.param("/", "/anything/at/all", True, id="default servlet"),
        pytest.param("/*", "/anything", True, id="everything"),
        pytest.param("", "/", True, id="context root"),
        pytest.param("", "/x", False, id="context root only"),
    ],
)
def test_url_pattern_forms(pattern: str, path: str, matches: bool) -> None:
    """Servlet url-patterns translate to regexes with the servlet meaning."""
    assert (re.fullmatch(url_pattern_regex(pattern), path, re.DOTALL) is not None) is matches


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("tasks/*", id="no leading slash"),
        pytest.param("/tasks*", id="star inside a segment"),
        pytest.param("/a/*/b", id="star in the middle"),
        pytest.param("*.", id="empty extension"),
        pytest.param("*.a/b", id="slash in extension"),
        pytest.param("/a\\b", id="backslash"),
    ],
)
def test_bad_url_patterns(pattern: str) -> None:
    """url-patterns outside the servlet forms are refused."""
    with pytest.raises(ValueError, match=r"."):
        url_pattern_regex(pattern)


def test_web_xml_rules_in_servlet_order() -> None:
    """web.xml constraints become rules ordered exact, longest prefix, extension."""
    config = load_web_xml(DATA / "web.xml")
    assert [(r.url, r.login, r.secure) for r in config.rules] == [
        ("/cron/run", "admin", "optional"),
        ("/tasks(?:/.*)?", "admin", "optional"),
        ("/.*", "optional", "always"),
        (r"/.*\.csv", "required", "optional"),
    ]
    assert config.task_deadline == 600.0


def test_legacy_doctype_web_xml_loads() -> None:
    """An old servlet 2.3 web.xml with a plain DOCTYPE line loads; nothing is fetched."""
    config = load_web_xml(DATA / "web_legacy.xml")
    assert [(r.url, r.login) for r in config.rules] == [("/admin(?:/.*)?", "admin")]


def _constraint(inner: str, pattern: str = "/tasks/*") -> str:
    return f"""<?xml version="1.0"?>
<web-app>
  <security-constraint>
    <web-resource-collection><url-pattern>{pattern}</url-pattern></web-resource-collection>
    {inner}
  </security-constraint>
</web-app>
"""


@pytest.mark.parametrize(
    ("inner", "login", "secure"),
    [
        pytest.param(
            "<auth-constraint><role-name>admin</role-name></auth-constraint>",
            "admin",
            "optional",
            id="admin role",
        ),
        pytest.param(
            "<auth-constraint><role-name>*</role-name></auth-constraint>",
            "required",
            "optional",
            id="any role",
        ),
        pytest.param(
            "<auth-constraint><role-name>admin</role-name><role-name>*</role-name>"
            "</auth-constraint>",
            "required",
            "optional",
            id="admin or anyone signed in",
        ),
        pytest.param("", "optional", "optional", id="no auth-constraint"),
        pytest.param(
            "<user-data-constraint><transport-guarantee>CONFIDENTIAL</transport-guarantee>"
            "</user-data-constraint>",
            "optional",
            "always",
            id="confidential transport",
        ),
        pytest.param(
            "<user-data-constraint><transport-guarantee>INTEGRAL</transport-guarantee>"
            "</user-data-constraint>",
            "optional",
            "always",
            id="integral transport",
        ),
        pytest.param(
            "<user-data-constraint><transport-guarantee>NONE</transport-guarantee>"
            "</user-data-constraint>",
            "optional",
            "optional",
            id="no transport guarantee",
        ),
    ],
)
def test_web_xml_constraint_meaning(tmp_path: Path, inner: str, login: str, secure: str) -> None:
    """Roles and transport guarantees map to login and secure."""
    (rule,) = load_web_xml(_write(tmp_path, "web.xml", _constraint(inner))).rules
    assert (rule.login, rule.secure) == (login, secure)


def test_same_pattern_twice_takes_the_strictest(tmp_path: Path) -> None:
    """Two constraints on one pattern merge into one rule with the stricter login and transport."""
    text = """<web-app>
  <security-constraint>
    <web-resource-collection><url-pattern>/a/*</url-pattern></web-resource-collection>
    <auth-constraint><role-name>*</role-name></auth-constraint>
  </security-constraint>
  <security-constraint>
    <web-resource-collection><url-pattern>/a/*</url-pattern></web-resource-collection>
    <auth-constraint><role-name>admin</role-name></auth-constraint>
    <user-data-constraint><transport-guarantee>CONFIDENTIAL</transport-guarantee>
    </user-data-constraint>
  </security-constraint>
</web-app>"""
    (rule,) = load_web_xml(_write(tmp_path, "web.xml", text)).rules
    assert (rule.login, rule.secure) == ("admin", "always")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE web-app [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<web-app>&lol2;</web-app>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE web-app [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<web-app><security-constraint>&secret;</security-constraint></web-app>
"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE web-app [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/x.dtd"> %remote;]>
<web-app/>
"""


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param(BILLION_LAUGHS, 2, "unsafe XML", id="billion laughs"),
        pytest.param(EXTERNAL_ENTITY, 2, "unsafe XML", id="external entity"),
        pytest.param(PARAMETER_ENTITY, 2, "unsafe XML", id="parameter entity"),
        pytest.param(
            "<web-app><security-constraint></web-app>", 1, "invalid XML", id="mismatched tag"
        ),
        pytest.param("", 1, "invalid XML", id="empty file"),
        pytest.param("<beans/>", 1, "<web-app>", id="wrong root element"),
        pytest.param(
            _constraint("<auth-constraint><role-name>manager</role-name></auth-constraint>"),
            5,
            "role 'manager'",
            id="unknown role",
        ),
        pytest.param(_constraint("<auth-constraint/>"), 5, "deny all", id="empty auth-constraint"),
        pytest.param(
            _constraint("", pattern="/a/*/b"), 4, "url-pattern '/a/*/b'", id="bad url-pattern"
        ),
        pytest.param(
            _constraint(
                "<user-data-constraint><transport-guarantee>SECRET</transport-guarantee>"
                "</user-data-constraint>"
            ),
            5,
            "transport-guarantee",
            id="unknown transport guarantee",
        ),
    ],
)
def test_bad_web_xml(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    """A bad or unsafe web.xml raises ConfigError naming the file, the line and the problem."""
    path = _write(tmp_path, "web.xml", text)
    with pytest.raises(ConfigError) as info:
        load_web_xml(path)
    assert info.value.path == str(path)
    assert info.value.line == line
    assert fragment in str(info.value)
