"""app.yaml and web.xml loading: rules in order, deadlines, and loud errors with file and line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from taskhandler import config as config_module
from taskhandler.config import (
    APP_YAML_SCHEMA,
    CRON_YAML_SCHEMA,
    DISPATCH_YAML_SCHEMA,
    HANDLER_COMMON_KEYS,
    HANDLER_SCHEMA,
    HANDLER_TYPES,
    HANDLER_URL_FORM,
    INDEX_YAML_SCHEMA,
    MAX_CONFIG_BYTES,
    MAX_HANDLERS,
    MAX_YAML_VALUES,
    SCALAR,
    AccessRule,
    AppConfig,
    CronRetryParameters,
    FreeMap,
    Leaf,
    ListOf,
    Section,
    Shape,
    load_app_yaml,
    load_cron_yaml,
    load_web_xml,
    shown,
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
        pytest.param(
            "handlers:\n- url: 7\n  script: auto\n",
            2,
            "url: expected text, found 7",
            id="url a number",
        ),
        pytest.param(
            "handlers:\n- url: yes\n  script: auto\n",
            2,
            "url: expected text, found True",
            id="url yes",
        ),
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


# --------------------------------------------------------------------------- App Engine's tables


def _appengine() -> Any:
    """App Engine's own config modules (a test dependency), or None when not installed."""
    try:
        with warnings.catch_warnings():
            # datastore_index builds a ruamel YAML object with a deprecated option on import.
            warnings.simplefilter("ignore")
            from google.appengine.api import (
                appinfo,
                croninfo,
                dispatchinfo,
                queueinfo,
                validation,
            )
            from google.appengine.datastore import datastore_index
    except ImportError:
        return None
    return SimpleNamespace(
        appinfo=appinfo,
        croninfo=croninfo,
        dispatchinfo=dispatchinfo,
        queueinfo=queueinfo,
        validation=validation,
        datastore_index=datastore_index,
    )


AE = _appengine()
needs_appengine = pytest.mark.skipif(
    AE is None,
    reason="App Engine's appinfo (package appengine-python-standard, a test dependency) "
    "is not importable, so taskhandler's key tables cannot be compared with it",
)


def _shape_of(validator: Any) -> Shape:
    """The Shape App Engine's validator (or Validated class) describes, in our terms."""
    v = AE.validation
    while isinstance(validator, (v.Optional, v.Deprecated, v.Preferred)):
        validator = validator.validator
    if isinstance(validator, v.Repeated):
        return ListOf(_shape_of(validator.constructor))
    if isinstance(validator, v.RegexStr):
        return Leaf.SCALARS
    kind = validator.expected_type if isinstance(validator, v.Type) else validator
    if kind is list:
        return ListOf(SCALAR)
    if not isinstance(kind, type):
        return SCALAR
    if kind is AE.appinfo.HttpHeadersDict:
        return FreeMap(HANDLER_SCHEMA.keys["http_headers"].key_pattern)  # type: ignore[union-attr]
    if issubclass(kind, v.ValidatedDict):
        pattern = kind.KEY_VALIDATOR.re.pattern
        return FreeMap(pattern.removeprefix("^(?:").removesuffix(")$"))
    if kind is AE.appinfo.BuiltinHandler:
        return Leaf.ONE_KEY
    if issubclass(kind, v.Validated):
        return Section({key: _shape_of(inner) for key, inner in kind.ATTRIBUTES.items()})
    return SCALAR


@needs_appengine
@pytest.mark.parametrize(
    ("schema", "appengine_class"),
    [
        pytest.param(APP_YAML_SCHEMA, "appinfo.AppInfoExternal", id="app.yaml"),
        pytest.param(CRON_YAML_SCHEMA, "croninfo.CronInfoExternal", id="cron.yaml"),
        pytest.param(DISPATCH_YAML_SCHEMA, "dispatchinfo.DispatchInfoExternal", id="dispatch.yaml"),
        pytest.param(INDEX_YAML_SCHEMA, "datastore_index.IndexDefinitions", id="index.yaml"),
    ],
)
def test_key_tables_match_app_engine(schema: Shape, appengine_class: str) -> None:
    """Our key tables are App Engine's ATTRIBUTES tables, section by section, nothing more or less."""
    module, name = appengine_class.split(".")
    assert _shape_of(getattr(getattr(AE, module), name)) == schema


