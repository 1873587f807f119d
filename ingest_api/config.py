"""The API's own knobs, from the environment (the transcoder's come from `Settings`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from transcoder.settings import Settings

PART_BYTES = 8 * 1024**2  # S3 multipart part size (5 MiB minimum, 10,000 parts maximum)
MAX_PARTS = 10_000


class ConfigError(RuntimeError):
    """The API cannot start with this environment."""


@dataclass(frozen=True)
class ApiConfig:
    token: str
    max_upload_bytes: int
    work_pool: str = "transcode"
    notify_prefix: str = "incoming/"  # bucket notifications outside it are ignored (outputs!)
    link_seconds: int = 3600  # lifetime of presigned download links
    max_backlog: int = 1000  # videos queued or running past which requests get 429 (0: no limit)
    retry_after: int = 30  # seconds, the 429's Retry-After
    status_wait_ms: int = 100  # a status poll waits this long for Prefect, then gets the last known answer
    run_mode: str = "deployments"  # the runs' `mode`: "local" runs a whole video on one worker

    @property
    def part_bytes(self) -> int:
        """8 MiB, or larger when the size limit needs more than 10,000 parts."""
        return max(PART_BYTES, -(-self.max_upload_bytes // MAX_PARTS))

    @classmethod
    def from_env(cls, settings: Settings, env: dict[str, str] | None = None) -> ApiConfig:
        env = os.environ if env is None else env
        token = env.get("TRANSCODE_API_TOKEN", "").strip()
        if not token:
            raise ConfigError("TRANSCODE_API_TOKEN is not set: the API refuses to start without a bearer token "
                              "(e.g. `openssl rand -hex 32`)")
        return cls(
            token=token,
            max_upload_bytes=_int(env, "TRANSCODE_API_MAX_UPLOAD_BYTES", settings.max_input_bytes, minimum=1),
            work_pool=env.get("TRANSCODE_WORK_POOL") or "transcode",
            notify_prefix=env.get("TRANSCODE_API_NOTIFY_PREFIX", "incoming/"),
            link_seconds=_int(env, "TRANSCODE_API_LINK_SECONDS", 3600, minimum=60, maximum=7 * 24 * 3600),
            max_backlog=_int(env, "TRANSCODE_API_MAX_BACKLOG", 1000, minimum=0),
            retry_after=_int(env, "TRANSCODE_API_RETRY_AFTER", 30, minimum=1, maximum=3600),
            status_wait_ms=_int(env, "TRANSCODE_API_STATUS_WAIT_MS", 100, minimum=1, maximum=600_000),
            run_mode=_choice(env, "TRANSCODE_API_RUN_MODE", "deployments", ("deployments", "local")),
        )


def _choice(env, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _int(env, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be between {minimum} and {maximum or 'any'}, not {value}")
    return value
