"""Prefect flows. `from flows.transcode import transcode_video`."""
