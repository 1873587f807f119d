"""The ingest API: HTTP in front of the transcoder (uploads, URL submissions, bucket
notifications, status, metrics), turning each request into a Prefect event that the
`transcode-video/default` deployment's trigger starts a run for.

    TRANSCODE_API_TOKEN=... PREFECT_API_URL=... python -m ingest_api --host 127.0.0.1 --port 8000

Modules: `config` (environment), `uploads` (streamed S3 multipart), `events` (the event
and its id), `status` (a request's run and outputs), `metrics` (queue depth), `app` (routes).
Nothing here imports Prefect at package import: `__main__` points this process at the
local stack first when PREFECT_API_URL is not set.
"""
