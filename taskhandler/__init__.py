"""taskhandler: push-queue task handlers the App Engine way, run anywhere."""

from __future__ import annotations

from ._decorator import task_handler as task_handler
from .access import Refusal as Refusal
from .auth import AppEngineUserAuth as AppEngineUserAuth
from .auth import SignedCookieAuth as SignedCookieAuth
from .config import AccessRule as AccessRule
from .config import AppConfig as AppConfig
from .config import CronJob as CronJob
from .config import load_app_yaml as load_app_yaml
from .config import load_cron_yaml as load_cron_yaml
from .config import load_web_xml as load_web_xml
from .context import TaskContext as TaskContext
from .context import current_task as current_task
from .deadline import check_deadline as check_deadline
from .exceptions import ConfigError as ConfigError
from .exceptions import DeadlineExceededError as DeadlineExceededError
from .exceptions import InvalidTaskHeaders as InvalidTaskHeaders
from .exceptions import PermanentTaskFailure as PermanentTaskFailure
from .exceptions import RetryTask as RetryTask
from .exceptions import TaskHandlerError as TaskHandlerError
from .oidc import OIDCVerifier as OIDCVerifier
from .trust import Authenticator as Authenticator
from .trust import RequestInfo as RequestInfo
from .trust import TrustPolicy as TrustPolicy
from .trust import User as User
from .wsgi import TaskMiddleware as TaskMiddleware

__version__ = "0.1.0.dev0"

__all__ = [
    "AccessRule",
    "AppConfig",
    "AppEngineUserAuth",
    "Authenticator",
    "ConfigError",
    "CronJob",
    "DeadlineExceededError",
    "InvalidTaskHeaders",
    "OIDCVerifier",
    "PermanentTaskFailure",
    "Refusal",
    "RequestInfo",
    "RetryTask",
    "SignedCookieAuth",
    "TaskContext",
    "TaskHandlerError",
    "TaskMiddleware",
    "TrustPolicy",
    "User",
    "check_deadline",
    "current_task",
    "load_app_yaml",
    "load_cron_yaml",
    "load_web_xml",
    "task_handler",
]
