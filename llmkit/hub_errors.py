"""How ``llmkit download`` reports hub failures, and retries the transient ones.

Every failure is one line naming the repo (and the file), the status and what to do; the only URL it may
hold is the endpoint's (the hub, or the mirror the user chose), without credentials.

Retries. huggingface_hub 2.4, for the calls llmkit makes: ``HfApi.model_info`` is not retried;
``list_repo_tree`` retries 408/429/5xx and network errors 5 times (waiting 1, 2, 4, 8, 8 s);
``hf_hub_download(force_download=True)`` does not retry its metadata request (HEAD) and retries the byte
transfer (GET) only on 408/429, 5 times. llmkit adds what is missing: a call answered 429, 500, 502, 503 or
504 that the client did not retry itself is tried :data:`RETRIES` more times, waiting :data:`RETRY_WAIT`
seconds, doubled each time (1, 2, 4 s), or what the server's ``Retry-After`` asks up to
:data:`RETRY_AFTER_MAX` seconds (a longer wait is not made, and is named in the error).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from llmkit.errors import InputError, LlmkitError
from llmkit.redact import without_credentials

TRANSIENT = frozenset({429, 500, 502, 503, 504})
RETRIES = 3  # tries after the first
RETRY_WAIT = 1.0  # seconds before the first retry, doubled for each next one
RETRY_AFTER_MAX = 60  # the longest Retry-After waited for
CLIENT_RETRIED_GET = frozenset({408, 429})  # what hf_hub_download's byte GET already retries itself

T = TypeVar("T")


@dataclass
class Attempts:
    """The tries of one hub call: how many retries llmkit made, and since when."""

    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    refused_wait: float | None = None  # a Retry-After longer than RETRY_AFTER_MAX

    def seconds(self) -> float:
        return time.monotonic() - self.started


def http_cause(e: BaseException | None) -> Any:
    """The ``HfHubHTTPError`` behind ``e`` (the client wraps some, e.g. in "Force download failed"), or None."""
    from huggingface_hub import errors

    while e is not None and not isinstance(e, errors.HfHubHTTPError):
        e = e.__cause__ or e.__context__
    return e


def status_of(e: Any) -> int | None:
    return getattr(getattr(e, "response", None), "status_code", None)


def client_retried_get(e: Any) -> bool:
    """True for a byte GET that ``hf_hub_download`` already retried itself (408/429)."""
    method = getattr(getattr(getattr(e, "response", None), "request", None), "method", None)
    return method == "GET" and status_of(e) in CLIENT_RETRIED_GET


def _retry_after(e: Any) -> float | None:
    value = getattr(getattr(e, "response", None), "headers", {}).get("Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:  # an HTTP date: not worth a parser here, the backoff applies
        return None


def with_retries(
    call: Callable[[], T],
    attempts: Attempts,
    *,
    client_retried: Callable[[Any], bool] = lambda e: False,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """``call()``, tried again on a transient answer (see the module docstring); ``attempts`` records the tries."""
    while True:
        try:
            return call()
        except Exception as e:
            cause = http_cause(e)
            if (
                cause is None
                or status_of(cause) not in TRANSIENT
                or client_retried(cause)
                or attempts.retries >= RETRIES
            ):
                raise
            asked = _retry_after(cause)
            if asked is not None and asked > RETRY_AFTER_MAX:
                attempts.refused_wait = asked
                raise
            pause = asked if asked is not None else RETRY_WAIT * 2**attempts.retries
        (sleep or time.sleep)(pause)
        attempts.retries += 1


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a client message, credentials removed, at most ``limit`` characters."""
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    first = without_credentials(" ".join(first.split()))
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _phrase(status: int | None) -> str:
    if status is None:
        return "an unknown status"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "an unknown status"


def _tried(attempts: Attempts | None) -> str:
    if attempts is None:
        return ""
    if attempts.refused_wait is not None:
        return f", asking to wait {attempts.refused_wait:.0f} s"
    if attempts.retries:
        return f", also on {attempts.retries} retries over {attempts.seconds():.0f} s"
    if attempts.seconds() >= 2:  # the client retried it itself
        return f", still after {attempts.seconds():.0f} s of retries"
    return ""


def _transient(status: int, what: str, endpoint: str, attempts: Attempts | None, file: str | None) -> str:
    """The message of a 429/5xx answer; the hint is :func:`_transient_hint`."""
    phrase = _phrase(status)
    kept = "nothing was kept under its name" if file else "nothing was downloaded"
    return f"{endpoint} answered HTTP {status} ({phrase}) for {what}{_tried(attempts)}; {kept}"


def _transient_hint(status: int) -> str:
    rerun = "run the same command again later (files that verified are skipped)"
    if status == 429:
        return (
            f"the server limits how fast requests may come: {rerun}; a token (HF_TOKEN or hf auth login) "
            "may raise the limit; or use a mirror with --endpoint URL"
        )
    return f"the server, or a proxy in front of it, is overloaded or down: {rerun}, or use a mirror with --endpoint URL"


def hub_error(
    e: BaseException,
    repo: str,
    endpoint: str,
    *,
    file: str | None = None,
    path: Any = None,
    attempts: Attempts | None = None,
) -> LlmkitError:
    """One line for a hub failure about ``repo`` (and its ``file``); ``path``: the output it is about."""
    from huggingface_hub import errors

    endpoint = without_credentials(endpoint)
    what = f"{repo}'s {file}" if file else f"the file list of {repo}"
    if isinstance(e, errors.GatedRepoError):
        return InputError(
            f"{repo} is gated on {endpoint}: access needs an accepted licence and a token",
            path=path,
            hint="accept its terms on the hub page, then set HF_TOKEN or run hf auth login",
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return InputError(
            f"no repository {repo} on {endpoint} (or it is private)",
            path=path,
            hint="check the name (llmkit models lists the known ones); for a private repo set "
            "HF_TOKEN or run hf auth login",
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return InputError(f"{repo} has no such revision", path=path, hint="check --revision")
    if isinstance(e, errors.HfHubHTTPError):
        status = status_of(e)
        if status in (401, 403):
            return InputError(
                f"{endpoint} refused access to {repo} (HTTP {status})",
                path=path,
                hint="set HF_TOKEN or run hf auth login with a token that can read it",
            )
        if status in TRANSIENT:
            return InputError(
                _transient(status, what, endpoint, attempts, file), path=path, hint=_transient_hint(status)
            )
        phrase = _phrase(status)
        said = one_line(getattr(e, "server_message", None) or "")
        said = f": {said}" if said and "://" not in said else ""
        return InputError(
            f"{endpoint} answered HTTP {status} ({phrase}) for {what}{said}",
            path=path,
            hint="check the repo name and --revision; try again later or another --endpoint",
        )
    return InputError(
        f"cannot reach {endpoint} for {what} ({type(e).__name__}: {one_line(str(e))})",
        path=path,
        hint="check the network or the mirror (--endpoint / HF_ENDPOINT); try again later",
    )
