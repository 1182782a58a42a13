"""Who may read review texts and answer review items on the worker's web pages. No aiohttp here: the
views in `streams/ops/agents.py` hand this module the facts of a request and act on its answer.

Three ways to be someone, checked in this order:

- **A trusted proxy's header** (oauth2-proxy style, `X-Forwarded-User` by default): believed only when
  the TCP peer is inside `STREAMS_TRUSTED_PROXIES`; from any other address the header is ignored.
- **A reviewer token**, `Authorization: Bearer NAME.SECRET` (or as the password of HTTP Basic). Tokens
  are random (256 bits) and kept only as salted scrypt hashes in the reviewers file
  (`STREAMS_REVIEWERS_FILE`, lines `name:scrypt$N$r$p$salt$hash[:task,task]`). A verified token is
  remembered (by its SHA-256) for a few minutes, so scripts do not pay for scrypt on every call.
- **A browser session**: the login form takes a token once and sets a signed cookie (HMAC-SHA256;
  HttpOnly, SameSite=Strict) naming the reviewer and a fingerprint of their hash, so rotating or
  removing the token ends the session.

Every POST that is not authenticated by an `Authorization: Bearer` header needs a CSRF token: an HMAC
of the session (cookie: its random id; proxy and Basic: the name) and the time it was issued, sent in
the form's hidden field or an `X-CSRF-Token` header. Answers are rate-limited per reviewer (token
bucket), failed token checks per client address. Every secret comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

#: Reviewer names: what a reviewers-file line, a token and a feedback record's `reviewer` may hold.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
TASK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
#: A proxy's user header: printable ASCII, no control characters.
PROXY_USER = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,199}$")

#: scrypt cost: N=2^14, r=8, p=1 (16 MiB, ~35 ms on one core). The tokens are 256-bit random, so the slow
#: hash guards a leaked file against nothing a fast one would not; it is here because a reviewers file
#: may also hold hashes of tokens made elsewhere.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
NO_TOKEN = "-"  # the hash field of a proxy-only reviewer line: permissions, no token login

SESSION_COOKIE = "llmc_session"
LOGIN_COOKIE = "llmc_login"  # a login form's nonce (login CSRF: a cross-site POST does not carry it)
SESSION_TTL_S = 12 * 3600.0
CSRF_TTL_S = 12 * 3600.0
TOKEN_CACHE_S = 300.0
TOKEN_CACHE_MAX = 4096
#: Failed token checks per client address: 20 at once, then one every 3 s (each costs an scrypt).
FAILURE_BURST, FAILURE_RATE_PER_S = 20, 1 / 3
RELOAD_CHECK_S = 1.0  # how often the reviewers file is stat()ed for changes

Method = Literal["bearer", "basic", "session", "proxy", "off"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --------------------------------------------------------------------------- tokens and their hashes


def new_token(name: str) -> str:
    """A fresh token for `name`: `NAME.SECRET`, the secret 32 random bytes (base64url, no dots)."""
    if not NAME.match(name):
        raise ValueError(f"reviewer name {name!r} must match {NAME.pattern}")
    return f"{name}.{secrets.token_urlsafe(32)}"


def token_name(token: str) -> str | None:
    """The reviewer a token claims to be (before the last dot); None when it is not shaped like one."""
    name, dot, secret = token.rpartition(".")
    return name if dot and secret and NAME.match(name) else None


def hash_token(token: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
               salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$SALT$HASH` (base64url): what the reviewers file keeps instead of the token."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, dklen=SCRYPT_LEN, maxmem=_maxmem(n, r, p))
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _maxmem(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2) + 1024 * 1024


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    # Bounds keep a mistyped file from asking for gigabytes or minutes per check.
    if not (n >= 2 and n & (n - 1) == 0 and n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16 and len(salt) >= 8
            and len(digest) >= 16):
        return None
    return n, r, p, salt, digest


def verify_token(token: str, encoded: str) -> bool:
    """Whether `token` hashes to `encoded`, compared in constant time; False for an unreadable hash."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    got = hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=_maxmem(n, r, p))
    return hmac.compare_digest(got, digest)


