"""The ingest API for real: uvicorn on a loopback port, SeaweedFS with auth, the Prefect test
server (its trigger and action services run), a deployment of the real flow with the
trigger of prefect.yaml on a process pool with no worker (its runs stay Scheduled).
"""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-" + secrets.token_hex(8)
LIMIT = 9 * 1024**2  # over one 8 MiB part, so an over-long stream has sent a part before it is refused


class Api:
    def __init__(self, url: str, server, thread: threading.Thread, engine):
        self.url, self.server, self.thread, self.engine = url, server, thread, engine
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(engine) -> Api:
    """uvicorn in a thread; the thread runs in this context (the Prefect test server's settings)."""
    import uvicorn

    from ingest_api.app import create_app

    app = create_app()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    return Api(f"http://127.0.0.1:{port}", server, thread, engine)


@pytest.fixture
def api_env(engine, monkeypatch):
    monkeypatch.setenv("TRANSCODE_API_TOKEN", TOKEN)
    monkeypatch.setenv("TRANSCODE_API_MAX_UPLOAD_BYTES", str(LIMIT))
    # these tests read whole answers; the quick answers of a busy server: test_units, load test
    monkeypatch.setenv("TRANSCODE_API_STATUS_WAIT_MS", "60000")
    monkeypatch.delenv("TRANSCODE_PUBLIC_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("TRANSCODE_ALLOW_PRIVATE_URLS", raising=False)
    return engine


@pytest.fixture
def api(api_env):
    from transcoder.settings import reload_settings

    reload_settings()
    running = start_api(api_env)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tiny_mp4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api-media") / "tiny.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "-movflags", "+faststart", str(out)],
                   check=True, timeout=120)
    return out