@needs_appengine
def test_handler_rules_match_app_engine() -> None:
    """Handler types, their allowed keys, the url form and the handler limit are appinfo's."""
    urlmap = AE.appinfo.URLMap
    theirs = {
        kind: {fields} if isinstance(fields, str) else set(fields)
        for kind, fields in urlmap.ALLOWED_FIELDS.items()
    }
    assert theirs == {kind: set(fields) for kind, fields in HANDLER_TYPES.items()}
    assert set(urlmap.COMMON_FIELDS) == HANDLER_COMMON_KEYS
    assert HANDLER_URL_FORM == AE.appinfo._URL_REGEX
    assert MAX_HANDLERS == AE.appinfo.MAX_URL_MAPS
    header_chars = [chr(c) for c in range(32, 127)]
    assert [c for c in header_chars if AE.appinfo._HTTP_TOKEN_RE.match(c)] == [
        c
        for c in header_chars
        if re.fullmatch(HANDLER_SCHEMA.keys["http_headers"].key_pattern, c)  # type: ignore[union-attr]
    ]


SAMPLES = DATA / "config"


@pytest.mark.parametrize(
    ("name", "rules", "deadline"),
    [
        pytest.param("app_standard.yaml", 6, 600.0, id="standard environment"),
        pytest.param("app_flexible.yaml", 0, 86400.0, id="flexible environment"),
        pytest.param("app_legacy.yaml", 3, 86400.0, id="python27 with builtins and libraries"),
    ],
)
def test_real_app_yaml_samples_load(name: str, rules: int, deadline: float) -> None:
    """Real app.yaml files using most of App Engine's settings load."""
    config = load_app_yaml(SAMPLES / name)
    assert (len(config.rules), config.task_deadline) == (rules, deadline)


@needs_appengine
@pytest.mark.parametrize("name", ["app_standard.yaml", "app_flexible.yaml", "app_legacy.yaml"])
def test_samples_are_valid_for_app_engine(name: str) -> None:
    """The samples are valid app.yaml files for App Engine's own parser too."""
    AE.appinfo.LoadSingleAppInfo((SAMPLES / name).read_text())


def _app(body: str) -> str:
    return "runtime: python312\n" + body


