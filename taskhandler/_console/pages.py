"""The console's HTML: small functions from plain data to escaped markup.

No template engine: each page is a handful of f-strings over values escaped with
:func:`html.escape` (``e``), so every value from a task (names, URLs, headers, payloads,
tracebacks) reaches the page as text, never as markup.
"""

from __future__ import annotations

import datetime
import html
import json
import urllib.parse
from collections.abc import Iterable, Mapping

e = html.escape

STATES = ("pending", "scheduled", "running", "retrying", "failed", "done")
STATE_WORDS = {
    "pending": "due now, waiting for the dispatcher",
    "scheduled": "waiting for its ETA (countdown or eta=)",
    "running": "being delivered",
    "retrying": "failed at least once, waiting for its next attempt",
    "failed": "given up after its retry limits (kept with its payload)",
    "done": "answered 2xx",
}


def in_words(moment: float, now: float) -> str:
    """``"in 59 minutes"``, ``"3 seconds ago"``, ``"now"``: the largest unit that fits, rounded."""
    delta = moment - now
    seconds = round(abs(delta))
    if seconds < 1:
        return "now"
    count, unit = seconds, "second"
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count, unit = round(seconds / size), name
            break
    words = f"{count} {unit}{'' if count == 1 else 's'}"
    return f"in {words}" if delta > 0 else f"{words} ago"


def utc_text(moment: float) -> str:
    """``2026-01-02 03:04:05 UTC``."""
    stamp = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def when(moment: float, now: float) -> str:
    """A ``<time>`` in words, with the exact UTC time as its title."""
    return f'<time title="{utc_text(moment)}">{e(in_words(moment, now))}</time>'


def link(base: str, path: str, **query: str | int) -> str:
    """A console URL with a query string (escaped for an attribute by the caller)."""
    shown = {k: str(v) for k, v in query.items() if v not in ("", None)}
    return f"{base}{path}" + (f"?{urllib.parse.urlencode(shown)}" if shown else "")


def badge(state: str) -> str:
    return f'<span class="badge {e(state)}">{e(state)}</span>'


def count_cell(value: int, href: str) -> str:
    cls = "count zero" if value == 0 else "count"
    return f'<td class="num"><a class="{cls}" href="{e(href)}">{value:,}</a></td>'


def hidden(**fields: str) -> str:
    return "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items())


def button(
    action_url: str,
    action: str,
    label: str,
    fields: Mapping[str, str],
    *,
    task: str = "",
    cls: str = "",
    confirm: str = "",
) -> str:
    """A POST form with one button (``data-action``/``data-task`` name it for tests)."""
    confirm_attr = f' data-confirm="{e(confirm)}"' if confirm else ""
    return (
        f'<form method="post" action="{e(action_url)}" class="inline"{confirm_attr}>'
        f"{hidden(**fields)}"
        f'<button type="submit" class="{e(cls)}" data-action="{e(action)}" '
        f'data-task="{e(task)}">{e(label)}</button></form>'
    )


def chart(per_minute: Mapping[int, Mapping[str, int]], now: float, minutes: int = 60) -> str:
    """An inline SVG of the last hour, per minute: attempts done, retried and failed."""
    last = int(now // 60)
    first = last - minutes + 1
    width, height, pad = 720, 140, 22
    bar = (width - pad) / minutes
    peak = max([sum(v.values()) for m, v in per_minute.items() if first <= m <= last] + [1])
    colours = (("done", "#1f8a4c"), ("retried", "#d08a17"), ("failed", "#c62f2f"))
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="attempts per minute, '
        f'last hour" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width}" y2="{height - pad}" stroke="#d9dee4"/>',
        f'<text x="0" y="12" font-size="10" fill="#5d6875">{peak}</text>',
        f'<text x="0" y="{height - pad}" font-size="10" fill="#5d6875">0</text>',
        f'<text x="{pad}" y="{height - 6}" font-size="10" fill="#5d6875">60 min ago</text>',
        f'<text x="{width - 30}" y="{height - 6}" font-size="10" fill="#5d6875">now</text>',
    ]
    scale = (height - pad - 8) / peak
    for index in range(minutes):
        values = per_minute.get(first + index, {})
        y = float(height - pad)
        x = pad + index * bar
        tip = ", ".join(f"{values.get(k, 0)} {k}" for k, _ in colours)
        for key, colour in colours:
            value = values.get(key, 0)
            if not value:
                continue
            h = value * scale
            y -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{minutes - index - 1} min ago: {tip}</title></rect>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{colour}"></i>{key}</span>' for key, colour in colours
    )
    return f'<div class="chart">{"".join(parts)}</div><div class="legend">{legend}</div>'


def pretty_payload(payload: bytes, headers: Iterable[tuple[str, str]]) -> str:
    """The body as the console shows it: indented JSON, a form's fields, text, or a size."""
    if not payload:
        return '<p class="muted">No payload.</p>'
    content_type = ""
    for name, value in headers:
        if name.lower() == "content-type":
            content_type = value.lower()
    text: str | None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        else:
            shown = json.dumps(data, indent=2, ensure_ascii=False)
            return f'<pre class="payload json">{e(shown)}</pre>'
        if "json" not in content_type and "=" in text and "\n" not in text:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
            if pairs:
                rows = "".join(
                    f"<tr><td class='name'>{e(k)}</td><td class='url'>{e(v)}</td></tr>"
                    for k, v in pairs
                )
                return (
                    '<table class="payload form"><tr><th>field</th><th>value</th></tr>'
                    f"{rows}</table>"
                )
        return f'<pre class="payload text">{e(text)}</pre>'
    return f'<p class="muted">{len(payload):,} bytes of binary data.</p>'


def headers_table(headers: Iterable[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><td class='name'>{e(k)}</td><td class='url'>{e(v)}</td></tr>" for k, v in headers
    )
    if not rows:
        return '<p class="muted">No headers.</p>'
    return f'<table class="headers"><tr><th>header</th><th>value</th></tr>{rows}</table>'


def document(
    *, title: str, body: str, base: str, user: str | None, logout: str, live: str = ""
) -> str:
    """The whole page: header with navigation and who is signed in, then ``body``.

    ``live`` is the URL of the JSON the page's ``#live`` part refreshes itself from.
    """
    who = ""
    if user is not None:
        who = (
            f'<p id="current">Signed in as {e(user)} (administrator). '
            f'<a id="logout" href="{e(logout)}">Sign out</a></p>'
        )
    script = f'<script src="{e(base)}/static/console.js" defer></script>' if live else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)} · Task queues</title>"
        f"<link rel='stylesheet' href='{e(base)}/static/console.css'>{script}</head><body>"
        f"<header class='top'><a class='brand' href='{e(base)}'>taskhandler · Task queues</a>"
        f"<nav><a href='{e(base)}'>Queues</a><a href='{e(base)}/add'>Add a task</a></nav>"
        f"{who}</header><main>{body}</main></body></html>"
    )