_dummy_hash: list[str] = []


def _dummy() -> str:
    """A hash no token matches, verified against for unknown names so they cost what known ones do."""
    if not _dummy_hash:
        _dummy_hash.append(hash_token(secrets.token_urlsafe(16)))
    return _dummy_hash[0]


# --------------------------------------------------------------------------- the reviewers file


@dataclass(frozen=True)
class Reviewer:
    """One line of the reviewers file."""

    name: str
    hash: str | None  # None: a proxy-only line (permissions, no token)
    tasks: frozenset[str] | None = None  # None: every task

    @property
    def fingerprint(self) -> str:
        """Changes when the token changes: a session carries it, so a rotated token ends old sessions."""
        return hashlib.sha256((self.hash or NO_TOKEN).encode()).hexdigest()[:16]

    def line(self) -> str:
        tasks = f":{','.join(sorted(self.tasks))}" if self.tasks is not None else ""
        return f"{self.name}:{self.hash or NO_TOKEN}{tasks}"


class ReviewersError(ValueError):
    """A reviewers file that does not parse; messages name lines, never a hash."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_reviewers(text: str) -> dict[str, Reviewer]:
    """`name:hash[:task,task]` per line; `#` comments and blank lines are skipped. Raises ReviewersError."""
    out: dict[str, Reviewer] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) not in (2, 3):
            problems.append(f"line {number}: want name:hash or name:hash:task,task")
            continue
        name, encoded = parts[0].strip(), parts[1].strip()
        if not NAME.match(name):
            problems.append(f"line {number}: the name must match {NAME.pattern}")
            continue
        if encoded != NO_TOKEN and _parse_hash(encoded) is None:
            problems.append(f"line {number} ({name}): the hash is not scrypt$N$r$p$salt$hash "
                            "(make lines with `python -m streams review reviewers add NAME`)")
            continue
        tasks: frozenset[str] | None = None
        if len(parts) == 3 and parts[2].strip() not in ("", "*"):
            tasks = frozenset(t.strip() for t in parts[2].split(",") if t.strip())
            bad = sorted(t for t in tasks if not TASK_NAME.match(t))
            if bad:
                problems.append(f"line {number} ({name}): task names {bad} are not valid")
                continue
        if name in out:
            problems.append(f"line {number}: {name} is listed twice")
            continue
        out[name] = Reviewer(name, None if encoded == NO_TOKEN else encoded, tasks)
    if problems:
        raise ReviewersError(problems)
    return out


def read_reviewers(path: Path) -> dict[str, Reviewer]:
    """The file parsed; OSError/UnicodeDecodeError when unreadable, ReviewersError when malformed."""
    return parse_reviewers(path.read_text(encoding="utf-8"))


def write_reviewers(path: Path, reviewers: Mapping[str, Reviewer]) -> None:
    """Replace the file in one step (a reader sees the old or the new file, never half), mode 0600."""
    header = "# llm-classify reviewers: name:scrypt-hash[:tasks]. Edit with `python -m streams review reviewers`.\n"
    body = header + "".join(r.line() + "\n" for r in reviewers.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_reviewer(path: Path, name: str, tasks: frozenset[str] | None = None, replace: bool = False,
                 n: int = SCRYPT_N) -> str:
    """Append `name` with a new token's hash (replace=True: a new token for an existing name); the token."""
    reviewers = read_reviewers(path) if path.exists() else {}
    if name in reviewers and not replace:
        raise ValueError(f"{name} is already in {path}; use --rotate for a new token")
    token = new_token(name)
    reviewers[name] = Reviewer(name, hash_token(token, n=n), tasks)
    write_reviewers(path, reviewers)
    return token


