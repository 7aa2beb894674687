"""The shared HTTP layer: auth, timeouts, retries honoring Retry-After, rate limiting, pagination.

Every httpx-based connector talks to its vendor through one :class:`HttpLayer`; connector modules
only describe *what* to fetch. SDK-based connectors (Salesforce, HubSpot) reuse :func:`with_retries`
and :class:`RateBudget` around their SDK calls so the retry and budget policy is the same everywhere.

OAuth: :class:`TokenSource` holds one access token per connector (fetched on first use, reused
until shortly before it expires, renewed when the vendor refuses it), :func:`fetch_token` asks a
vendor's token endpoint for one, and :class:`BearerAuth` puts it on every httpx request.

Pagination is a small object per style (:class:`NextUrlPaging`, :class:`TokenPaging`) driven by
:func:`paginate`, which guards against a vendor returning a cursor it already returned.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from connectors.errors import (
    AuthError,
    BadRequestError,
    ConnectorError,
    PaginationLoopError,
    RateLimitedError,
    TransientError,
    error_for,
)
from omnisync.privacy import mask_text

log = logging.getLogger("omnisync.http")
T = TypeVar("T")


def seg(value: object) -> str:
    """One URL path segment from a vendor or record id: ``/``, ``?``, ``#``, ``..`` and control
    characters are percent-encoded, so an id can never reach another resource or cut the path."""
    text = str(value)
    return "%2E%2E" if text == ".." else "%2E" if text == "." else quote(text, safe="")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


@dataclass
class RetryPolicy:
    """How hard to try: attempts, total time budget and backoff bounds (seconds)."""

    attempts: int = 6
    max_elapsed: float = 120.0
    backoff_initial: float = 0.2
    backoff_max: float = 20.0
    max_retry_after: float = 120.0


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    expo = wait_exponential_jitter(initial=policy.backoff_initial, max=policy.backoff_max)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_retry_after)
        return expo(state)

    return wait


def with_retries(fn: Callable[[], T], *, policy: RetryPolicy | None = None,
                 on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Call ``fn`` retrying :class:`TransientError` (incl. rate limits) with backoff.

    Retry-After from a :class:`RateLimitedError` wins over the exponential backoff. Anything not
    transient (4xx, quota exhaustion, auth) propagates at once.
    """
    policy = policy or RetryPolicy()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry and exc is not None:
            on_retry(exc)
        log.info("retrying after %s (attempt %d)", type(exc).__name__, state.attempt_number)

    retrying = Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, ConnectorError) and e.retryable),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_elapsed),
        wait=_wait(policy),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