# (text, line, fragment, App Engine's parser refuses it too)
STRICT = [
    pytest.param(_app("handler:\n- url: /a\n  script: auto\n"), 2, "unknown key 'handler' in the top level (did you mean 'handlers'?)", True, id="handler for handlers"),
    pytest.param(_app("handlers:\n- url: /a\n  script: auto\n  logn: admin\n"), 5, "unknown key 'logn' in handlers[1] (did you mean 'login'?)", True, id="logn in a handler"),
    pytest.param(_app("automatic_scaling:\n  max_instance: 3\n"), 3, "unknown key 'max_instance' in automatic_scaling", True, id="misspelt automatic_scaling key"),
    pytest.param(_app("automatic_scaling:\n  cpu_utilization:\n    target: 0.5\n"), 4, "automatic_scaling.cpu_utilization", True, id="nested scaling section"),
    pytest.param(_app("automatic_scaling:\n  custom_metrics:\n  - metric: x\n"), 4, "automatic_scaling.custom_metrics[1]", True, id="custom metric entry"),
    pytest.param(_app("basic_scaling:\n  max_instances: 2\n  idle: 5m\n"), 4, "unknown key 'idle' in basic_scaling", True, id="basic_scaling key"),
    pytest.param(_app("manual_scaling:\n  instance: 1\n"), 3, "did you mean 'instances'?", True, id="manual_scaling key"),
    pytest.param(_app("resources:\n  volumes:\n  - name: a\n    size: 1\n"), 5, "resources.volumes[1]", True, id="volume entry"),
    pytest.param(_app("liveness_check:\n  paht: /\n"), 3, "did you mean 'path'?", True, id="liveness check"),
    pytest.param(_app("network:\n  nmae: default\n"), 3, "network", True, id="network"),
    pytest.param(_app("vpc_access_connector:\n  egress: all\n"), 3, "vpc_access_connector", True, id="vpc connector"),
    pytest.param(_app("libraries:\n- name: jinja2\n  versoin: latest\n"), 4, "libraries[1]", True, id="library entry"),
    pytest.param(_app("error_handlers:\n- file: a.html\n  code: 404\n"), 4, "error_handlers[1]", True, id="error handler entry"),
    pytest.param(_app("handlers:\n- url: /a\n  script: auto\n  login: admin\n  login: optional\n"), 6, "duplicate key 'login' (first on line 5)", True, id="second login"),
    pytest.param(_app("handlers:\n- url: /a\n  url: /b\n  script: auto\n"), 4, "duplicate key 'url'", True, id="second url"),
    pytest.param(_app("handlers:\n- url: /a\n  script: auto\n  login: admin\nhandlers:\n- url: /a\n  script: auto\n"), 6, "duplicate key 'handlers' (first on line 2)", True, id="second handlers"),
    pytest.param(_app("runtime: python311\n"), 2, "duplicate key 'runtime'", True, id="second runtime"),
    pytest.param(_app("env_variables:\n  A: 1\n  A: 2\n"), 4, "duplicate key 'A'", True, id="duplicate env variable"),
    pytest.param(_app("env_variables: {A: 1, A: 2}\n"), 2, "duplicate key 'A'", True, id="duplicate in a flow mapping"),
    pytest.param(_app("handlers:\n- url: /a\n  static_dir: s\n  http_headers:\n    X-A: b\n    X-A: c\n"), 7, "duplicate key 'X-A'", True, id="duplicate header"),
    pytest.param(_app("env_variables:\n  1A: x\n"), 3, "env_variables: '1A' is not a valid name", True, id="bad env variable name"),
    pytest.param(_app("handlers:\n- url: /a\n  static_dir: s\n  http_headers:\n    X A: b\n"), 6, "not a valid name", True, id="bad header name"),
    pytest.param(_app("1: x\n"), 2, "unknown key '1'", True, id="number as a key"),
    pytest.param(_app("null: x\n"), 2, "unknown key 'null'", True, id="null as a key"),
    pytest.param(_app("? [a]\n: b\n"), 2, "a key must be plain text", True, id="list as a key"),
    pytest.param(_app("automatic_scaling: [1]\n"), 2, "automatic_scaling: expected a mapping, found a list", True, id="list for a section"),
    pytest.param(_app("handlers:\n  url: /a\n"), 3, "handlers: expected a list, found a mapping", True, id="mapping for handlers"),
    pytest.param(_app("runtime_config:\n  a:\n    b: 1\n"), 4, "runtime_config.a: expected a single value", True, id="nested value in a free map"),
    pytest.param(_app("skip_files:\n  a: b\n"), 3, "skip_files: expected a single value, found a mapping", True, id="mapping for skip_files"),
    pytest.param(_app("builtins:\n- deferred: on\n  appstats: on\n"), 3, "builtins[1]: expected exactly one key", True, id="two builtins in one entry"),
    pytest.param(_app("handlers:\n- <<: {login: admin}\n  url: /a\n  script: auto\n"), 3, "merge keys (<<) are not supported", True, id="merge key"),
    pytest.param(_app("x: &a 1\n"), 2, "anchor &a is not supported", True, id="anchor"),
    pytest.param(_app("service: &s worker\nversion: *s\n"), 2, "anchor &s", True, id="alias"),
    pytest.param(_app("---\nruntime: go\n"), 2, "a second YAML document", True, id="second document"),
    pytest.param(_app("handlers:\n- url: /a\n  script: auto\n  login: yes\n"), 5, "login: True is not one of", True, id="login yes"),
    pytest.param(_app("handlers:\n- url: /a\n  script: auto\n  login:\n"), 5, "login: no value", True, id="login empty"),
    pytest.param(_app("handlers:\n- url: /a\n  login: admin\n"), 3, "has no script", True, id="handler without a type"),
    pytest.param(_app("handlers:\n- url: /a\n  static_files: a\n"), 3, "no upload", True, id="static_files without upload"),
    pytest.param(_app("handlers:\n- url: a/.*\n  script: auto\n  login: admin\n"), 3, "must start with /", True, id="url without slash"),
    pytest.param(_app("threadsafe: !!int abc\n"), 2, "'abc' is not a valid !!int", True, id="int tag on junk"),
    pytest.param(_app("version: !foo x\n"), 2, "YAML tag '!foo' is not supported", True, id="custom tag"),
    pytest.param(_app("includes:\n- other.yaml\n"), 2, "includes is not supported by taskhandler", False, id="includes"),
    pytest.param(_app("api_config:\n  url: /_ah/spi/.*\n  script: api.app\n  login: admin\n"), 2, "api_config is not supported", False, id="api_config"),
    pytest.param(_app("handlers:\n- url: /a(\n  script: auto\n"), 3, "bad url regex", False, id="bad regex"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "fragment", "appengine_refuses"), STRICT)
