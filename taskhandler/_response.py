"""The one response the middleware answers with itself: refusals, failures, the 403s, pages.

Pure: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["OUTCOME_HEADER", "Response", "plain_response", "status_line"]

OUTCOME_HEADER = "X-Task-Outcome"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response: status, headers and the whole body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def plain_response(
    status: int,
    text: str,
    *,
    location: str | None = None,
    outcome: str | None = None,
    no_store: bool = False,
) -> Response:
    """A one-line ``text/plain`` response (never a traceback).

    Args:
        status: the HTTP status.
        text: the line to send; a newline is added.
        location: the ``Location`` of a redirect.
        outcome: the ``X-Task-Outcome`` word, for answers to task requests.
        no_store: add ``Cache-Control: no-store`` (refusals must not be cached by a proxy).
    """
    body = f"{text}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ]
    if no_store:
        headers.append(("Cache-Control", "no-store"))
    if location is not None:
        headers.append(("Location", location))
    if outcome is not None:
        headers.append((OUTCOME_HEADER, outcome))
    return Response(status, tuple(headers), body)


def status_line(status: int) -> str:
    """``404`` -> ``"404 Not Found"`` (unknown codes get the word ``Unknown``)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