class RateBudget:
    """Client-side request budget: a token bucket the vendor's usage headers keep honest.

    ``rate``/``burst`` describe the documented limit (e.g. HubSpot 100 requests per 10 s). When a
    response says how much is left (``observe``), the bucket is lowered to match, so concurrent
    callers sharing the budget slow down *before* the vendor starts answering 429.
    Thread-safe; share one instance per tenant and vendor.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, n: int = 1) -> None:
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= n:
                    self._tokens -= n
                    return
                need = (n - self._tokens) / self.rate
            self.waited += need
            self._sleep(need)

    def observe(self, remaining: int | None, window_reset_s: float | None = None) -> None:
        """Lower the bucket to what the vendor says remains in its window."""
        if remaining is None:
            return
        with self._lock:
            self._refill()
            if remaining <= 0 and window_reset_s is not None:
                # Spent: nobody may call until the window resets, however full the bucket was.
                self._tokens = min(self._tokens, -window_reset_s * self.rate)
            elif remaining < self._tokens:
                self._tokens = float(remaining)


@dataclass(frozen=True)
class IssuedToken:
    """A token endpoint's answer: the token, its lifetime in seconds (None: until refused) and
    whatever else the vendor said (Salesforce's ``instance_url``)."""

    value: str = field(repr=False)
    lifetime: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


class TokenSource:
    """One OAuth access token, shared by every thread of a connector.

    ``fetch`` asks the vendor for a new token (None: the token is static, e.g. a session id given
    by hand, and cannot be renewed). The token is fetched on first use and reused until shortly
    before its lifetime ends (a tenth of it, at most ``early`` seconds), so a long sync renews it
    between requests rather than after a refusal. :meth:`renew` replaces a token the vendor refused
    (revoked, or expired early); threads that all saw the same refusal cause one fetch, not one
    each. The token never appears in ``repr`` or in any message.
    """

    def __init__(self, fetch: Callable[[], IssuedToken] | None, *, initial: str | None = None,
                 early: float = 60.0, clock: Callable[[], float] = time.monotonic):
        if fetch is None and not initial:
            raise ValueError("a TokenSource needs a way to fetch tokens or an initial token")
        self._fetch = fetch
        self._clock = clock
        self._early = early
        self._lock = threading.Lock()
        self._value: str | None = initial
        self._refresh_at: float | None = None
        self.extra: dict[str, Any] = {}
        self.fetches = 0
        self.renewals = 0

    def __repr__(self) -> str:
        return f"TokenSource(fetches={self.fetches}, renewals={self.renewals})"

    @property
    def renewable(self) -> bool:
        return self._fetch is not None

    def current(self) -> str:
        """The token to send now, fetched first when there is none or it is about to expire."""
        with self._lock:
            if self._value is None or (self._refresh_at is not None and self._clock() >= self._refresh_at):
                self._get()
            return self._value  # type: ignore[return-value]

    def renew(self, refused: str) -> str | None:
        """A new token in place of ``refused``; None when tokens cannot be renewed. A token another
        thread already fetched after the same refusal is returned as is."""
        with self._lock:
            if self._value != refused and self._value is not None:
                return self._value
            if self._fetch is None:
                return None
            self.renewals += 1
            self._get()
            return self._value

    def _get(self) -> None:
        assert self._fetch is not None, "a static token that expired is refused by the vendor, not here"
        issued = self._fetch()
        self.fetches += 1
        now = self._clock()
        self._value = issued.value
        self.extra = dict(issued.extra)
        life = issued.lifetime
        self._refresh_at = None if life is None else now + life - min(self._early, life / 10)


_SHARED: dict[tuple[str, ...], TokenSource] = {}
_SHARED_LOCK = threading.Lock()


def shared_tokens(url: str, client_id: str, secret: str, fetch: Callable[[], IssuedToken]) -> TokenSource:
    """The process's one :class:`TokenSource` for an OAuth client.

    Connectors made one after another (each flow run, task or push) reuse its token rather than
    ask for a new one each: vendors cap how many live tokens one client may hold, and a token
    request per connector would double the calls of a short sync. The client is keyed by token URL,
    client id and a digest of the secret (a rotated secret is a new client)."""
    key = (url, client_id, hashlib.sha256(secret.encode()).hexdigest())
    with _SHARED_LOCK:
        source = _SHARED.get(key)
        if source is None:
            source = _SHARED[key] = TokenSource(fetch)
        return source


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` from a :class:`TokenSource`. A response ``expired(response)``
    calls a refused token gets one new token and the request is sent once more; a second refusal
    is the caller's to report (the credentials themselves are wrong or revoked)."""

    requires_response_body = True

    def __init__(self, tokens: TokenSource, *, expired: Callable[[httpx.Response], bool] | None = None):
        self.tokens = tokens
        self.expired = expired or (lambda r: r.status_code == 401)
        self.resent = 0  # requests sent again with a renewed token (API calls the caller did not count)
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request):
        token = self.tokens.current()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if self.tokens.renewable and self.expired(response):
            fresh = self.tokens.renew(token)
            if fresh is not None:
                request.headers["Authorization"] = f"Bearer {fresh}"
                with self._lock:
                    self.resent += 1
                yield request


def fetch_token(*, system: str, url: str, form: dict[str, str], basic: tuple[str, str] | None = None,
                verify: Any = True, timeout: float = 30.0, refused: str,
                transport: httpx.BaseTransport | None = None) -> IssuedToken:
    """POST a token request (OAuth 2.0 client credentials, or a vendor's variant of it).

    A refusal (4xx) is an :class:`AuthError` carrying the vendor's error code and description and
    ``refused`` (what the user should fix); 429, 5xx and transport faults are transient, for the
    caller's retries. Neither the secret nor the token is ever part of a message.
    """
    try:
        with httpx.Client(verify=verify, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                          transport=transport) as client:
            resp = client.post(url, data=form, auth=basic, headers={"Accept": "application/json"})
    except httpx.TimeoutException as e:
        raise TransientError("timed out asking for an access token", system=system) from e
    except httpx.TransportError as e:
        raise TransientError(f"connection failed asking for an access token: {type(e).__name__}",
                             system=system) from e
    if resp.status_code == 429 or resp.status_code >= 500:
        raise error_for(resp.status_code, "token endpoint unavailable", system=system,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400:
        body = body if isinstance(body, dict) else {}
        code = str(body.get("error") or "") or None
        why = str(body.get("error_description") or body.get("reason") or "no reason given")
        raise AuthError(f"the token endpoint refused the client credentials: {code or 'error'} "
                        f"({mask_text(why)[:120]})", system=system, status=resp.status_code, code=code,
                        action=refused)
    if not isinstance(body, dict) or not body.get("access_token"):
        raise TransientError("the token endpoint answered without an access token", system=system)
    try:
        lifetime = float(body["expires_in"]) if body.get("expires_in") is not None else None
    except (TypeError, ValueError):
        lifetime = None
    extra = {k: v for k, v in body.items() if k not in ("access_token", "refresh_token", "id_token", "signature")}
    return IssuedToken(str(body["access_token"]), lifetime, extra)


@dataclass
class HttpStats:
    calls: Counter = field(default_factory=Counter)
    retries: int = 0

    @property
    def total(self) -> int:
        return sum(self.calls.values())


class HttpLayer:
    """One vendor's HTTP client: base URL, auth, timeouts, retries, budget and call counting.

    ``error_code`` extracts the vendor's error code from an error response (for the
    classification table) and ``usage`` reads remaining-budget headers into the
    :class:`RateBudget`. Both are small per-vendor functions supplied by the connector.
    """

    def __init__(self, *, system: str, base_url: str, auth: httpx.Auth | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0,
                 budget: RateBudget | None = None, policy: RetryPolicy | None = None,
                 error_code: Callable[[httpx.Response], str | None] | None = None,
                 usage: Callable[[httpx.Response], tuple[int | None, float | None]] | None = None,
                 verify: Any = True, transport: httpx.BaseTransport | None = None):
        self.system = system
        self.budget = budget
        self.policy = policy or RetryPolicy()
        self.stats = HttpStats()
        self._count_lock = threading.Lock()  # a connector may send from several threads (lookups)
        self._error_code = error_code
        self._usage = usage
        self.client = httpx.Client(base_url=base_url, auth=auth, headers=headers,
                                   timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                   verify=verify, transport=transport)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "HttpLayer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _once(self, method: str, url: str, endpoint: str, **kw: Any) -> httpx.Response:
        if self.budget:
            self.budget.acquire()
        with self._count_lock:
            self.stats.calls[f"{method} {endpoint}"] += 1
        try:
            resp = self.client.request(method, url, **kw)
        except httpx.InvalidURL as e:  # a value unfit for a URL (a raw CR/LF): this record's fault only
            raise BadRequestError(f"{method} {endpoint}: not a valid URL", system=self.system) from e
        except httpx.TimeoutException as e:
            raise TransientError(f"timed out calling {endpoint}", system=self.system) from e
        except httpx.TransportError as e:
            raise TransientError(f"connection failed calling {endpoint}: {type(e).__name__}",
                                 system=self.system) from e
        if self.budget and self._usage:
            self.budget.observe(*self._usage(resp))
        if resp.status_code >= 400:
            code = None
            if self._error_code:
                try:
                    code = self._error_code(resp)
                except ValueError:
                    code = None
            raise error_for(resp.status_code, f"{method} {endpoint} failed", system=self.system, code=code,
                            retry_after=parse_retry_after(resp.headers.get("Retry-After")))
        return resp

    def request(self, method: str, url: str, *, endpoint: str | None = None, **kw: Any) -> httpx.Response:
        """Send a request, retrying transient faults; raise a classified error otherwise."""
        return self._retried(lambda e: self._once(method, url, e, **kw), url, endpoint)

    def json(self, method: str, url: str, *, endpoint: str | None = None, **kw: Any) -> Any:
        """:meth:`request` and its JSON body; a body that does not parse (a truncated answer is a
        transport fault in disguise) is retried with the call, within the same retry policy."""
        def once(e: str) -> Any:
            resp = self._once(method, url, e, **kw)
            try:
                return resp.json()
            except ValueError as exc:
                raise TransientError(f"unreadable JSON from {e}", system=self.system) from exc

        return self._retried(once, url, endpoint)

    def _retried(self, fn: Callable[[str], T], url: str, endpoint: str | None) -> T:
        endpoint = endpoint or url.split("?")[0]

        def on_retry(_: BaseException) -> None:
            with self._count_lock:
                self.stats.retries += 1

        return with_retries(lambda: fn(endpoint), policy=self.policy, on_retry=on_retry)


class Paging:
    """A pagination style: where the next page is, given the current response body."""

    def first(self, params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        return None, params

    def next(self, body: Any, url: str | None, params: dict[str, Any]) -> tuple[str | None, dict[str, Any]] | None:
        raise NotImplementedError

    def marker(self, url: str | None, params: dict[str, Any]) -> str:
        return f"{url}|{sorted(params.items())}"


@dataclass
class TokenPaging(Paging):
    """Next page named by a token in the body, sent back as a query parameter."""

    token_field: str = "next_page_token"
    token_param: str = "next_page_token"

    def next(self, body, url, params):
        token = _dig(body, self.token_field)
        if not token:
            return None
        return url, {**params, self.token_param: token}


@dataclass
class NextUrlPaging(Paging):
    """Next page given as a URL (absolute or relative) in the body; its query string is complete."""

    url_field: str = "next_page_uri"

    def next(self, body, url, params):
        nxt = _dig(body, self.url_field)
        if not nxt:
            return None
        return nxt, {}


def _dig(body: Any, path: str) -> Any:
    cur = body
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def paginate(fetch: Callable[[str | None, dict[str, Any]], Any], paging: Paging,
             params: dict[str, Any], *, max_pages: int = 1_000_000) -> Iterator[Any]:
    """Yield page bodies until the paging style says there are no more.

    ``fetch(url_or_None, params)`` returns a decoded body. Stops with
    :class:`PaginationLoopError` if a next-page marker repeats, and after ``max_pages``.
    """
    url, params = paging.first(dict(params))
    seen: set[str] = set()
    for _ in range(max_pages):
        marker = paging.marker(url, params)
        if marker in seen:
            raise PaginationLoopError("pagination returned a cursor it already returned")
        seen.add(marker)
        body = fetch(url, params)
        yield body
        nxt = paging.next(body, url, params)
        if nxt is None:
            return
        url, params = nxt
    raise PaginationLoopError(f"more than {max_pages} pages")
