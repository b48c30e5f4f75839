"""Access configuration: app.yaml / web.xml rules and the task deadline (SPEC §4, §5).

SEAM: loading is being built; the data model below is the contract.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .deadline import AUTOMATIC_SCALING_DEADLINE
from .exceptions import ConfigError

Login = Literal["optional", "required", "admin"]
AuthFailAction = Literal["redirect", "unauthorized"]
Secure = Literal["optional", "always", "never", "default"]


class AccessRule(BaseModel):
    """One ``handlers:`` entry: a URL regex and who may reach it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    login: Login = "optional"
    auth_fail_action: AuthFailAction = "redirect"
    secure: Secure = "optional"

    @field_validator("url")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad url regex {value!r}: {exc}") from None
        return value


class AppConfig(BaseModel):
    """What taskhandler takes from app.yaml / web.xml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[AccessRule, ...] = ()
    task_deadline: float = Field(default=AUTOMATIC_SCALING_DEADLINE, gt=0)
    entrypoint: str | None = None
    source: str | None = None


def load_app_yaml(path: str) -> AppConfig:
    raise ConfigError("load_app_yaml is not implemented yet", path=path)


def load_web_xml(path: str) -> AppConfig:
    raise ConfigError("load_web_xml is not implemented yet", path=path)
