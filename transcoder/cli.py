"""`transcode`: run | up | down | status | demo.

Prefect is imported only after the local stack is up (it reads PREFECT_API_URL at import).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .errors import BadInputError, TranscodeError
from .malloc import limit_arenas
from .settings import get_settings

UI = "http://127.0.0.1:{port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transcode", description="Chunked, cached video transcoding on Prefect 3.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="transcode SOURCE (a path, s3://bucket/key or an http(s) URL)")
    run.add_argument("source")
    run.add_argument("--renditions", help="comma-separated <height>p rungs, e.g. 1080p,720p,480p,360p, each with "
                                          "an optional codec (1080p:av1); default: those that do not upscale, "
                                          "plus the source's own size")
    run.add_argument("--codec", choices=["h264", "hevc", "av1"],
                     help="codec of the rungs that name none (default h264)")
    run.add_argument("--output-dir", help="also copy the MP4s, the HLS package (DIR/hls/), poster and thumbnails, "
                                          "report.json and a player page to this folder")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.add_argument("--preset", help="x264 preset name, mapped for x265 and SVT-AV1 (default veryfast)")
    run.add_argument("--crf", type=int, help="CRF on x264's scale, mapped for x265 and SVT-AV1 (default 23)")
    run.add_argument("--chunk-seconds", type=float,
                     help="target chunk length in seconds (default: chosen per video, about two chunks per encode "
                          "slot, 8 to 32 s)")
    run.add_argument("--gop-seconds", type=float, help="keyframe interval, the same in every rung (default 2)")
    run.add_argument("--no-reuse", action="store_true",
                     help="run the flow even when this file was finished with the same settings (every chunk "
                          "still comes from the cache); by default such a rerun is answered from storage")
    run.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs and tracebacks")
    sub.add_parser("up", help="start the local stack (Prefect server + SeaweedFS S3) and leave it running")
    sub.add_parser("down", help="stop the local stack")
    sub.add_parser("status", help="show whether the local stack is running")
    demo = sub.add_parser("demo", help="generate a sample video and transcode it into a ladder")
    demo.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    limit_arenas()  # this process is the worker of mode "local": before any thread starts
    args = build_parser().parse_args(argv)

    try:
        if args.command == "up":
            return _up()
        if args.command == "down":
            return _down()
        if args.command == "status":
            return _status()
        if args.command == "demo":
            return _demo(args.verbose)
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # the local stack could not start (a port taken, a server died)
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _stack():
    from .stack import LocalStack

    return LocalStack(get_settings())


def _needs_local_stack() -> bool:
    return not os.environ.get("PREFECT_API_URL") and not get_settings().s3_endpoint


def _up() -> int:
    state = _stack().up()
    print(f"Prefect UI:  {state.prefect_url.removesuffix('/api')}")
    print(f"S3 endpoint: {state.s3_endpoint} (bucket {get_settings().bucket}; "
          f"credentials in {get_settings().data_dir / 'credentials.env'})")
    return 0


def _down() -> int:
    print("stopped the local stack" if _stack().down() else "the local stack was not running")
    return 0


def _status() -> int:
    state = _stack().state()
    if state is None:
        print("the local stack is not running (start it with `transcode up`)")
        return 1
    print(f"running: Prefect {state.prefect_url} (pid {state.prefect_pid}), S3 {state.s3_endpoint} (pid {state.s3_pid})")
    return 0


def _demo(verbose: bool) -> int:
    from .samples import make_sample

    settings = get_settings()
    sample = settings.data_dir / "samples" / "demo-1080p-20s.mp4"
    if not sample.exists():
        print(f"generating a 20 s 1080p sample video with ffmpeg: {sample}", file=sys.stderr)
    make_sample("standard", sample, seconds=20, width=1920, height=1080, fps="25")
    out = settings.data_dir / "demo-output"
    # the run command's own parser, so the demo gets every option's default
    return _run(build_parser().parse_args(["run", str(sample), "--output-dir", str(out)]
                                          + (["--verbose"] if verbose else [])))


def _reused(args: argparse.Namespace):
    """The finished result of this file with these settings, straight from storage (no
    Prefect import, no flow run: transcoder/reuse.py), with the Prefect UI's address; None
    when the flow has to run. A shortcut that fails is not a failed run: the flow decides."""
    if args.no_reuse or "://" in args.source:
        return None
    source = Path(args.source)
    settings = get_settings()
    try:
        if not source.is_file():  # the flow says what is wrong with it
            return None
        if _needs_local_stack():
            state = _stack().state()
            if state is None:  # not running: the flow's path starts it
                return None
            api_url = state.prefect_url
        else:
            api_url = os.environ.get("PREFECT_API_URL")
        from .reuse import fingerprint, reuse_finished
        from .storage import Storage, direct_bucket

        # two attempts: a storage server that does not answer sends the command down the flow's path
        bucket = direct_bucket(settings, api_url, attempts=2)
        if bucket is None:
            return None
        wanted = fingerprint(settings, args.renditions, args.codec, args.preset, args.crf, args.chunk_seconds,
                             args.gop_seconds)
        result = reuse_finished(Storage(bucket), settings, source, wanted, args.output_dir, source.name)
    except Exception as exc:  # noqa: BLE001
        if args.verbose:
            print(f"no reuse of a finished run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    ui = api_url.removesuffix("/api") if api_url else None
    return (result, ui) if result is not None else None


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    # A file this machine has not hashed yet is almost surely a cold run: its hash (0.8 s
    # for the 60 s 1080p benchmark input, 8 s for 10 minutes) then runs beside the import
    # of Prefect (about 2 s) rather than before it; a rerun keeps its fast path (no import).
    unhashed = _unhashed_file(args)
    if unhashed is None:
        reused = _reused(args)
        if reused is not None:
            _print_result(args, *reused, started)
            return 0
    if _needs_local_stack():
        stack = _stack()
        if stack.state() is None:
            print("starting the local stack (Prefect server, SeaweedFS S3; state in "
                  f"{get_settings().data_dir}) ...", file=sys.stderr)
        state = stack.up()
        ui = state.prefect_url.removesuffix("/api")
    else:
        ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api") or None
    if unhashed is not None:
        hashing = threading.Thread(target=_remember_hash, args=(unhashed,), name="hash-beside-import", daemon=True)
        hashing.start()
    from flows.transcode import PROGRESS_EVENT, transcode_video

    if unhashed is not None:
        hashing.join()
        reused = _reused(args)  # the same bytes may have been finished under another name
        if reused is not None:
            _print_result(args, *reused, started)
            return 0
    if not args.verbose:
        _quiet_prefect()

    progress = _ProgressPrinter(PROGRESS_EVENT, enabled=not args.json)
    logging.getLogger("prefect.flow_runs").addHandler(progress)
    try:
        result = transcode_video(
            source=args.source,
            renditions=args.renditions,
            output_dir=args.output_dir,
            preset=args.preset,
            crf=args.crf,
            chunk_seconds=args.chunk_seconds,
            gop_seconds=args.gop_seconds,
            codec=args.codec,
        )
    except BadInputError as exc:
        progress.finish()
        print(f"error: bad input: {exc}", file=sys.stderr)
        return 2
    except TranscodeError as exc:
        progress.finish()
        print(f"error: {getattr(exc, 'summary', None) or str(exc).splitlines()[0]}", file=sys.stderr)
        if args.verbose:
            raise
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        progress.finish()
        if args.verbose:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(progress)
    progress.finish()
    _print_result(args, result, ui, started)
    return 0


def _unhashed_file(args: argparse.Namespace) -> Path | None:
    """The source, when it is a local file whose sha256 this machine does not remember."""
    from .ingest import remembered_sha256

    source = Path(args.source)
    try:
        if "://" in args.source or not source.is_file() or remembered_sha256(source, get_settings()) is not None:
            return None
    except OSError:
        return None
    return source


def _remember_hash(source: Path) -> None:
    from .ingest import sha256_local

    try:
        sha256_local(source, get_settings())
    except OSError:  # unreadable: the flow's ingest says what is wrong with it
        pass


def _print_result(args: argparse.Namespace, result, ui: str | None, started: float) -> None:
    if args.json:
        payload = result.model_dump(mode="json")
        payload["bucket"] = get_settings().bucket
        payload["cli_seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(payload, indent=2))
    else:
        _print_table(result, ui)


def _print_table(result, ui: str | None) -> None:
    bucket = get_settings().bucket
    print(f"\nvideo {result.video_id}: {result.duration:.2f} s at {result.fps} fps, {result.chunks} chunks; "
          f"chunk x rung tasks: {result.transcoded} transcoded, {result.cached} from cache "
          f"({result.wall_seconds:.1f} s)")
    if result.reused:
        print("answered from the finished outputs of an earlier run with the same settings (checked in storage; "
              "no flow run): --no-reuse runs the flow")
    if result.skipped_rungs:
        print(f"skipped (would upscale): {', '.join(result.skipped_rungs)}")
    header = f"{'rung':>9}  {'size':>10}  {'frames':>7}  {'kb/s':>6}  {'MB':>7}  {'PSNR':>6}  {'SSIM':>6}  where"
    print(header)
    for r in result.renditions:
        where = r.path or f"s3://{bucket}/{r.key}"
        psnr, ssim = (f"{r.quality['psnr_db']:.2f}", f"{r.quality['ssim']:.4f}") if r.quality else ("-", "-")
        print(f"{r.name:>9}  {r.width:>4}x{r.height:<5}  {r.frames:>7}  {r.bitrate // 1000:>6}  "
              f"{r.size / 1e6:>7.2f}  {psnr:>6}  {ssim:>6}  {where}")
    print(f"report: s3://{bucket}/{result.report_key}")
    if result.hls_master_key:
        print(f"HLS:    s3://{bucket}/{result.hls_master_key}")
    if result.thumbnails:
        print(f"poster: s3://{bucket}/{result.thumbnails.poster_key}")
    if result.player_url:
        print(f"player: {result.player_url}")
    if ui:
        print(f"Prefect UI: {ui}  (flow runs, artifacts: renditions-{result.video_id})")


def _quiet_prefect() -> None:
    """Keep Prefect's console lines out of the CLI's output; they still reach the UI."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)
    logging.getLogger("transcoder").setLevel(logging.WARNING)