def read_event(event_id: str, timeout: float = 60):
    """The event with this id from the Prefect API (the persister writes in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(EventFilter(id=EventIDFilter(id=[uuid.UUID(event_id)])), limit=5)
            if page.events:
                return page.events[0]
            time.sleep(0.5)
    raise AssertionError(f"event {event_id} never reached the Prefect API")


def multipart_uploads(engine) -> list:
    return engine.s3.list_multipart_uploads(Bucket=engine.bucket).get("Uploads", [])


# ---- auth and start-up ---------------------------------------------------------------------

def test_token_required(api):
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}):
        for method, path in (("GET", "/metrics"), ("POST", "/videos"), ("POST", "/uploads"),
                             ("GET", f"/videos/{uuid.uuid4()}"), ("POST", "/notifications/s3")):
            resp = httpx.request(method, f"{api.url}{path}", headers=headers, content=b"x")
            assert resp.status_code == 401, (method, path, headers, resp.text)
            assert "bearer token" in resp.json()["error"]
            assert resp.headers["www-authenticate"] == "Bearer"
    assert api.http.get("/metrics").status_code == 200


def test_refuses_to_start_without_token(api_env, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from ingest_api.app import create_app
    from ingest_api.config import ConfigError

    monkeypatch.delenv("TRANSCODE_API_TOKEN")
    with pytest.raises(ConfigError, match="TRANSCODE_API_TOKEN"):
        create_app()
    env = {k: v for k, v in os.environ.items() if k != "TRANSCODE_API_TOKEN"}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "ingest_api", "--host", "127.0.0.1", "--port", str(_free_port())],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "TRANSCODE_API_TOKEN is not set" in proc.stderr, proc.stderr


# ---- uploads -------------------------------------------------------------------------------

def test_upload_lands_in_storage_and_emits_event(api, tiny_mp4):
    data = tiny_mp4.read_bytes()
    resp = api.http.post("/uploads", params={"filename": "My Clip.MP4", "renditions": "240p"}, content=data,
                         headers={"Content-Type": "video/mp4"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    rid = body["request_id"]
    key = f"uploads/{rid}/source.mp4"
    assert body["source"] == f"s3://{api.engine.bucket}/{key}" and body["size"] == len(data)
    assert body["status_url"] == f"{api.url}/videos/{rid}"
    obj = api.engine.s3.get_object(Bucket=api.engine.bucket, Key=key)
    assert obj["Body"].read() == data and obj["ContentType"] == "video/mp4"

    event = read_event(rid)
    assert event.event == "transcode.video.requested"
    assert event.resource.id == f"transcode.request.{rid}"
    assert event.payload == {"source": body["source"], "renditions": "240p", "codec": None, "mode": "deployments"}

    # larger than a part, streamed (chunked): a multipart upload of two parts, bytes intact
    big = secrets.token_bytes(8 * 1024**2 + 300_000)
    resp = api.http.post("/uploads", params={"filename": "../../etc/passwd"},
                         content=(big[i:i + 1_000_000] for i in range(0, len(big), 1_000_000)))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request_id"]
    key = f"uploads/{rid}/source.bin"  # a name never becomes a path: only a safe extension is kept
    got = api.engine.s3.get_object(Bucket=api.engine.bucket, Key=key)
    assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(big).digest()
    assert got["ETag"].strip('"').endswith("-2")  # two parts
    assert read_event(rid).payload == {"source": f"s3://{api.engine.bucket}/{key}", "renditions": None,
                                      "codec": None, "mode": "deployments"}


def test_upload_over_limit_by_content_length_refused_at_once(api):
    # announces a terabyte and sends nothing: the answer must come without reading a body
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(api.url).port, timeout=10)
    conn.putrequest("POST", "/uploads?filename=big.mp4")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert f"limit of {LIMIT} bytes" in json.loads(resp.read())["error"]
    conn.close()
    assert api.engine.keys("uploads/") == []


def test_upload_over_limit_streamed_leaves_nothing(api):
    engine = api.engine
    sent = []

    def body():
        for _ in range(12):  # 12 MiB, chunked, no Content-Length
            sent.append(1)
            yield secrets.token_bytes(1024**2)

    resp = api.http.post("/uploads", params={"filename": "big.mp4"}, content=body())
    assert resp.status_code == 413, resp.text
    assert f"limit of {LIMIT} bytes" in resp.json()["error"]
    assert len(sent) >= 10  # it read past the first 8 MiB part before refusing
    assert engine.keys() == []
    assert multipart_uploads(engine) == []


def test_upload_bad_requests(api):
    resp = api.http.post("/uploads", params={"filename": "a.mp4"}, content=b"")
    assert resp.status_code == 400 and "empty" in resp.json()["error"]
    resp = api.http.post("/uploads", params={"filename": "a.mp4", "renditions": "huge"}, content=b"x")
    assert resp.status_code == 400 and "not a rendition" in resp.json()["error"]
    resp = api.http.post("/uploads", params={"codec": "mpeg2"}, content=b"x")
    assert resp.status_code == 400 and "unknown codec" in resp.json()["error"]
    assert api.engine.keys() == []


# ---- URL submissions -----------------------------------------------------------------------

def test_url_submissions(api, tiny_mp4):
    engine = api.engine
    # an IP literal that is public: accepted without any connection (the flow fetches later)
    resp = api.http.post("/videos", json={"url": "http://93.184.216.34/x.mp4", "renditions": ["720p", "480p"],
                                          "codec": "h264"})
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request_id"]
    assert read_event(rid).payload == {"source": "http://93.184.216.34/x.mp4", "renditions": "720p,480p",
                                       "codec": "h264", "mode": "deployments"}

    for url in ("http://127.0.0.1/x", "http://169.254.169.254/latest", "http://10.0.0.1/", "http://[::1]/x",
                "http://0.0.0.0/x"):
        resp = api.http.post("/videos", json={"url": url})
        assert resp.status_code == 400, (url, resp.text)
        assert "refusing to fetch" in resp.json()["error"]
    for url, words in (("ftp://93.184.216.34/x.mp4", "only http and https"), ("/etc/passwd", "only http"),
                       ("file:///etc/passwd", "only http"), ("http:///x", "no host"),
                       ("s3://other-bucket/x.mp4", "only objects of this service's bucket"),
                       (f"s3://{engine.bucket}/", "not an object address"),
                       (f"s3://{engine.bucket}/in/../x.mp4", "'..' segment"),
                       (f"s3://{engine.bucket}/incoming/missing.mp4", "no such object"),
                       ("http://93.184.216.34/a b", "spaces")):
        resp = api.http.post("/videos", json={"url": url})
        assert resp.status_code == 400, (url, resp.text)
        assert words in resp.json()["error"], (url, resp.json())

    engine.s3.upload_file(str(tiny_mp4), engine.bucket, "incoming/clip.mp4")
    resp = api.http.post("/videos", json={"url": f"s3://{engine.bucket}/incoming/clip.mp4"})
    assert resp.status_code == 202, resp.text

    for payload, words in (({}, "url"), ({"url": 5}, "url"), ({"url": "http://93.184.216.34/x", "extra": 1}, "extra"),
                           ({"url": "http://93.184.216.34/x", "renditions": "99999p"}, "not a rendition")):
        resp = api.http.post("/videos", json=payload)
        assert resp.status_code == 400 and words in resp.json()["error"], (payload, resp.text)
    resp = api.http.post("/videos", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()


def test_private_urls_allowed_by_configuration(api_env, monkeypatch):
    from transcoder.settings import reload_settings

    monkeypatch.setenv("TRANSCODE_ALLOW_PRIVATE_URLS", "true")
    reload_settings()
    running = start_api(api_env)
    try:
        assert running.http.post("/videos", json={"url": "http://127.0.0.1:9/x.mp4"}).status_code == 202
        resp = running.http.post("/videos", json={"url": "http://169.254.169.254/latest"})
        assert resp.status_code == 400  # metadata and link-local: never
    finally:
        running.stop()


# ---- bucket notifications, the trigger, one run --------------------------------------------

def notification(bucket: str, key: str, etag: str, event: str = "s3:ObjectCreated:Put") -> dict:
    return {"EventName": event, "Key": f"{bucket}/{key}",
            "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": event,
                         "s3": {"bucket": {"name": bucket},
                                "object": {"key": quote(key, safe="/").replace("%20", "+"), "eTag": etag,
                                           "size": 1234, "sequencer": "17A2B3C4D5E6F708"}}}]}


def upload_and_notify(engine, media: Path, key: str) -> tuple[dict, str]:
    """`media` stored under `key`, as the server would announce it: (notification body,
    the request id the API gives it)."""
    from ingest_api.events import object_request_id

    engine.s3.upload_file(str(media), engine.bucket, key)
    etag = engine.s3.head_object(Bucket=engine.bucket, Key=key)["ETag"].strip('"')
    return notification(engine.bucket, key, etag), str(object_request_id(engine.bucket, key, etag))


@pytest.fixture
def triggered_deployment(api_env, monkeypatch):
    """transcode-video with prefect.yaml's trigger, on a process pool nobody works on."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.events import DeploymentEventTrigger

    from flows.transcode import transcode_video

    pool = "api-pool-" + secrets.token_hex(4)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    # `| string`: prefect 3.9.1 renders a lone "{{ event.id }}" as `event.id | tojson`, which
    # fails on a UUID (TypeError in user_templates._tojson; the action fails, no run starts)
    trigger = DeploymentEventTrigger(
        match={"prefect.resource.id": "transcode.request.*"}, expect={"transcode.video.requested"},
        parameters={"source": "{{ event.payload.source }}", "request_id": "{{ event.id | string }}",
                    "renditions": "{{ event.payload.renditions }}", "codec": "{{ event.payload.codec }}",
                    "mode": "{{ event.payload.mode }}"})
    name = "api-" + secrets.token_hex(4)
    deployment = transcode_video.to_deployment(name=name, triggers=[trigger], work_pool_name=pool)
    deployment_id = deployment.apply()
    monkeypatch.setenv("TRANSCODE_WORK_POOL", pool)
    yield deployment_id, pool
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)  # its automation goes with it


def runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def wait_runs(deployment_id, at_least: int, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = runs_of(deployment_id)
        if len(runs) >= at_least:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"{len(runs_of(deployment_id))} runs of the deployment, expected {at_least}")


def poll_status(api, request_id: str, until, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = api.http.get(f"/videos/{request_id}").json()
        if until(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_notification_twice_starts_one_run(api_env, triggered_deployment, tiny_mp4):
    deployment_id, pool = triggered_deployment
    engine = api_env
    api = start_api(engine)
    try:
        key = "incoming/My Clip.mp4"
        body, expected = upload_and_notify(engine, tiny_mp4, key)
        etag = body["Records"][0]["s3"]["object"]["eTag"]

        first = api.http.post("/notifications/s3", json=body)
        assert first.status_code == 202, first.text
        assert first.json()["requests"] == [{"request_id": expected, "source": f"s3://{engine.bucket}/{key}",
                                             "status_url": f"{api.url}/videos/{expected}", "duplicate": False}]
        second = api.http.post("/notifications/s3", json=body)
        assert second.status_code == 202 and second.json()["requests"][0]["duplicate"] is True

        runs = wait_runs(deployment_id, 1)
        assert runs[0].parameters == {"source": f"s3://{engine.bucket}/{key}", "request_id": expected,
                                      "renditions": None, "codec": None, "mode": "deployments"}
        assert runs[0].state.type.value == "SCHEDULED"  # nobody works on this pool

        # a restarted API (nothing in memory) finds the event in the server's store (once
        # the persister has written it; before that the server's own seen-cache holds)
        read_event(expected)
        api.stop()
        api = start_api(engine)
        again = api.http.post("/notifications/s3", json=body)
        assert again.json()["requests"][0]["duplicate"] is True
        # the run the trigger made is found through the automation's `action.executed`
        # event: "queued" until the server's event persister has written it
        status = poll_status(api, expected, until=lambda s: s["state"] != "queued")
        assert status["state"] == "Scheduled" and status["flow_run_id"] == str(runs[0].id)

        # the same object with other bytes (another ETag) is another request
        other = notification(engine.bucket, key, "0123456789abcdef0123456789abcdef")
        assert api.http.post("/notifications/s3", json=other).json()["requests"][0]["duplicate"] is False
        runs = wait_runs(deployment_id, 2)

        # the queue depth: two due runs on the pool's default queue, none running
        # (the text is made every 2 s in the background)
        deadline = time.monotonic() + 30
        while True:
            metrics = api.http.get("/metrics")
            if 'queue="default"} 2' in metrics.text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert metrics.headers["content-type"].startswith("text/plain")
        assert f'transcode_queue_depth{{pool="{pool}",queue="default"}} 2' in metrics.text, metrics.text
        assert f'transcode_running_runs{{pool="{pool}",queue="default"}} 0' in metrics.text

        time.sleep(5)  # no late duplicate
        assert len(runs_of(deployment_id)) == 2

        # ignored: other events, other buckets, other prefixes, names that are not media
        for body, reason in ((notification(engine.bucket, key, etag, "s3:ObjectRemoved:Delete"), "not an object creation"),
                             (notification("elsewhere", key, etag), "another bucket"),
                             (notification(engine.bucket, "encoded/x_720p.mp4", etag), "outside 'incoming/'"),
                             (notification(engine.bucket, "incoming/notes.txt", etag), "not a media file"),
                             # the key checks of POST /videos: such a run would fail late
                             (notification(engine.bucket, "incoming/../requests/x.mp4", etag), "'..' segment")):
            resp = api.http.post("/notifications/s3", json=body)
            assert resp.status_code == 202 and resp.json()["requests"] == [], resp.text
            assert reason in resp.json()["ignored"][0]["reason"]
        for content in (b"not json", b"{}", b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}'):
            resp = api.http.post("/notifications/s3", content=content)
            assert resp.status_code == 400 and "error" in resp.json(), resp.text
    finally:
        api.stop()


def backlog_now() -> int:
    """transcode-video runs not final on the server (other tests' runs may wait on pools nobody works)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)

    from ingest_api.backlog import FLOW, NOT_FINAL

    with get_client(sync_client=True) as client:
        return client.count_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])),
                                      flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                                          type=FlowRunFilterStateType(any_=NOT_FINAL))))


def metric(api, name: str) -> int:
    for line in api.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def wait_backlog(api, depth: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while metric(api, "transcode_backlog") != depth and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(api, "transcode_backlog") == depth, api.http.get("/metrics").text


def test_backlog_limit_answers_429(api_env, triggered_deployment, tiny_mp4, monkeypatch):
    """Past TRANSCODE_API_MAX_BACKLOG: 429 + Retry-After, nothing stored; the requests whose
    runs the trigger made are counted once (by the server), not twice."""
    deployment_id, _ = triggered_deployment
    engine = api_env
    base = backlog_now()
    monkeypatch.setenv("TRANSCODE_API_MAX_BACKLOG", str(base + 2))
    monkeypatch.setenv("TRANSCODE_API_RETRY_AFTER", "7")
    monkeypatch.setenv("TRANSCODE_API_RUN_MODE", "local")
    api = start_api(engine)
    try:
        data = tiny_mp4.read_bytes()
        accepted = [api.http.post("/uploads", params={"filename": f"clip{i}.mp4"}, content=data) for i in range(2)]
        assert [r.status_code for r in accepted] == [202, 202], [r.text for r in accepted]
        uploads_before = engine.keys("uploads/")
        refused = api.http.post("/uploads", params={"filename": "clip2.mp4"}, content=data)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "7"
        assert "too many videos waiting" in refused.json()["error"] and "send it again in 7 s" in refused.json()["error"]
        assert engine.keys("uploads/") == uploads_before  # nothing of the refused upload was kept
        url = api.http.post("/videos", json={"url": f"s3://{engine.bucket}/{uploads_before[0]}"})
        assert url.status_code == 429 and url.headers["retry-after"] == "7"

        runs = wait_runs(deployment_id, 2)
        assert {r.parameters["mode"] for r in runs} == {"local"}  # TRANSCODE_API_RUN_MODE reaches the run
        # once the server shows both runs, each is counted once
        deadline = time.monotonic() + 30
        while metric(api, "transcode_backlog") != base + 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert metric(api, "transcode_backlog") == base + 2
        assert metric(api, "transcode_backlog_limit") == base + 2

        # a run that ends frees its place
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(runs[0].id, Cancelled(), force=True)
        deadline = time.monotonic() + 30
        while metric(api, "transcode_backlog") != base + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        again = api.http.post("/uploads", params={"filename": "clip3.mp4"}, content=data)
        assert again.status_code == 202, again.text
    finally:
        api.stop()


def test_notification_refused_with_429_is_queued_when_sent_again(api_env, triggered_deployment, tiny_mp4,
                                                                 monkeypatch):
    """A notification refused while the backlog is full is not remembered as seen: the S3
    server's resend, once the backlog has drained, is queued (one run), not a duplicate."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    deployment_id, _ = triggered_deployment
    engine = api_env
    base = backlog_now()
    monkeypatch.setenv("TRANSCODE_API_MAX_BACKLOG", str(base + 1))
    api = start_api(engine)
    try:
        key = "incoming/late.mp4"
        body, expected = upload_and_notify(engine, tiny_mp4, key)
        wait_backlog(api, base)  # the API has read the server's count: one more request fills it
        filler = api.http.post("/videos", json={"url": f"s3://{engine.bucket}/{key}"})
        assert filler.status_code == 202, filler.text
        refused = api.http.post("/notifications/s3", json=body)
        assert refused.status_code == 429 and "retry-after" in refused.headers, refused.text

        runs = wait_runs(deployment_id, 1)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(runs[0].id, Cancelled(), force=True)
        wait_backlog(api, base)  # drained
        again = api.http.post("/notifications/s3", json=body)
        assert again.status_code == 202, again.text
        assert [(r["request_id"], r["duplicate"]) for r in again.json()["requests"]] == [(expected, False)]
        assert api.http.post("/notifications/s3", json=body).json()["requests"][0]["duplicate"] is True
        runs = wait_runs(deployment_id, 2)
        assert [r.parameters["request_id"] for r in runs].count(expected) == 1
    finally:
        api.stop()


def test_api_config_checks_its_numbers(api_env):
    from ingest_api.config import ApiConfig, ConfigError
    from transcoder.settings import get_settings

    env = {"TRANSCODE_API_TOKEN": "t"}
    config = ApiConfig.from_env(get_settings(), env)
    assert (config.max_backlog, config.retry_after, config.run_mode) == (1000, 30, "deployments")
    for name, value, message in (("TRANSCODE_API_MAX_BACKLOG", "-1", "between 0"),
                                 ("TRANSCODE_API_RETRY_AFTER", "0", "between 1 and 3600"),
                                 ("TRANSCODE_API_RUN_MODE", "fast", "one of deployments, local")):
        with pytest.raises(ConfigError, match=message):
            ApiConfig.from_env(get_settings(), {**env, name: value})


def test_server_skips_an_event_id_it_has_seen(triggered_deployment):
    """The experiment behind the guard: the same event posted twice straight to the Prefect
    server (no API in between) starts one run (triggers.py: `event_has_been_seen`)."""
    import anyio
    from prefect.client.orchestration import get_client

    from ingest_api.events import emit, requested_event

    deployment_id, _ = triggered_deployment
    rid = uuid.uuid4()

    async def post_twice():
        async with get_client() as client:
            await emit(client, requested_event(rid, "s3://b/incoming/x.mp4", "720p", "av1"))
            await emit(client, requested_event(rid, "s3://b/incoming/x.mp4", "720p", "av1"))

    anyio.run(post_twice)
    runs = wait_runs(deployment_id, 1)
    time.sleep(5)
    runs = runs_of(deployment_id)
    assert [r.parameters["request_id"] for r in runs] == [str(rid)]
    assert runs[0].parameters["renditions"] == "720p" and runs[0].parameters["codec"] == "av1"


# ---- status and downloads -------------------------------------------------------------------

def test_status_and_downloads(api_env, monkeypatch, tiny_mp4):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed

    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    engine = api_env
    s3_endpoint = engine.s3.meta.endpoint_url
    port = urlsplit(s3_endpoint).port
    public = f"http://localhost:{port}"  # the same server under the name a browser would use
    monkeypatch.setenv("TRANSCODE_PUBLIC_S3_ENDPOINT", public)
    reload_settings()
    api = start_api(engine)
    try:
        assert api.http.get(f"/videos/{uuid.uuid4()}").status_code == 404
        assert api.http.get("/videos/not-a-uuid").status_code == 404

        # queued: this API emitted it; no run, no pointer
        rid = api.http.post("/videos", json={"url": "http://93.184.216.34/x.mp4"}).json()["request_id"]
        status = api.http.get(f"/videos/{rid}").json()
        if status["flow_run_id"] is not None:  # another module's deployment with the trigger took it
            with get_client(sync_client=True) as client:
                assert client.read_flow_run(status["flow_run_id"]).parameters["request_id"] == rid
        else:
            assert status == {"request_id": rid, "state": "queued", "flow_run_id": None, "video_id": None,
                              "source": None}

        # a finished request: real objects at the flow's keys, a pointer, a Completed run
        data = tiny_mp4.read_bytes()
        video_id = hashlib.sha256(data).hexdigest()[:16]
        rung_key = f"encoded/{video_id}_240p.mp4"
        engine.s3.put_object(Bucket=engine.bucket, Key=rung_key, Body=data, ContentType="video/mp4")
        engine.s3.put_object(Bucket=engine.bucket, Key=f"{video_id}/player.html", Body=b"<html>player</html>",
                             ContentType="text/html")
        report = {"video_id": video_id, "hls_master": f"{video_id}/hls/master.m3u8",
                  "renditions": [{"name": "240p", "key": rung_key, "width": 320, "height": 240, "bitrate": 250_000,
                                  "size": len(data), "frames": 25}]}
        engine.s3.put_object(Bucket=engine.bucket, Key=f"{video_id}/report.json", Body=json.dumps(report).encode())
        done = uuid.uuid4()
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(transcode_video, name=f"transcode-{done}",
                                         parameters={"source": "s3://x/y.mp4", "request_id": str(done)})
            client.set_flow_run_state(run.id, Completed(), force=True)
            failed = client.create_flow_run(transcode_video, name="transcode-pending-name",
                                            parameters={"source": "s3://x/z.mp4"})
            client.set_flow_run_state(failed.id, Failed(message="bad input: not a video (no video stream)"),
                                      force=True)

        # found by its name before the pointer exists: no video yet, so no outputs
        status = api.http.get(f"/videos/{done}").json()
        assert status["state"] == "Completed" and status["flow_run_id"] == str(run.id)
        assert status["video_id"] is None and "outputs" not in status
        assert api.http.get(f"/videos/{done}/download/240p").status_code == 404

        engine.s3.put_object(Bucket=engine.bucket, Key=f"requests/{done}.json", Body=json.dumps(
            {"request_id": str(done), "video_id": video_id, "source": "s3://x/y.mp4",
             "flow_run_id": str(run.id)}).encode())
        status = api.http.get(f"/videos/{done}").json()
        assert status["state"] == "Completed" and status["video_id"] == video_id
        outputs = status["outputs"]
        assert outputs["hls_master"] == f"{video_id}/hls/master.m3u8"
        [rendition] = outputs["renditions"]
        assert {k: rendition[k] for k in ("name", "width", "height", "bitrate", "key")} == \
            {"name": "240p", "width": 320, "height": 240, "bitrate": 250_000, "key": rung_key}
        assert rendition["url"].startswith(f"{public}/{engine.bucket}/{rung_key}?")  # signed for the public host
        assert httpx.get(rendition["url"]).content == data
        assert httpx.get(outputs["player_url"]).text == "<html>player</html>"

        resp = api.http.get(f"/videos/{done}/download/240p")
        assert resp.status_code == 307 and resp.headers["location"].startswith(public)
        assert httpx.get(resp.headers["location"]).content == data
        assert api.http.get(f"/videos/{done}/download/1080p").status_code == 404

        # a failed run: its state and message (pointer to the run, no video)
        bad = uuid.uuid4()
        engine.s3.put_object(Bucket=engine.bucket, Key=f"requests/{bad}.json", Body=json.dumps(
            {"request_id": str(bad), "video_id": None, "source": "s3://x/z.mp4", "flow_run_id": str(failed.id)}).encode())
        status = api.http.get(f"/videos/{bad}").json()
        assert status["state"] == "Failed" and status["message"] == "bad input: not a video (no video stream)"
    finally:
        api.stop()


def test_metrics_without_pool(api, monkeypatch):
    resp = api.http.get("/metrics")
    assert resp.status_code == 200 and "# TYPE transcode_queue_depth gauge" in resp.text


def test_errors_are_json(api):
    resp = api.http.get("/nowhere")
    assert resp.status_code == 404 and resp.json() == {"error": "Not Found"}
    resp = api.http.put("/videos", json={})
    assert resp.status_code == 405 and "error" in resp.json()