def test_strict_app_yaml(
    tmp_path: Path, text: str, line: int, fragment: str, appengine_refuses: bool
) -> None:
    """Unknown keys, duplicate keys and unsafe YAML anywhere are a ConfigError naming file, line, key."""
    path = _write(tmp_path, "app.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_app_yaml(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert fragment in str(info.value)


def _appinfo_refuses(text: str) -> bool:
    try:
        AE.appinfo.LoadSingleAppInfo(text)
    except Exception:
        return True
    return False


@needs_appengine
@pytest.mark.parametrize(("text", "line", "fragment", "appengine_refuses"), STRICT)
def test_app_engine_agrees(text: str, line: int, fragment: str, appengine_refuses: bool) -> None:
    """App Engine's own parser refuses the same files (where it checks them at all)."""
    assert _appinfo_refuses(text) is appengine_refuses


def test_many_handlers_are_refused(tmp_path: Path) -> None:
    """More than App Engine's 100 handlers is refused, as App Engine does."""
    body = "".join(f"- url: /h{i}\n  script: auto\n" for i in range(MAX_HANDLERS + 1))
    with pytest.raises(ConfigError, match="at most 100"):
        load_app_yaml(_write(tmp_path, "app.yaml", _app("handlers:\n" + body)))


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param(_app("handlers:\n"), "no handlers", id="empty handlers"),
        pytest.param(_app("includes: []\n"), "empty includes", id="empty includes"),
        pytest.param(_app("automatic_scaling:\nenv_variables:\n"), "empty sections", id="empty"),
        pytest.param(_app("version: !!str 1\n"), "str tag", id="str tag"),
        pytest.param("\ufeffruntime: go\n", "byte order mark", id="BOM"),
        pytest.param(_app("'handlers':\n- url: /a\n  script: auto\n"), "quoted", id="quoted key"),
        pytest.param(_app("skip_files: ^x$\n"), "one pattern", id="skip_files as one value"),
    ],
)
def test_unusual_but_valid_app_yaml(tmp_path: Path, text: str, kind: str) -> None:
    """Unusual spellings App Engine accepts load too."""
    assert load_app_yaml(_write(tmp_path, "app.yaml", text)).source is not None


def test_utf16_app_yaml_loads(tmp_path: Path) -> None:
    """An app.yaml saved as UTF-16 with a byte order mark is read like UTF-8."""
    path = tmp_path / "app.yaml"
    path.write_bytes(
        _app("handlers:\n- url: /t/.*\n  script: auto\n  login: admin\n").encode("utf-16")
    )
    assert [r.login for r in load_app_yaml(path).rules] == ["admin"]


# --------------------------------------------------------------------------- hostile YAML

