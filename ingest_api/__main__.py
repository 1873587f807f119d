"""`python -m ingest_api [--host H] [--port P]`: the ingest API under uvicorn.

Host and port default to TRANSCODE_API_HOST / TRANSCODE_API_PORT, else 127.0.0.1:8000.
Without PREFECT_API_URL it uses the local stack (`transcode up`) when that is running.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest_api", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("TRANSCODE_API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("TRANSCODE_API_PORT", "8000")))
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    # Prefect reads PREFECT_API_URL when it is first imported: settle it before
    if not os.environ.get("PREFECT_API_URL"):
        from transcoder.settings import get_settings
        from transcoder.stack import LocalStack

        stack = LocalStack(get_settings())
        state = stack.state()
        if state is None:
            print("error: PREFECT_API_URL is not set and the local stack is not running (`transcode up`)",
                  file=sys.stderr)
            return 2
        stack.use(state)

    import uvicorn

    from .app import create_app
    from .config import ConfigError

    try:
        app = create_app()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