class ReviewersFile:
    """The reviewers file, re-read when it changes (checked at most once a second), so adding, rotating
    or removing a reviewer needs no restart. Fails closed: an unreadable or malformed file admits nobody
    by token until it is fixed (`error` says why)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -1e18
        self._reviewers: dict[str, Reviewer] = {}
        self._lock = threading.Lock()

    def current(self) -> dict[str, Reviewer]:
        with self._lock:
            now = self.clock()
            if now - self._checked < RELOAD_CHECK_S:
                return self._reviewers
            self._checked = now
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._reviewers, self.error = read_reviewers(self.path), None
            except (OSError, UnicodeDecodeError, ReviewersError) as exc:
                self._stamp, self._reviewers = None, {}
                self.error = f"{self.path}: {exc}"
            return self._reviewers


# --------------------------------------------------------------------------- proxies


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma- or space-separated addresses or CIDRs; ValueError naming the entries that are neither."""
    entries = [e for e in re.split(r"[,\s]+", text.strip()) if e]
    nets: list[IPNetwork] = []
    bad: list[str] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            bad.append(entry)
    if bad:
        raise ValueError(f"{bad} are not IP addresses or CIDRs")
    return tuple(nets)


def is_trusted(remote: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the TCP peer is one of the configured proxies (an IPv4-mapped IPv6 peer counts as IPv4)."""
    if not remote or not networks:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


def is_loopback_host(host: str) -> bool:
    """Whether a web server bound to `host` is reachable from this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, "" or "0.0.0.0"-like wildcards: reachable from elsewhere


# --------------------------------------------------------------------------- signing: sessions, CSRF


class Signer:
    """HMAC-SHA256 with one key and a purpose per use, so a value signed for one use is refused in another."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a signing key needs at least 16 bytes")
        self._key = key

    def mac(self, purpose: str, *parts: str) -> str:
        msg = "\x1f".join((purpose, *parts)).encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest())

    def check(self, mac: str, purpose: str, *parts: str) -> bool:
        return hmac.compare_digest(mac.encode(), self.mac(purpose, *parts).encode())


@dataclass(frozen=True)
class Session:
    name: str
    fingerprint: str
    sid: str
    expires: float


def issue_session(signer: Signer, reviewer: Reviewer, now: float, ttl_s: float = SESSION_TTL_S) -> str:
    """The session cookie's value: base64url(JSON).MAC."""
    payload = _b64(orjson.dumps({"n": reviewer.name, "f": reviewer.fingerprint, "s": secrets.token_urlsafe(16),
                                 "e": int(now + ttl_s)}))
    return f"{payload}.{signer.mac('session', payload)}"


def read_session(signer: Signer, value: str | None, now: float) -> Session | None:
    """The session a cookie names, when its MAC is right and it has not expired."""
    if not value or value.count(".") != 1 or len(value) > 1024:
        return None
    payload, mac = value.split(".")
    if not signer.check(mac, "session", payload):
        return None
    try:
        data = orjson.loads(_unb64(payload))
        session = Session(str(data["n"]), str(data["f"]), str(data["s"]), float(data["e"]))
    except (ValueError, binascii.Error, KeyError, TypeError):
        return None
    return session if session.expires > now else None


def issue_csrf(signer: Signer, binding: str, now: float) -> str:
    """A CSRF token for one session (`binding`): issue time and a MAC over both."""
    issued = format(int(now), "x")
    return f"{issued}.{signer.mac('csrf', binding, issued)}"


def check_csrf(signer: Signer, binding: str, token: str | None, now: float, ttl_s: float = CSRF_TTL_S) -> bool:
    if not token or token.count(".") != 1 or len(token) > 200:
        return False
    issued, mac = token.split(".")
    try:
        at = int(issued, 16)
    except ValueError:
        return False
    return signer.check(mac, "csrf", binding, issued) and now - ttl_s <= at <= now + 60


def login_nonce() -> str:
    return secrets.token_urlsafe(16)


def login_csrf(signer: Signer, nonce: str) -> str:
    """The login form's hidden field: a MAC of the nonce in the login cookie, which a cross-site POST
    does not carry (SameSite=Strict), so nobody can log a browser in to their own account."""
    return signer.mac("login", nonce)


# --------------------------------------------------------------------------- rate limits


@dataclass
class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`."""

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(now - self.updated, 0.0) * self.rate_per_s)
        self.updated = now

    def wait_s(self, now: float) -> float:
        """0 when a token is there now, else the seconds until one is."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate_per_s

    def take(self, now: float) -> float:
        """Take a token: 0 when taken, else the seconds to wait (nothing taken)."""
        wait = self.wait_s(now)
        if wait == 0:
            self.tokens -= 1
        return wait

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class RateLimiter:
    """A token bucket per key (reviewer, client address), at most `max_keys` of them (full ones go first)."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                for k in [k for k, b in self._buckets.items() if b.full(now)]:
                    del self._buckets[k]
                while len(self._buckets) >= self.max_keys:
                    self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, updated=now)
        self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str, now: float) -> float:
        """0 when allowed (a token taken), else seconds until the next is."""
        with self._lock:
            return self._bucket(key, now).take(now)

    def wait_s(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (nothing taken)."""
        with self._lock:
            return self._bucket(key, now).wait_s(now) if key in self._buckets else 0.0


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Identity:
    """Who a request is. `binding` is what its CSRF tokens are bound to."""

    name: str
    method: Method
    binding: str
    tasks: frozenset[str] | None = None  # None: every task

    def may_answer(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    @property
    def needs_csrf(self) -> bool:
        """A browser can be made to send cookies, Basic credentials and a proxy's session cross-site, but not
        an `Authorization: Bearer` header; with authentication off there is no session to bind a token to."""
        return self.method not in ("bearer", "off")

    @property
    def session(self) -> bool:
        return self.method == "session"


ANONYMOUS = Identity("anonymous", "off", "off")


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 or 429
    message: str
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class RequestFacts:
    """What authentication looks at; header names lower-case."""

    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    remote: str | None

    @classmethod
    def of(cls, headers: Mapping[str, str], cookies: Mapping[str, str], remote: str | None) -> RequestFacts:
        return cls({k.lower(): v for k, v in headers.items()}, dict(cookies), remote)


def bearer_or_basic(authorization: str | None) -> str | None:
    """The token from `Bearer TOKEN`, or from Basic's password (its user name, when given, must be the
    token's name); "" for an Authorization header that carries no token; None without the header."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return password if not user or user == token_name(password) else ""
    return ""


@dataclass
class _Cached:
    name: str
    fingerprint: str
    until: float


@dataclass
class Authenticator:
    """Turns a request's facts into an Identity, a Refusal (401, 429) or None (no credentials at all).

    `identify` may run scrypt (a token not seen in the last few minutes): call it off the event loop when
    the request carries an Authorization header. Thread-safe.
    """

    enabled: bool
    signer: Signer
    reviewers: ReviewersFile | None = None
    proxies: tuple[IPNetwork, ...] = ()
    proxy_header: str = "X-Forwarded-User"
    failures: RateLimiter = field(default_factory=lambda: RateLimiter(FAILURE_RATE_PER_S, FAILURE_BURST))
    _cache: OrderedDict[bytes, _Cached] = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def configured(self) -> bool:
        """Whether anyone can authenticate at all."""
        return not self.enabled or self.reviewers is not None or bool(self.proxies)

    def _reviewers(self) -> dict[str, Reviewer]:
        return self.reviewers.current() if self.reviewers is not None else {}

    def identify(self, facts: RequestFacts, now: float) -> Identity | Refusal | None:
        if not self.enabled:
            return ANONYMOUS
        proxied = self._from_proxy(facts)
        if proxied is not None:
            return proxied
        token = bearer_or_basic(facts.headers.get("authorization"))
        if token is not None:
            scheme = facts.headers["authorization"].strip().split(" ", 1)[0].lower()
            return self.check_token(token, facts.remote, now, "basic" if scheme == "basic" else "bearer")
        return self._from_session(facts.cookies.get(SESSION_COOKIE), now)

    def _from_proxy(self, facts: RequestFacts) -> Identity | None:
        user = facts.headers.get(self.proxy_header.lower())
        if user is None or not is_trusted(facts.remote, self.proxies):
            return None  # a header from anywhere else is ignored: anyone can send one
        user = user.strip()
        if not PROXY_USER.match(user):
            return None
        listed = self._reviewers().get(user)
        return Identity(user, "proxy", f"proxy:{user}", listed.tasks if listed else None)

    def _from_session(self, cookie: str | None, now: float) -> Identity | None:
        session = read_session(self.signer, cookie, now)
        if session is None:
            return None
        reviewer = self._reviewers().get(session.name)
        if reviewer is None or reviewer.hash is None or not hmac.compare_digest(reviewer.fingerprint,
                                                                               session.fingerprint):
            return None  # removed, or the token was rotated: the session ends with it
        return Identity(reviewer.name, "session", f"session:{session.sid}", reviewer.tasks)

    def check_token(self, token: str, remote: str | None, now: float,
                    method: Method = "bearer") -> Identity | Refusal:
        """Verify a token (scrypt unless verified recently). Failures are rate-limited per client address."""
        reviewers = self._reviewers()
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached.until > now:
            reviewer = reviewers.get(cached.name)
            if reviewer is not None and reviewer.fingerprint == cached.fingerprint:
                return self._identity(reviewer, method)
        where = remote or "?"
        wait = self.failures.wait_s(where, now)
        if wait > 0:
            return Refusal(429, "too many failed logins from this address; wait and try again", wait)
        name = token_name(token) if len(token) <= 300 else None
        reviewer = reviewers.get(name) if name else None
        encoded = reviewer.hash if reviewer is not None and reviewer.hash else None
        ok = verify_token(token, encoded or _dummy()) and encoded is not None
        if not ok or reviewer is None:
            self.failures.take(where, now)
            return Refusal(401, "unknown or wrong token")
        with self._lock:
            self._cache[key] = _Cached(reviewer.name, reviewer.fingerprint, now + TOKEN_CACHE_S)
            while len(self._cache) > TOKEN_CACHE_MAX:
                self._cache.popitem(last=False)
        return self._identity(reviewer, method)

    @staticmethod
    def _identity(reviewer: Reviewer, method: Method) -> Identity:
        binding = f"basic:{reviewer.name}:{reviewer.fingerprint}" if method == "basic" else f"bearer:{reviewer.name}"
        return Identity(reviewer.name, method, binding, reviewer.tasks)

    def login(self, token: str, remote: str | None, now: float) -> tuple[Identity, str] | Refusal:
        """A token typed into the login form: the session's identity and its cookie value."""
        checked = self.check_token(token.strip(), remote, now, "session")
        if isinstance(checked, Refusal):
            return checked
        reviewer = self._reviewers()[checked.name]
        cookie = issue_session(self.signer, reviewer, now)
        session = read_session(self.signer, cookie, now)
        assert session is not None
        return Identity(reviewer.name, "session", f"session:{session.sid}", reviewer.tasks), cookie

    def csrf_for(self, identity: Identity, now: float) -> str:
        return issue_csrf(self.signer, identity.binding, now)

    def csrf_ok(self, identity: Identity, token: str | None, now: float) -> bool:
        return not identity.needs_csrf or check_csrf(self.signer, identity.binding, token, now)

    def why_not_configured(self) -> str:
        return ("this worker has no way to authenticate anyone: set STREAMS_REVIEWERS_FILE (reviewer tokens) or "
                "STREAMS_TRUSTED_PROXIES (an authenticating proxy), or STREAMS_WEB_AUTH=off for local "
                "development on loopback")


def safe_next(path: str | None, default: str = "/review/") -> str:
    """Where to go after logging in: a path on this server only (no `//host`, no scheme)."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")) or any(c in path for c in "\r\n"):
        return default
    return path