BOMB = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
handlers: *i
"""


@pytest.fixture(params=["libyaml", "pure Python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's parser (the default when present) and with PyYAML's own."""
    if request.param == "libyaml":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML was built without libyaml")
        monkeypatch.setattr(config_module, "_Loader", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(config_module, "_Loader", yaml.SafeLoader)
    return str(request.param)


HOSTILE = [
    pytest.param(BOMB, 1, "anchor &a is not supported", id="billion laughs"),
    pytest.param(b"a: *x\n", 1, "alias *x is not supported", id="alias without anchor"),
    pytest.param(b"[" * 100_000, 1, "", id="deep flow lists"),
    pytest.param(b"{a: " * 100_000, 1, "nested more than 32", id="deep flow mappings"),
    pytest.param(b"- " * 50_000 + b"x\n", 1, "nested more than 32", id="deep block lists"),
    pytest.param(b"a: " + b"[" * 32 + b"]" * 32 + b"\n", 1, "nested more than 32", id="33 deep"),
    pytest.param(b"a: " + b"9" * 5000 + b"\n", 1, "number longer than 64", id="huge integer"),
    pytest.param(b"a: 1" + b":59" * 30 + b"\n", 1, "number longer", id="long sexagesimal"),
    pytest.param(b"a: " + b"1" * 100 + b".5\n", 1, "number longer", id="huge float"),
    pytest.param(b"a: !!int abc\n", 1, "'abc' is not a valid !!int", id="int tag on text"),
    pytest.param(b"a: !!float x\n", 1, "not a valid !!float", id="float tag on text"),
    pytest.param(b"a: !!bool maybe\n", 1, "'maybe' is not a YAML boolean", id="bool tag on text"),
    pytest.param(b"a: !!timestamp 2001-02-30\n", 1, "not a valid !!timestamp", id="impossible date"),
    pytest.param(b"a: 2001-02-30\n", 1, "not a valid !!timestamp", id="implicit bad date"),
    pytest.param(b"a: !!timestamp junk\n", 1, "not a valid !!timestamp", id="timestamp tag on text"),
    pytest.param(b"a: !!binary '%%%'\n", 1, "!!binary", id="binary tag"),
    pytest.param(b"a: !!python/object/apply:os.system ['true']\n", 1, "!!python/object/apply", id="python tag"),
    pytest.param(b"a: !!python/name:os.system ''\n", 1, "!!python/name", id="python name tag"),
    pytest.param(b"a: !!set {x}\n", 1, "!!set", id="set tag"),
    pytest.param(b"a: !!omap [x: 1]\n", 1, "!!omap", id="omap tag"),
    pytest.param(b"!!int 1: x\n", 1, "a key cannot carry a YAML tag", id="tag on a key"),
    pytest.param(b"a: \xff\xfe\n", 1, "invalid YAML", id="invalid UTF-8"),
    pytest.param(b"a: b\x00c\n", 1, "invalid YAML", id="NUL byte"),
    pytest.param(b"a: b\n\tc: d\n", 2, "invalid YAML", id="tab indentation"),
    pytest.param(b"a: 'unterminated\n", None, "invalid YAML", id="unterminated quote"),
    pytest.param(b"<<: {runtime: go}\n", 1, "merge keys", id="merge key at the top"),
    pytest.param(b"a: 1\n---\na: 2\n", 2, "second YAML document", id="two documents"),
    pytest.param(b"a: [" + b"1," * MAX_YAML_VALUES + b"]\n", 1, f"more than {MAX_YAML_VALUES} values", id="too many values"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "line", "fragment"), HOSTILE)
def test_hostile_yaml_is_a_config_error(
    tmp_path: Path, parser: str, data: bytes, line: int | None, fragment: str
) -> None:
    """Every hostile or broken YAML file is a short ConfigError naming the file, never a crash."""
    path = tmp_path / "app.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_app_yaml(path)
    error = info.value
    assert error.path == str(path)
    if line is not None:
        assert error.line == line
    assert fragment in str(error)
    assert len(str(error)) < len(str(path)) + 300


def test_file_size_is_capped(tmp_path: Path) -> None:
    """A file over the size cap is refused before it is parsed."""
    path = tmp_path / "app.yaml"
    path.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_app_yaml(path)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("/" + "(" * 100_000 + ")" * 100_000, "nested too deeply", id="deep groups"),
        pytest.param("/a{4294967295}", "repeat count is too large", id="huge repeat"),
        pytest.param("/a{2,1}", "min repeat greater than max repeat", id="inverted repeat"),
        pytest.param("/(?P<x>a)(?P<x>b)", "redefinition of group name", id="duplicate group"),
    ],
)
def test_url_regexes_that_do_not_compile(tmp_path: Path, url: str, problem: str) -> None:
    """A url regex the compiler refuses in any way is a ConfigError naming the handler's line."""
    text = _app(f"handlers:\n- url: x\n  script: auto\n- url: '{url}'\n  script: auto\n")
    path = _write(tmp_path, "app.yaml", text.replace("url: x", "url: /x"))
    with pytest.raises(ConfigError) as info:
        load_app_yaml(path)
    assert info.value.line == 5
    assert "handlers[2].url: bad url regex" in str(info.value)
    assert problem in str(info.value)
    assert len(str(info.value)) < len(str(path)) + 300
    with pytest.raises(ValueError, match=problem):
        AccessRule(url=url)


