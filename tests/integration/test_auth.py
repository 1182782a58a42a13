"""Authentication of the worker's web pages, over plain HTTP against a real worker on the real broker: who may
read review texts and answer them, and that the recorded reviewer is who logged in, never what the body says.
The browser's side (login form, a forged cross-site form) is in test_dashboard_browser.py."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import orjson

from streams import schemas
from streams.localdev.broker import EmbeddedBroker
from streams.localdev.processes import ChildProcess
from streams.ops.auth import add_reviewer
from tests.integration.harness import SyntheticModel, Worker, collect, produce, run, wait_ready
from tests.integration.test_ops import ops_tasks, requests, wait_for

PROTECTED_GETS = ("/review/", "/review/items.json", "/dashboard/", "/review/?task=sentiment", "/",
                  "/table/review-items/")
PROXY = "127.0.0.2"  # the trusted proxy: requests from it come from this loopback address


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()
        self.cookies = {c.split("=", 1)[0]: c for c in resp.headers.get_all("Set-Cookie") or []}

    def json(self) -> Any:
        return orjson.loads(self.body)

    def csrf(self) -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.body.decode())
        assert match, self.body.decode()[:500]
        return match.group(1)

    def cookie(self, name: str) -> str:
        return self.cookies[name].split(";", 1)[0].split("=", 1)[1]


def call(port: int, method: str, path: str, body: bytes | None = None, /, source: str = "127.0.0.1",
         **headers: str) -> Reply:
    """One request, no redirects followed, from a chosen loopback address (127.0.0.2 is the trusted proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        return Reply(conn.getresponse())
    finally:
        conn.close()


def form(**fields: str) -> bytes:
    return urllib.parse.urlencode(fields).encode()


FORM = {"Content_Type": "application/x-www-form-urlencoded"}
JSON = {"Content_Type": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{token.rsplit('.', 1)[0]}:{token}".encode()).decode()}


def urllib_status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_pages_need_a_login_and_answers_name_who_logged_in(broker: EmbeddedBroker, workdir: Path) -> None:
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, ops_tasks(workdir, model.base_url), workdir, extra_env={
            "STREAMS_TRUSTED_PROXIES": f"{PROXY}/32", "STREAMS_REVIEW_ANSWER_BURST": "3",
            "STREAMS_REVIEW_ANSWER_RATE": "1"})
        tokens = {name: add_reviewer(worker.reviewers_file, name) for name in ("ann", "dana", "carol")}
        tokens["bob"] = add_reviewer(worker.reviewers_file, "bob", frozenset({"topics"}))  # not sentiment
        t = {k: worker.topic(k) for k in ("requests", "results", "review", "feedback")}
        with worker.process() as proc:
            wait_ready(proc)
            port = worker.web_port
            base = f"http://127.0.0.1:{port}"
            run(produce(broker.bootstrap, t["requests"], requests("z", 0, 8)))
            items = wait_for(lambda: (d := worker.get_json("/review/items.json")) and len(d["items"]) == 8 and d,
                             60, "8 review items on the page")["items"]
            ids = [i["id"] for i in items]

            # Without credentials: 401 everywhere but the probes and /metrics (urllib, as any script would).
            no_auth = {p: urllib_status(base + p) for p in PROTECTED_GETS}
            no_auth["POST /review/answer (form)"] = urllib_status(base + "/review/answer", form(id=ids[4], label="x"))
            no_auth["POST /review/answer (json)"] = urllib_status(
                base + "/review/answer", orjson.dumps({"id": ids[4], "label": "fresh"}), {"Content-Type":
                                                                                        "application/json"})
            open_pages = {p: urllib_status(base + p) for p in ("/healthz", "/metrics", "/login")}
            browser_401 = call(port, "GET", "/review/", Accept="text/html")
            wrong = call(port, "GET", "/review/items.json", **bearer(tokens["ann"] + "x"))
            # A proxy's header counts only from the proxy's address.
            spoofed = call(port, "GET", "/review/items.json", X_Forwarded_User="ann")
            spoofed_post = call(port, "POST", "/review/answer", orjson.dumps({"id": ids[4], "label": "fresh"}),
                                X_Forwarded_User="ann", **JSON)
            proxied = call(port, "GET", "/review/items.json", source=PROXY, X_Forwarded_User="paul@example.org")

            # A bearer token answers; the `reviewer` in the body is ignored.
            ann = call(port, "POST", "/review/answer", orjson.dumps({"id": ids[0], "label": "rotten",
                                                                     "reviewer": "mallory"}),
                       **bearer(tokens["ann"]), **JSON)

            # A browser session: the login form (with its cookie nonce), then the review page's form.
            login_page = call(port, "GET", "/login")
            nonce = login_page.cookie("llmc_login")
            cross_site_login = call(port, "POST", "/login", form(token=tokens["dana"], csrf=login_page.csrf()), **FORM)
            bad_login = call(port, "POST", "/login", form(token=tokens["dana"] + "x", csrf=login_page.csrf()),
                             Cookie=f"llmc_login={nonce}", **FORM)
            login = call(port, "POST", "/login", form(token=tokens["dana"], csrf=login_page.csrf(),
                                                      next="/review/?order=confidence"),
                         Cookie=f"llmc_login={nonce}", **FORM)
            session = {"Cookie": f"llmc_session={login.cookie('llmc_session')}"}
            page = call(port, "GET", "/review/", **session)
            csrf = page.csrf()
            forged = {
                "session form, no CSRF field": call(port, "POST", "/review/answer", form(id=ids[4], label="fresh"),
                                                    **session, **FORM),
                "session form, wrong CSRF": call(port, "POST", "/review/answer",
                                                 form(id=ids[4], label="fresh", csrf=csrf[:-2] + "AA"),
                                                 **session, **FORM),
                "session form, cross-site": call(port, "POST", "/review/answer",
                                                 form(id=ids[4], label="fresh", csrf=csrf), Sec_Fetch_Site="cross-site",
                                                 Origin="https://evil.example", **session, **FORM),
                "Basic form, no CSRF": call(port, "POST", "/review/answer", form(id=ids[4], label="fresh"),
                                            **basic(tokens["ann"]), **FORM),
                "proxy JSON, no CSRF": call(port, "POST", "/review/answer",
                                            orjson.dumps({"id": ids[4], "label": "fresh"}), source=PROXY,
                                            X_Forwarded_User="paul@example.org", **JSON),
            }
            dana = call(port, "POST", "/review/answer", form(id=ids[1], label="fresh", csrf=csrf, reviewer="mallory"),
                        **session, **FORM)
            paul = call(port, "POST", "/review/answer", orjson.dumps({"id": ids[2], "label": "fresh"}), source=PROXY,
                        X_Forwarded_User="paul@example.org", X_CSRF_Token=proxied.json()["csrf"], **JSON)
            basic_csrf = call(port, "GET", "/review/items.json", **basic(tokens["carol"])).json()["csrf"]
            carol_basic = call(port, "POST", "/review/answer", form(id=ids[3], label="rotten", csrf=basic_csrf),
                               **basic(tokens["carol"]), **FORM)

            # Per-task permission, size limit, rate limit.
            bob_items = call(port, "GET", "/review/items.json", **bearer(tokens["bob"]))
            bob_task = call(port, "GET", "/review/items.json?task=sentiment", **bearer(tokens["bob"]))
            bob_answer = call(port, "POST", "/review/answer", orjson.dumps({"id": ids[4], "label": "fresh"}),
                              **bearer(tokens["bob"]), **JSON)
            oversized = call(port, "POST", "/review/answer",
                             orjson.dumps({"id": ids[4], "label": "fresh", "note": "n" * 20_000}),
                             **bearer(tokens["ann"]), **JSON)
            # carol has taken 1 of her 3; two misses (409) take the rest, the next is over the rate.
            burst = [call(port, "POST", "/review/answer", orjson.dumps({"id": f"nope-{i}", "label": "fresh"}),
                          **bearer(tokens["carol"]), **JSON) for i in range(3)]
            logout = call(port, "POST", "/logout", **session)

            feedback = run(collect(broker.bootstrap, [t["feedback"]], lambda g: len(g) >= 4, timeout_s=30, settle_s=3))
            human = run(collect(broker.bootstrap, [t["results"]],
                                lambda g: sum(r.json()["decision"] == "human" for r in g) >= 4, timeout_s=30))
            after = worker.get_json("/review/items.json")

    assert set(no_auth.values()) == {401}, no_auth
    assert open_pages == {"/healthz": 200, "/metrics": 200, "/login": 200}
    assert browser_401.status == 401 and b'action="/login"' in browser_401.body and b"doubtful" not in browser_401.body
    assert wrong.status == 401 and spoofed.status == 401 and spoofed_post.status == 401
    assert proxied.status == 200 and proxied.json()["reviewer"] == "paul@example.org"
    assert ann.status == 200 and ann.json()["reviewer"] == "ann"

    assert cross_site_login.status == 403 and "llmc_session" not in cross_site_login.cookies
    assert bad_login.status == 401 and "llmc_session" not in bad_login.cookies
    assert login.status == 303 and login.headers["Location"] == "/review/?order=confidence"
    attrs = login.cookies["llmc_session"].lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    assert page.status == 200 and '<b class="viewer">dana</b>' in page.body.decode()
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert {k: r.status for k, r in forged.items()} == dict.fromkeys(forged, 403)
    assert dana.status == 303 and "answered=" in dana.headers["Location"]
    assert paul.status == 200 and carol_basic.status == 303

    assert bob_items.status == 200 and bob_items.json()["items"] == [], "bob sees no sentiment texts"
    assert bob_task.status == 403 and bob_answer.status == 403
    assert oversized.status == 413
    assert [r.status for r in burst] == [409, 409, 429] and int(burst[-1].headers["Retry-After"]) > 0
    assert logout.status == 303 and "max-age=0" in logout.cookies["llmc_session"].lower()

    by_id = {r.json()["id"]: r.json() for r in feedback}
    for record in by_id.values():
        schemas.validate("feedback", record)
    assert {i: r["reviewer"] for i, r in by_id.items()} == {ids[0]: "ann", ids[1]: "dana", ids[2]: "paul@example.org",
                                                              ids[3]: "carol"}, "nothing for the forged answers"
    assert ids[4] in {i["id"] for i in after["items"]}, "the item every refused answer aimed at still waits"
    results = {r.json()["id"]: r.json() for r in human if r.json()["decision"] == "human"}
    assert {i: r["reviewer"] for i, r in results.items()} == {i: r["reviewer"] for i, r in by_id.items()}
    assert results[ids[0]]["label"] == "rotten"


def test_without_a_way_to_log_in_every_protected_page_answers_401(broker: EmbeddedBroker, workdir: Path) -> None:
    """Authentication on (the default) with no reviewers file and no proxy: 401 even on loopback."""
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, ops_tasks(workdir, model.base_url), workdir)
        env = {k: v for k, v in worker.env.items() if k not in ("STREAMS_REVIEWERS_FILE", "STREAMS_WEB_AUTH")}
        proc = ChildProcess("worker", [sys.executable, "-m", "streams", "worker", "-l", "info"],
                            workdir / "worker-no-logins.log", env)
        with proc:
            wait_ready(proc)
            base = f"http://127.0.0.1:{worker.web_port}"
            statuses = {p: urllib_status(base + p) for p in PROTECTED_GETS}
            statuses["POST"] = urllib_status(base + "/review/answer", form(id="x", label="fresh"))
            statuses["token"] = urllib_status(base + "/review/items.json", headers=worker.auth_headers)
            reply = call(worker.web_port, "GET", "/review/items.json")
            health = urllib_status(base + "/healthz")
        log = proc.log_path.read_text(errors="replace")
    assert set(statuses.values()) == {401}, statuses
    assert "STREAMS_REVIEWERS_FILE" in reply.json()["message"] and health == 200
    assert "web authentication is on but this worker has no way to authenticate anyone" in log


def test_a_worker_bound_beyond_loopback_with_auth_off_does_not_start(tmp_path: Path) -> None:
    """Refused while reading settings: before it connects to a broker or joins its group (none runs here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")} | {
        "STREAMS_WEB_AUTH": "off", "STREAMS_WEB_HOST": "0.0.0.0", "STREAMS_BROKER": "kafka://127.0.0.1:1",
        "STREAMS_DATA_DIR": str(tmp_path / "data")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streams", "worker", "-l", "info"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "STREAMS_WEB_AUTH=off with STREAMS_WEB_HOST='0.0.0.0'" in proc.stderr
    assert "set STREAMS_WEB_HOST=127.0.0.1" in proc.stderr and "STREAMS_REVIEWERS_FILE" in proc.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "data").exists(), "nothing started"
