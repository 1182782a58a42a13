"""streams/ops/auth.py: token hashes, the reviewers file, proxy trust, sessions, CSRF tokens, rate limits, and
the settings rule that a worker reachable beyond loopback never runs with authentication off."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.ops import auth, pages
from streams.ops.auth import (
    ANONYMOUS,
    Authenticator,
    Identity,
    RateLimiter,
    Refusal,
    RequestFacts,
    Reviewer,
    ReviewersError,
    ReviewersFile,
    Signer,
    TokenBucket,
)
from streams.ops.review_queue import ReviewQueue
from streams.settings import Settings
from streams.tasks import parse_tasks

CHEAP = 2**8  # scrypt N for tests that make many hashes; verification reads N from the hash
NOW = 1_800_000_000.0
KEY = b"k" * 32


def cheap_hash(token: str) -> str:
    return auth.hash_token(token, n=CHEAP)


# --------------------------------------------------------------------------- tokens and hashes


def test_a_token_names_its_reviewer_and_is_random() -> None:
    a, b = auth.new_token("ann"), auth.new_token("ann")
    assert a != b and a.startswith("ann.") and len(a.split(".", 1)[1]) >= 43  # 32 random bytes
    assert auth.token_name(a) == "ann"
    assert auth.token_name(auth.new_token("ann.lee@example.org")) == "ann.lee@example.org"
    assert auth.token_name("no-dot") is None and auth.token_name("ann.") is None and auth.token_name(".x") is None
    with pytest.raises(ValueError):
        auth.new_token("bad:name")


def test_the_hash_is_salted_scrypt_and_verifies_only_its_token() -> None:
    token = auth.new_token("ann")
    encoded = auth.hash_token(token)  # the real cost
    scheme, n, r, p, salt, _digest = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P)
    assert len(base64.urlsafe_b64decode(salt + "==")) == 16 and token not in encoded
    assert auth.verify_token(token, encoded)
    assert not auth.verify_token(token + "x", encoded)
    assert not auth.verify_token(auth.new_token("ann"), encoded)
    assert auth.hash_token(token) != encoded, "a fresh salt each time"


@pytest.mark.parametrize("encoded", ["", "plain", "sha256$abc", "scrypt$3$8$1$c2FsdHNhbHQ$ZGlnZXN0ZGlnZXN0ZGlnZXN0",
                                     "scrypt$16384$8$1$!!$!!", "scrypt$4194304$8$1$c2FsdHNhbHQ$ZGlnZXN0ZGlnZXN0ZGln"])
def test_an_unreadable_or_unbounded_hash_never_verifies(encoded: str) -> None:
    assert not auth.verify_token("ann.x", encoded)


# --------------------------------------------------------------------------- the reviewers file


def test_reviewers_file_lines_comments_tasks_and_proxy_only_entries() -> None:
    h = cheap_hash("ann.secret")
    text = f"# comment\n\nann:{h}\nbob:{h}:sentiment, topics\ncarol@example.org:-:sentiment\ndan:{h}:*\n"
    got = auth.parse_reviewers(text)
    assert got["ann"] == Reviewer("ann", h, None)
    assert got["bob"].tasks == frozenset({"sentiment", "topics"})
    assert got["carol@example.org"] == Reviewer("carol@example.org", None, frozenset({"sentiment"}))
    assert got["dan"].tasks is None
    assert auth.parse_reviewers("".join(r.line() + "\n" for r in got.values())) == got


def test_a_malformed_reviewers_file_names_lines_and_never_echoes_a_hash() -> None:
    h = cheap_hash("ann.secret")
    text = f"ann:{h}\nann:{h}\nbad name:{h}\nbob:not-a-hash-SECRETISH\ncarol\ndan:{h}:bad task!\n"
    with pytest.raises(ReviewersError) as info:
        auth.parse_reviewers(text)
    problems = info.value.problems
    assert [p.split(":")[0].split(" (")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert "listed twice" in problems[0]
    assert all(h not in p and "SECRETISH" not in p for p in problems)


def test_add_rotate_and_write_keep_only_hashes_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "reviewers"
    token = auth.add_reviewer(path, "ann", n=CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text() and token.split(".", 1)[1] not in path.read_text()
    ann = auth.read_reviewers(path)["ann"]
    assert ann.hash is not None and auth.verify_token(token, ann.hash)
    with pytest.raises(ValueError, match="already"):
        auth.add_reviewer(path, "ann", n=CHEAP)
    rotated = auth.add_reviewer(path, "ann", frozenset({"sentiment"}), replace=True, n=CHEAP)
    new = auth.read_reviewers(path)["ann"]
    assert new.hash is not None and not auth.verify_token(token, new.hash) and auth.verify_token(rotated, new.hash)
    assert new.tasks == frozenset({"sentiment"}) and new.fingerprint != ann.fingerprint


def test_the_reviewers_file_is_reread_when_it_changes_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "reviewers"
    auth.add_reviewer(path, "ann", n=CHEAP)
    clock = [0.0]
    live = ReviewersFile(path, clock=lambda: clock[0])
    assert set(live.current()) == {"ann"}
    auth.add_reviewer(path, "bob", n=CHEAP)
    assert set(live.current()) == {"ann"}, "checked at most once a second"
    clock[0] += auth.RELOAD_CHECK_S
    assert set(live.current()) == {"ann", "bob"}
    path.write_text(path.read_text() + "garbage line\n")
    clock[0] += auth.RELOAD_CHECK_S
    assert live.current() == {} and live.error is not None and "line" in live.error
    path.unlink()
    clock[0] += auth.RELOAD_CHECK_S
    assert live.current() == {}


# --------------------------------------------------------------------------- proxies and hosts


def test_proxy_trust_is_by_tcp_peer_address() -> None:
    nets = auth.parse_networks("10.0.0.0/8, 192.168.1.7 fd00::/8")
    assert auth.is_trusted("10.1.2.3", nets) and auth.is_trusted("192.168.1.7", nets)
    assert auth.is_trusted("fd00::1", nets) and auth.is_trusted("::ffff:10.9.9.9", nets)
    assert not auth.is_trusted("192.168.1.8", nets) and not auth.is_trusted("127.0.0.1", nets)
    assert not auth.is_trusted(None, nets) and not auth.is_trusted("not-an-ip", nets)
    assert not auth.is_trusted("10.1.2.3", ())
    with pytest.raises(ValueError, match="bad"):
        auth.parse_networks("10.0.0.0/8,bad")
    assert auth.parse_networks("") == ()


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("", False), ("10.0.0.1", False),
                                                ("worker.example.org", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert auth.is_loopback_host(host) is loopback


# --------------------------------------------------------------------------- sessions and CSRF


def test_a_session_cookie_is_signed_and_expires() -> None:
    signer = Signer(KEY)
    ann = Reviewer("ann", cheap_hash("ann.x"))
    cookie = auth.issue_session(signer, ann, NOW, ttl_s=60)
    session = auth.read_session(signer, cookie, NOW + 59)
    assert session is not None and session.name == "ann" and session.fingerprint == ann.fingerprint
    assert auth.read_session(signer, cookie, NOW + 61) is None
    assert auth.read_session(Signer(b"other" * 8), cookie, NOW) is None
    payload, mac = cookie.split(".")
    forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "==").replace(b"ann", b"bob"))
    assert auth.read_session(signer, forged.decode().rstrip("=") + "." + mac, NOW) is None
    assert auth.read_session(signer, None, NOW) is None and auth.read_session(signer, "x.y.z", NOW) is None
    # A value signed for another purpose is no session.
    assert auth.read_session(signer, f"{payload}.{signer.mac('csrf', payload)}", NOW) is None


def test_csrf_tokens_are_bound_to_the_session_and_expire() -> None:
    signer = Signer(KEY)
    token = auth.issue_csrf(signer, "session:abc", NOW)
    assert auth.check_csrf(signer, "session:abc", token, NOW + 10)
    assert not auth.check_csrf(signer, "session:other", token, NOW + 10)
    assert not auth.check_csrf(Signer(b"x" * 32), "session:abc", token, NOW)
    assert not auth.check_csrf(signer, "session:abc", token, NOW + auth.CSRF_TTL_S + 1)
    assert not auth.check_csrf(signer, "session:abc", auth.issue_csrf(signer, "session:abc", NOW + 3600), NOW)
    issued, mac = token.split(".")
    assert not auth.check_csrf(signer, "session:abc", f"{int(issued, 16) + 1:x}.{mac}", NOW)
    for bad in (None, "", "nodot", "zz.zz", token + "x"):
        assert not auth.check_csrf(signer, "session:abc", bad, NOW)


def test_the_login_form_token_is_bound_to_its_cookie_nonce() -> None:
    signer = Signer(KEY)
    nonce = auth.login_nonce()
    assert signer.check(auth.login_csrf(signer, nonce), "login", nonce)
    assert not signer.check(auth.login_csrf(signer, nonce), "login", auth.login_nonce())


def test_only_bearer_requests_and_auth_off_skip_csrf() -> None:
    assert not Identity("a", "bearer", "b").needs_csrf and not ANONYMOUS.needs_csrf
    for method in ("basic", "session", "proxy"):
        assert Identity("a", method, "b").needs_csrf


@pytest.mark.parametrize(("path", "safe"), [("/review/?task=x", "/review/?task=x"), (None, "/review/"),
                                            ("//evil.example/", "/review/"), ("https://evil.example/", "/review/"),
                                            ("/\\evil.example", "/review/"), ("/ok\r\nSet-Cookie: x", "/review/")])
def test_login_redirects_stay_on_this_server(path: str | None, safe: str) -> None:
    assert auth.safe_next(path) == safe


# --------------------------------------------------------------------------- rate limits


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=3, updated=NOW)
    assert [bucket.take(NOW) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(NOW) == pytest.approx(2.0)
    assert bucket.take(NOW + 1.0) == pytest.approx(1.0)
    assert bucket.take(NOW + 2.0) == 0.0 and bucket.take(NOW + 2.0) > 0
    assert bucket.take(NOW + 1000) == 0.0 and bucket.tokens == pytest.approx(2.0), "refills to the burst only"


def test_rate_limiter_keeps_one_bucket_per_key_and_bounds_the_keys() -> None:
    limiter = RateLimiter(rate_per_s=1 / 60, burst=2, max_keys=3)
    assert limiter.take("ann", NOW) == 0 and limiter.take("ann", NOW) == 0 and limiter.take("ann", NOW) > 0
    assert limiter.take("bob", NOW) == 0, "another reviewer's bucket is full"
    for name in ("c", "d", "e"):
        limiter.take(name, NOW)
    assert len(limiter._buckets) <= 3


# --------------------------------------------------------------------------- the authenticator


Setup = tuple[Authenticator, dict[str, str], Path, list[float]]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    path = tmp_path / "reviewers"
    tokens = {"ann": auth.add_reviewer(path, "ann", n=CHEAP),
              "bob": auth.add_reviewer(path, "bob", frozenset({"topics"}), n=CHEAP)}
    auth.write_reviewers(path, auth.read_reviewers(path) | {"pat@example.org": Reviewer("pat@example.org", None,
                                                                                           frozenset({"topics"}))})
    clock = [0.0]
    authn = Authenticator(enabled=True, signer=Signer(KEY), reviewers=ReviewersFile(path, clock=lambda: clock[0]),
                          proxies=auth.parse_networks("10.0.0.0/8"), proxy_header="X-Forwarded-User")
    return authn, tokens, path, clock


def facts(headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None,
          remote: str = "127.0.0.1") -> RequestFacts:
    return RequestFacts.of(headers or {}, cookies or {}, remote)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_no_credentials_is_no_identity_and_auth_off_is_anonymous(setup: Setup) -> None:
    authn = setup[0]
    assert authn.identify(facts(), NOW) is None
    off = Authenticator(enabled=False, signer=Signer(KEY))
    assert off.identify(facts(), NOW) == ANONYMOUS and off.configured
    assert not Authenticator(enabled=True, signer=Signer(KEY)).configured


def test_bearer_and_basic_tokens(setup: Setup) -> None:
    authn, tokens = setup[0], setup[1]
    who = authn.identify(facts({"Authorization": f"Bearer {tokens['ann']}"}), NOW)
    assert isinstance(who, Identity) and (who.name, who.method, who.tasks) == ("ann", "bearer", None)
    bob = authn.identify(facts({"authorization": basic("bob", tokens["bob"])}), NOW)
    assert isinstance(bob, Identity) and bob.method == "basic" and bob.tasks == frozenset({"topics"})
    assert bob.may_answer("topics") and not bob.may_answer("sentiment")
    assert isinstance(authn.identify(facts({"authorization": basic("", tokens["bob"])}), NOW), Identity)
    for header in (f"Bearer {tokens['ann']}x", f"Bearer {tokens['bob'].replace('bob.', 'ann.')}",
                   basic("ann", tokens["bob"]), "Bearer ", "Digest abc", "Basic !!!", "Bearer nobody.abc"):
        refused = authn.identify(facts({"Authorization": header}), NOW)
        assert refused == Refusal(401, "unknown or wrong token"), header


def test_a_verified_token_is_cached_until_it_is_rotated(setup: Setup,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    authn, tokens, path, clock = setup
    calls: list[str] = []
    real = auth.verify_token

    def counting(token: str, encoded: str) -> bool:
        calls.append(token)
        return real(token, encoded)

    monkeypatch.setattr(auth, "verify_token", counting)
    header = {"Authorization": f"Bearer {tokens['ann']}"}
    for _ in range(3):
        assert isinstance(authn.identify(facts(header), NOW), Identity)
    assert len(calls) == 1, "scrypt once, then the cache"
    auth.add_reviewer(path, "ann", replace=True, n=CHEAP)
    clock[0] += auth.RELOAD_CHECK_S
    assert isinstance(authn.identify(facts(header), NOW), Refusal), "a rotated token stops working at once"


def test_failed_token_checks_are_rate_limited_per_address(setup: Setup) -> None:
    authn, tokens = setup[0], setup[1]
    bad = facts({"Authorization": "Bearer ann.wrong"}, remote="192.0.2.1")
    results = [authn.identify(bad, NOW) for _ in range(auth.FAILURE_BURST + 1)]
    assert all(isinstance(r, Refusal) and r.status == 401 for r in results[:-1])
    last = results[-1]
    assert isinstance(last, Refusal) and last.status == 429 and last.retry_after_s > 0
    # Even the right token waits at that address; another address is not affected.
    good = {"Authorization": f"Bearer {tokens['ann']}"}
    assert isinstance(authn.identify(facts(good, remote="192.0.2.1"), NOW), Refusal)
    assert isinstance(authn.identify(facts(good, remote="192.0.2.2"), NOW), Identity)


def test_session_cookies_end_when_the_token_is_rotated_or_removed(setup: Setup) -> None:
    authn, tokens, path, clock = setup
    assert isinstance(authn.login("ann.wrong", "127.0.0.1", NOW), Refusal)
    result = authn.login(tokens["ann"], "127.0.0.1", NOW)
    assert not isinstance(result, Refusal)
    who, cookie = result
    assert who.method == "session" and who.needs_csrf
    again = authn.identify(facts(cookies={auth.SESSION_COOKIE: cookie}), NOW + 60)
    assert again == who, "the same session: the same CSRF binding"
    assert authn.identify(facts(cookies={auth.SESSION_COOKIE: cookie}), NOW + auth.SESSION_TTL_S + 1) is None
    assert authn.identify(facts(cookies={auth.SESSION_COOKIE: cookie + "x"}), NOW) is None
    auth.add_reviewer(path, "ann", replace=True, n=CHEAP)
    clock[0] += auth.RELOAD_CHECK_S
    assert authn.identify(facts(cookies={auth.SESSION_COOKIE: cookie}), NOW + 60) is None
    result = authn.login(tokens["bob"], "127.0.0.1", NOW)
    assert not isinstance(result, Refusal)
    reviewers = auth.read_reviewers(path)
    del reviewers["bob"]
    auth.write_reviewers(path, reviewers)
    clock[0] += auth.RELOAD_CHECK_S
    assert authn.identify(facts(cookies={auth.SESSION_COOKIE: result[1]}), NOW + 60) is None


def test_a_proxy_header_counts_only_from_a_trusted_address(setup: Setup) -> None:
    authn = setup[0]
    header = {"X-Forwarded-User": "zoe@example.org"}
    assert authn.identify(facts(header, remote="127.0.0.1"), NOW) is None, "ignored from an untrusted address"
    assert authn.identify(facts(header, remote="192.0.2.9"), NOW) is None
    who = authn.identify(facts(header, remote="10.3.4.5"), NOW)
    assert isinstance(who, Identity) and (who.name, who.method, who.tasks) == ("zoe@example.org", "proxy", None)
    listed = authn.identify(facts({"x-forwarded-user": "pat@example.org"}, remote="10.3.4.5"), NOW)
    assert isinstance(listed, Identity) and listed.tasks == frozenset({"topics"}), "the reviewers file's tasks"
    assert authn.identify(facts({"X-Forwarded-User": "bad\x01name"}, remote="10.3.4.5"), NOW) is None
    # An untrusted header does not mask the request's own token.
    token_and_header = {"X-Forwarded-User": "zoe", "Authorization": f"Bearer {setup[1]['ann']}"}
    who = authn.identify(facts(token_and_header, remote="127.0.0.1"), NOW)
    assert isinstance(who, Identity) and who.name == "ann"


def test_csrf_checks_by_identity(setup: Setup) -> None:
    authn, tokens = setup[0], setup[1]
    result = authn.login(tokens["ann"], "127.0.0.1", NOW)
    assert not isinstance(result, Refusal)
    session = result[0]
    other = authn.login(tokens["ann"], "127.0.0.1", NOW)
    assert not isinstance(other, Refusal)
    token = authn.csrf_for(session, NOW)
    assert authn.csrf_ok(session, token, NOW + 5)
    assert not authn.csrf_ok(session, None, NOW) and not authn.csrf_ok(session, "", NOW)
    assert not authn.csrf_ok(other[0], token, NOW), "another session's token does not fit"
    bearer = Identity("ann", "bearer", "bearer:ann")
    assert authn.csrf_ok(bearer, None, NOW)


# --------------------------------------------------------------------------- settings: secure by default


def test_auth_off_beyond_loopback_is_a_config_error() -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3", "worker.internal"):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"STREAMS_WEB_AUTH": "off", "STREAMS_WEB_HOST": host})
        [problem] = info.value.problems
        assert problem.startswith(f"STREAMS_WEB_AUTH=off with STREAMS_WEB_HOST={host!r}")
        assert "STREAMS_WEB_HOST=127.0.0.1" in problem and "STREAMS_REVIEWERS_FILE" in problem
    for host in ("127.0.0.1", "::1", "localhost"):
        assert not Settings.from_env({"STREAMS_WEB_AUTH": "OFF", "STREAMS_WEB_HOST": host}).web_auth_enabled
    on = Settings.from_env({"STREAMS_WEB_HOST": "0.0.0.0"})
    assert on.web_auth_enabled and on.web_auth == "ON", "on by default, so a wide bind without logins still starts"


def test_worker_refuses_to_build_with_auth_off_beyond_loopback(tmp_path: Path) -> None:
    from streams.worker import build_worker

    with pytest.raises(ConfigError, match="STREAMS_WEB_AUTH=off"):
        build_worker({"STREAMS_WEB_AUTH": "off", "STREAMS_WEB_HOST": "0.0.0.0",
                      "STREAMS_DATA_DIR": str(tmp_path / "data")})


def test_auth_settings_are_validated_at_start(tmp_path: Path) -> None:
    good = tmp_path / "reviewers"
    auth.add_reviewer(good, "ann", frozenset({"sentiment"}), n=CHEAP)
    key = tmp_path / "key"
    key.write_text("s" * 40 + "\n")
    s = Settings.from_env({"STREAMS_REVIEWERS_FILE": str(good), "STREAMS_TRUSTED_PROXIES": "10.0.0.0/8,::1",
                           "STREAMS_PROXY_USER_HEADER": "X-Auth-Request-User", "STREAMS_WEB_SECRET_FILE": str(key),
                           "STREAMS_REVIEW_ANSWER_RATE": "10", "STREAMS_REVIEW_ANSWER_BURST": "2"})
    assert s.reviewers_file == good and len(s.trusted_proxies or ()) == 2 and s.web_secret == "s" * 40
    assert "s" * 40 not in repr(s)
    bad = tmp_path / "bad"
    bad.write_text(f"ann:{cheap_hash('ann.SECRET')}\nbob\n")
    short = tmp_path / "short"
    short.write_text("tooshort")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"STREAMS_REVIEWERS_FILE": str(bad), "STREAMS_TRUSTED_PROXIES": "10.0.0.0/33",
                           "STREAMS_PROXY_USER_HEADER": "X User", "STREAMS_WEB_SECRET_FILE": str(short)})
    text = "\n".join(info.value.problems)
    assert f"STREAMS_REVIEWERS_FILE={str(bad)!r}: line 2" in text
    assert "STREAMS_TRUSTED_PROXIES" in text and "STREAMS_PROXY_USER_HEADER" in text
    assert "STREAMS_WEB_SECRET_FILE" in text and "tooshort" not in text
    with pytest.raises(ConfigError, match="STREAMS_REVIEWERS_FILE is set but STREAMS_WEB_AUTH=OFF"):
        Settings.from_env({"STREAMS_WEB_AUTH": "off", "STREAMS_REVIEWERS_FILE": str(good)})
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env({"STREAMS_REVIEWERS_FILE": str(tmp_path / "missing")})


# --------------------------------------------------------------------------- the command and the pages


def test_reviewers_command_prints_a_token_once_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "reviewers"
    cmd = [sys.executable, "-m", "streams", "review", "reviewers", "--file", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "STREAMS_REVIEWERS_FILE"}
    added = subprocess.run([*cmd, "add", "ann", "--tasks", "sentiment"], capture_output=True, text=True, env=env,
                           timeout=60)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert auth.token_name(token) == "ann" and "shown once" in added.stderr
    ann = auth.read_reviewers(path)["ann"]
    assert ann.hash is not None and auth.verify_token(token, ann.hash) and token not in path.read_text()
    again = subprocess.run([*cmd, "add", "ann"], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1 and "--rotate" in again.stderr
    listed = subprocess.run([*cmd, "list"], capture_output=True, text=True, env=env, timeout=60)
    assert "ann" in listed.stdout and "sentiment" in listed.stdout and "scrypt" not in listed.stdout
    removed = subprocess.run([*cmd, "remove", "ann"], capture_output=True, text=True, env=env, timeout=60)
    assert removed.returncode == 0 and auth.read_reviewers(path) == {}


TASKS = parse_tasks("""
[[task]]
name = "sentiment"
labels = ["fresh", "rotten"]
[task.model]
base_url = "http://127.0.0.1:1/v1"
name = "m"
[[task]]
name = "topics"
labels = ["a", "b"]
[task.model]
base_url = "http://127.0.0.1:1/v1"
name = "m"
""", "test")


def test_the_review_page_carries_the_csrf_token_and_shows_only_allowed_tasks() -> None:
    q = ReviewQueue({"sentiment": ("fresh", "rotten"), "topics": ("a", "b")})
    q.add_item({"id": "s1", "task": "sentiment", "text": "a film"}, time.time())
    q.add_item({"id": "t1", "task": "topics", "text": "a topic"}, time.time())
    viewer = pages.Viewer("bob", csrf="1.abc", can_log_out=True)
    html = pages.review_page(TASKS, q, viewer=viewer, allowed=frozenset({"topics"}))
    assert 'data-id="t1"' in html and 'data-id="s1"' not in html and "a film" not in html
    assert '<input type="hidden" name="csrf" value="1.abc">' in html
    assert 'name="reviewer"' not in html, "the reviewer is who logged in, never a form field"
    assert "signed in as <b class=\"viewer\">bob</b>" in html and 'action="/logout"' in html
    assert "1 pending" in html
    everything = pages.review_page(TASKS, q)
    assert 'data-id="t1"' in everything and 'data-id="s1"' in everything


def test_the_login_page_escapes_and_posts_to_login() -> None:
    html = pages.login_page("c<sr>f", "/review/?a=1&b=<x>", "bad <token>")
    assert 'action="/login"' in html and 'type="password"' in html
    assert "c&lt;sr&gt;f" in html and "/review/?a=1&amp;b=&lt;x&gt;" in html and "bad &lt;token&gt;" in html
    assert 'name="token"' not in pages.login_page("c", can_log_in=False)