def test_shown_is_bounded() -> None:
    """Values put into messages are cut to a few dozen characters, whatever their size."""
    assert len(shown("x" * 10_000_000)) < 80
    assert len(shown([["x" * 1000] * 1000] * 1000)) < 200


# --------------------------------------------------------------------------- hostile web.xml


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(
            b'<?xml version="1.0" encoding="x-nope"?><web-app/>',
            "unsupported encoding declaration",
            id="unknown encoding",
        ),
        pytest.param(
            b'<?xml version="1.0" encoding="shift_jis"?><web-app/>',
            "unsupported encoding declaration",
            id="multi-byte encoding",
        ),
        pytest.param(b"<web-app>" + b"<a>" * 100 + b"</a>" * 100 + b"</web-app>", "nested more than 64", id="deep nesting"),
        pytest.param(b"<web-app>" + b"<a/>" * 100_001 + b"</web-app>", "more than 100000 elements", id="many elements"),
        pytest.param(b"<web-app>\xff</web-app>", "invalid XML", id="invalid UTF-8"),
        pytest.param(b"<web-app>\x00</web-app>", "invalid XML", id="NUL byte"),
        pytest.param(b"<web-app><url-pattern>" + b"a" * 1_000_000, "invalid XML", id="unclosed huge text"),
    ],
)  # fmt: skip
def test_hostile_web_xml_is_a_config_error(tmp_path: Path, data: bytes, fragment: str) -> None:
    """Hostile or broken web.xml files are a ConfigError naming the file, never a crash."""
    path = tmp_path / "web.xml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_web_xml(path)
    assert info.value.path == str(path)
    assert fragment in str(info.value)
    assert len(str(info.value)) < len(str(path)) + 300


def test_web_xml_text_in_many_pieces(tmp_path: Path) -> None:
    """Text split by thousands of entity references is joined, not re-copied per piece."""
    pattern = "/a" + "&amp;" * 150_000
    text = (
        '<?xml version="1.0" encoding="cp1252"?><web-app><security-constraint>'
        f"<web-resource-collection><url-pattern>{pattern}</url-pattern>"
        "</web-resource-collection></security-constraint></web-app>"
    )
    (rule,) = load_web_xml(_write(tmp_path, "web.xml", text)).rules
    assert rule.matches("/a" + "&" * 150_000)


def test_web_xml_sample_loads() -> None:
    """A servlet 3.1 web.xml with servlets and two constraints loads in servlet order."""
    config = load_web_xml(SAMPLES / "web.xml")
    assert [(r.url, r.login, r.secure) for r in config.rules] == [
        ("/tasks(?:/.*)?", "admin", "optional"),
        ("/cron(?:/.*)?", "admin", "optional"),
        ("/.*", "optional", "always"),
    ]


# --------------------------------------------------------------------------- cron.yaml


def test_cron_sample_loads() -> None:
    """Every cron.yaml key is read: url, schedule, time zone, target, deadline, retries."""
    jobs = load_cron_yaml(SAMPLES / "cron.yaml")
    assert [(j.url, j.schedule, j.timezone, j.target) for j in jobs] == [
        ("/tasks/summary", "every 24 hours", None, "worker"),
        ("/mail/weekly", "every monday 09:00", "Australia/NSW", None),
        ("/tasks/cleanup", "every 5 minutes from 10:00 to 14:00", None, None),
    ]
    assert jobs[1].attempt_deadline == 600.0
    assert jobs[2].retry_parameters == CronRetryParameters(
        job_retry_limit=2,
        job_age_limit=7200.0,
        min_backoff_seconds=2.5,
        max_backoff_seconds=60.0,
        max_doublings=3,
    )
    assert [j.line for j in jobs] == [2, 6, 11]