class _ProgressPrinter(logging.Handler):
    """Shows the flow's progress records (`extra={PROGRESS_EVENT: (stage, done, total)}`) on stderr."""

    def __init__(self, attr: str, enabled: bool):
        super().__init__(logging.INFO)
        self.attr, self.enabled = attr, enabled
        self.tty = sys.stderr.isatty()
        self.last: tuple | None = None
        self.open_line = False

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, self.attr, None)
        if not self.enabled:
            return
        if info is None:
            if record.levelno >= logging.INFO and record.getMessage().startswith("plan:"):
                self._line(record.getMessage(), final=True)
            return
        stage, done, total = info
        pct = 100 * done // max(total, 1)
        if not self.tty and self.last and self.last[0] == stage and pct // 25 == self.last[1] // 25 and done != total:
            return
        self.last = (stage, pct)
        self._line(f"{stage}: {done}/{total} ({pct}%)", final=not self.tty or done == total)

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
            self.open_line = not final
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.open_line:
            sys.stderr.write("\n")
            self.open_line = False


def entry() -> None:
    """The `transcode` command: `main`, then out without the interpreter's teardown.

    Unloading Prefect and everything it imported took about a second after the result was
    printed (a 2 s clip: 4.6 s to the result, 5.7 s to the exit, measured). Other threads
    are joined and the atexit handlers run first (Prefect drains its log and event workers
    there; logging flushes), then the output streams are flushed."""
    rc = main()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
