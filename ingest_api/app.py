"""Routes of the ingest API. Every route but `GET /healthz` wants `Authorization: Bearer <token>`.

    POST /uploads?filename=NAME[&renditions=720p,480p][&codec=h264]   raw body -> 202
    POST /videos               {"url": "https://... | s3://<bucket>/key", "renditions", "codec"} -> 202
    POST /notifications/s3     a MinIO / S3 bucket notification -> 202, one request per new object
    GET  /videos/{request_id}                        state, flow run, video id, outputs
    GET  /videos/{request_id}/download/{rendition}   307 to a presigned link
    GET  /metrics                                    queue depth per work queue (Prometheus)
    GET  /healthz

A request becomes a `transcode.video.requested` event (id = request id); the deployment
trigger in prefect.yaml starts `transcode-video` for it. Errors are JSON: {"error": "..."}.
Past `TRANSCODE_API_MAX_BACKLOG` videos queued or running (backlog.py), a request is
refused with 429 and `Retry-After`, before anything is stored: send it again later.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from urllib.parse import unquote_plus
from uuid import UUID

import httpx
from anyio import to_thread
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from transcoder.ingest import MEDIA_SUFFIXES, parse_s3_url, safe_ext  # pickup-incoming takes the same suffixes
from transcoder.errors import BadInputError, TranscodeError
from transcoder.keys import upload as upload_key
from transcoder.ladder import parse_rungs
from transcoder.settings import Settings, get_settings
from transcoder.storage import Storage
from transcoder.urlfetch import check_url

from . import events, metrics, status
from .backlog import Backlog
from .config import ApiConfig
from .uploads import EmptyBody, TooLarge, stream_to_storage

logger = logging.getLogger("ingest_api")

MAX_URL_CHARS = 4096
MAX_NOTIFICATION_BYTES = 1024**2


class ApiError(Exception):
    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.status_code, self.message, self.headers, self.extra = status_code, message, headers, extra


class VideoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    renditions: str | list[str] | None = None
    codec: str | None = None


class RecentRequests:
    """Request ids this process queued lately: their events may not be in the store yet."""

    def __init__(self, seconds: float = 24 * 3600, size: int = 100_000):
        self.seconds, self.size = seconds, size
        self._ids: OrderedDict[UUID, float] = OrderedDict()

    def add(self, request_id: UUID) -> None:
        self._ids[request_id] = time.monotonic()
        self._ids.move_to_end(request_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def discard(self, request_id: UUID) -> None:
        self._ids.pop(request_id, None)

    def __contains__(self, request_id: UUID) -> bool:
        seen = self._ids.get(request_id)
        return seen is not None and time.monotonic() - seen < self.seconds


def _error(status_code: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def _ladder(renditions: str | list[str] | None, codec: str | None, settings: Settings) -> tuple[str | None, str | None]:
    """Checked renditions (as one comma-separated string: a trigger template renders it
    as is) and codec; BadInputError as the flow would raise it, but before queueing."""
    if isinstance(renditions, list):
        renditions = ",".join(renditions)
    parse_rungs(renditions, codec or settings.codec)
    return renditions or None, codec or None


def create_app(config: ApiConfig | None = None, settings: Settings | None = None) -> FastAPI:
    """The app; refuses (ConfigError) without TRANSCODE_API_TOKEN."""
    settings = settings or get_settings()
    config = config or ApiConfig.from_env(settings)
    token = config.token.encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from prefect.client.orchestration import get_client

        storage = await to_thread.run_sync(Storage)  # loads the S3Bucket block (blocking)
        await to_thread.run_sync(lambda: storage.client)
        async with get_client() as client:
            app.state.storage, app.state.prefect = storage, client
            loops = [asyncio.create_task(app.state.backlog.keep_fresh(client)),
                     asyncio.create_task(app.state.metrics.keep_fresh(client, config.work_pool, app.state.backlog))]
            try:
                yield
            finally:
                for loop in loops:
                    loop.cancel()

    app = FastAPI(title="transcoder ingest API", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.recent = RecentRequests()
    app.state.backlog = Backlog(config.max_backlog, config.retry_after)
    app.state.metrics = metrics.Snapshot()
    app.state.answers = status.Answers(budget=config.status_wait_ms / 1000,
                                       done_seconds=min(600, config.link_seconds // 2))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status_code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        return _error(400, f"bad request: {problems}")

    @app.exception_handler(httpx.HTTPError)
    async def prefect_down(request: Request, exc: httpx.HTTPError):
        logger.warning("Prefect API error on %s %s: %s", request.method, request.url.path, exc)
        return _error(503, "the Prefect API is not answering as expected; try again (the API's log has more)")

    @app.exception_handler(BotoCoreError)
    @app.exception_handler(ClientError)
    @app.exception_handler(TranscodeError)
    async def storage_down(request: Request, exc: Exception):
        logger.warning("storage error on %s %s: %s", request.method, request.url.path, exc)
        return _error(503, "object storage is not answering as expected; try again (the API's log has more)")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (the API's log has the details)")

    def require_token(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <TRANSCODE_API_TOKEN>)",
                           headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    api = APIRouter(dependencies=[Depends(require_token)])

    def ctx(request: Request) -> tuple[Storage, object]:
        return request.app.state.storage, request.app.state.prefect

    def refuse_when_full(request: Request, unread_body: bool = False) -> None:
        backlog: Backlog = request.app.state.backlog
        if backlog.full():
            message, headers = backlog.refusal()
            if unread_body:
                headers["Connection"] = "close"
            raise ApiError(429, message, headers=headers)

    async def queue(request: Request, request_id: UUID, source: str, renditions: str | None,
                    codec: str | None, checked: bool = False) -> dict:
        """Emit the request's event; the answer's body (202). `checked`: the backlog was
        checked before the request stored anything (an upload is never refused after)."""
        recent: RecentRequests = request.app.state.recent
        backlog: Backlog = request.app.state.backlog
        if not checked:
            refuse_when_full(request)
        recent.add(request_id)
        backlog.add(request_id)
        try:
            await events.emit(request.app.state.prefect,
                              events.requested_event(request_id, source, renditions, codec, config.run_mode))
        except httpx.HTTPError as exc:
            recent.discard(request_id)
            backlog.discard(request_id)
            logger.warning("event for %s not posted: %s", request_id, exc)
            raise ApiError(503, "the request could not be queued (the Prefect API did not take the event); "
                                "try again", source=source) from None
        logger.info("queued %s: %s", request_id, source)
        return {"request_id": str(request_id), "source": source,
                "status_url": str(request.url_for("video_status", request_id=str(request_id)))}

    def _checked(renditions, codec):
        try:
            return _ladder(renditions, codec, settings)
        except BadInputError as exc:
            raise ApiError(400, str(exc)) from None

    @api.post("/uploads", status_code=202)
    async def upload(request: Request, filename: str | None = None, renditions: str | None = None,
                     codec: str | None = None):
        renditions, codec = _checked(renditions, codec)
        refuse_when_full(request, unread_body=True)  # before a byte is stored
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, f"bad Content-Length: {length!r}")
            if int(length) > config.max_upload_bytes:
                raise ApiError(413, f"the upload is larger than the limit of {config.max_upload_bytes} bytes",
                               headers={"Connection": "close"})
        storage, _ = ctx(request)
        request_id = uuid.uuid4()
        key = upload_key(str(request_id), safe_ext(filename or ""))
        content_type = request.headers.get("content-type", "")
        backlog: Backlog = request.app.state.backlog
        backlog.add(request_id)  # its place, held while the body streams: a burst cannot all pass the check
        try:
            size = await _store_upload(request, storage, key, content_type)
        except BaseException:
            backlog.discard(request_id)
            raise
        body = await queue(request, request_id, f"s3://{storage.name}/{key}", renditions, codec, checked=True)
        return {**body, "size": size}

    async def _store_upload(request: Request, storage: Storage, key: str, content_type: str) -> int:
        try:
            return await stream_to_storage(request.stream(), storage.client, storage.name, key,
                                           limit=config.max_upload_bytes, part_bytes=config.part_bytes,
                                           content_type=content_type if content_type.startswith("video/") else None)
        except TooLarge as exc:
            raise ApiError(413, str(exc), headers={"Connection": "close"}) from None
        except EmptyBody as exc:
            raise ApiError(400, str(exc)) from None
        except ClientDisconnect:
            raise ApiError(400, "the client went away before the upload ended; nothing was kept") from None
        except (BotoCoreError, ClientError) as exc:
            logger.warning("upload to %s failed: %s", key, exc)
            raise ApiError(503, "object storage failed during the upload; nothing was kept, try again") from None

    @api.post("/videos", status_code=202)
    async def submit(request: Request, video: VideoRequest):
        renditions, codec = _checked(video.renditions, video.codec)
        url = video.url.strip()
        storage, _ = ctx(request)
        if len(url) > MAX_URL_CHARS or any(ord(c) < 33 or ord(c) == 127 for c in url):
            raise ApiError(400, "the URL is too long or holds spaces or control characters")
        if url.startswith("s3://"):
            key = _own_object(url, storage)
            if await to_thread.run_sync(storage.head, key) is None:
                raise ApiError(400, f"no such object: {url}")
        else:
            try:
                await to_thread.run_sync(check_url, url, settings)  # resolves the host: blocking
            except BadInputError as exc:
                raise ApiError(400, str(exc)) from None
        return await queue(request, uuid.uuid4(), url, renditions, codec)

    @api.post("/notifications/s3", status_code=202)
    async def notification(request: Request):
        body = await _small_json(request)
        storage, client = ctx(request)
        recent: RecentRequests = request.app.state.recent
        queued, ignored = [], []
        records = body.get("Records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise ApiError(400, "not a bucket notification: no Records list")
        parsed = []
        for record in records:  # all checked before any is queued: a bad one queues none
            try:
                name = str(record["eventName"])
                bucket = str(record["s3"]["bucket"]["name"])
                obj = record["s3"]["object"]
                key = unquote_plus(str(obj["key"]))
            except (KeyError, TypeError):
                raise ApiError(400, "a record lacks eventName, s3.bucket.name or s3.object.key") from None
            parsed.append((name, bucket, key, obj if isinstance(obj, dict) else {}))
        for name, bucket, key, obj in parsed:
            reason = None
            if not name.removeprefix("s3:").startswith("ObjectCreated:"):
                reason = f"not an object creation ({name})"
            elif bucket != storage.name:
                reason = f"another bucket ({bucket}); this service reads {storage.name}"
            elif not key.startswith(config.notify_prefix):
                reason = f"outside {config.notify_prefix!r} (TRANSCODE_API_NOTIFY_PREFIX)"
            elif not key.lower().endswith(MEDIA_SUFFIXES):
                reason = "not a media file by its name"
            source = f"s3://{bucket}/{key}"
            if not reason:
                try:
                    _own_object(source, storage)  # the key checks of POST /videos ('.' or '..' segments)
                except ApiError as exc:
                    reason = exc.message
            if reason:
                ignored.append({"key": key, "reason": reason})
                continue
            version = str(obj.get("eTag") or obj.get("etag") or obj.get("sequencer") or obj.get("versionId") or "")
            request_id = events.object_request_id(bucket, key, version)
            duplicate = request_id in recent
            if not duplicate:
                recent.add(request_id)  # before the first await: a concurrent delivery sees it
                try:
                    duplicate = await events.already_requested(client, request_id)
                except BaseException:
                    recent.discard(request_id)
                    raise
            if duplicate:
                queued.append({"request_id": str(request_id), "source": source, "duplicate": True,
                               "status_url": str(request.url_for("video_status", request_id=str(request_id)))})
                continue
            try:
                answer = await queue(request, request_id, source, None, None)
            except BaseException:  # refused (429) or not queued (503): its resend must be queued, not a duplicate
                recent.discard(request_id)
                raise
            queued.append({**answer, "duplicate": False})
        return {"requests": queued, "ignored": ignored}

    @api.get("/videos/{request_id}", name="video_status")
    async def video_status(request: Request, request_id: str):
        rid = _request_id(request_id)
        storage, client = ctx(request)
        known = rid in request.app.state.recent
        found = await request.app.state.answers.get(
            rid, lambda: status.request_status(client, storage, rid, known, config.link_seconds),
            lambda: status.storage_view(storage, rid, known))
        if found is None:
            raise ApiError(404, f"no such request: {request_id}")
        return found

    @api.get("/videos/{request_id}/download/{rendition}")
    async def download(request: Request, request_id: str, rendition: str):
        rid = _request_id(request_id)
        storage, _ = ctx(request)
        pointer = await to_thread.run_sync(status.read_pointer, storage, rid)
        if not pointer or not pointer.get("video_id"):
            raise ApiError(404, f"request {request_id} has no video yet")
        link = await to_thread.run_sync(status.rendition_link, storage, pointer["video_id"], rendition,
                                        config.link_seconds)
        if link is None:
            raise ApiError(404, f"request {request_id} has no rendition {rendition!r} (yet)")
        return RedirectResponse(link, status_code=307)

    @api.get("/metrics", response_class=PlainTextResponse)
    async def queue_metrics(request: Request):
        text = request.app.state.metrics.text or await metrics.queue_metrics(
            request.app.state.prefect, config.work_pool, request.app.state.backlog)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(api)
    return app


def _own_object(url: str, storage: Storage) -> str:
    """The key of `s3://<this service's bucket>/<key>`, or a 400 that says what is wrong with it."""
    try:
        bucket, key = parse_s3_url(url)
    except BadInputError as exc:
        raise ApiError(400, str(exc)) from None
    if bucket != storage.name:
        raise ApiError(400, f"only objects of this service's bucket are accepted: s3://{storage.name}/<key>")
    return key


def _request_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ApiError(404, f"no such request: {value} (request ids are UUIDs)") from None


async def _small_json(request: Request):
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_NOTIFICATION_BYTES:
        raise ApiError(413, f"a notification is at most {MAX_NOTIFICATION_BYTES} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_NOTIFICATION_BYTES:
            raise ApiError(413, f"a notification is at most {MAX_NOTIFICATION_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