@needs_appengine
def test_cron_sample_is_valid_for_app_engine() -> None:
    """The cron.yaml sample is valid for App Engine's croninfo too."""
    AE.croninfo.LoadSingleCron((SAMPLES / "cron.yaml").read_text())


def _cron(entry: str) -> str:
    return "cron:\n- url: /a\n  schedule: every 5 minutes\n" + entry


# (text, line, fragment, App Engine's croninfo refuses it too)
BAD_CRON = [
    pytest.param(_cron("  shedule: every day 00:00\n"), 4, "unknown key 'shedule' in cron[1] (did you mean 'schedule'?)", True, id="misspelt schedule"),
    pytest.param(_cron("  url: /b\n"), 4, "duplicate key 'url' (first on line 2)", True, id="second url"),
    pytest.param(_cron("  retry_parameters:\n    job_retry_limt: 2\n"), 5, "cron[1].retry_parameters", True, id="misspelt retry key"),
    pytest.param("crons:\n- url: /a\n", 1, "did you mean 'cron'?", True, id="misspelt cron"),
    pytest.param("cron:\n- schedule: every 5 minutes\n", 2, "cron[1] has no url", True, id="no url"),
    pytest.param("cron:\n- url: /a\n", 2, "cron[1] has no schedule", True, id="no schedule"),
    pytest.param("cron:\n- url: a\n  schedule: every 5 minutes\n", 2, "is not a path starting with /", True, id="url without slash"),
    pytest.param("cron:\n- url: /a\n  schedule: yes\n", 3, "cron[1].schedule: True", True, id="schedule yes"),
    pytest.param(_cron("  timezone: Mars/Olympus\n"), 4, "not a known time zone", True, id="unknown timezone"),
    pytest.param(_cron("  target: Bad_Target\n"), 4, "cron[1].target", True, id="bad target"),
    pytest.param(_cron("  attempt_deadline: 10m\n"), 4, "seconds like 600s", True, id="deadline in minutes"),
    pytest.param(_cron("  attempt_deadline: 0s\n"), 4, "not a positive duration", False, id="zero deadline"),
    pytest.param(_cron("  attempt_deadline: " + "9" * 400 + "s\n"), 4, "not a positive duration", True, id="endless deadline"),
    pytest.param(_cron("  retry_parameters:\n    job_age_limit: " + "9" * 400 + "d\n"), 5, "is too long", False, id="endless age"),
    pytest.param(_cron("  retry_parameters:\n    job_retry_limit: -1\n"), 5, "job_retry_limit: -1 is not an integer >= 0", True, id="negative retry limit"),
    pytest.param(_cron("  retry_parameters:\n    job_age_limit: 2w\n"), 5, "job_age_limit: '2w'", True, id="age in weeks"),
    pytest.param(_cron("  retry_parameters:\n    min_backoff_seconds: 10\n    max_backoff_seconds: 5\n"), 6, "max_backoff_seconds is smaller", False, id="max backoff below min"),
    pytest.param("cron:\n  url: /a\n", 2, "cron: expected a list", True, id="cron not a list"),
    pytest.param("cron:\n- /a\n", 2, "cron[1]: expected a mapping", True, id="entry not a mapping"),
    pytest.param("cron: &c []\n", 1, "anchor &c", True, id="anchor"),
    pytest.param("", None, "expected a mapping with a cron: list", True, id="empty file"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "fragment", "appengine_refuses"), BAD_CRON)
def test_bad_cron_yaml(
    tmp_path: Path, text: str, line: int | None, fragment: str, appengine_refuses: bool
) -> None:
    """A bad cron.yaml is a ConfigError naming the file, the line and the key or value."""
    path = _write(tmp_path, "cron.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_cron_yaml(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert fragment in str(info.value)


@needs_appengine
@pytest.mark.parametrize(("text", "line", "fragment", "appengine_refuses"), BAD_CRON)
def test_croninfo_agrees(
    text: str, line: int | None, fragment: str, appengine_refuses: bool
) -> None:
    """App Engine's croninfo refuses the same cron.yaml files, where it checks them."""
    try:
        AE.croninfo.LoadSingleCron(text)
    except Exception:
        refused = True
    else:
        refused = False
    assert refused is appengine_refuses
