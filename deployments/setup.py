"""Make a Prefect server ready for the deployments in prefect.yaml, then deploy them.

    python -m deployments.setup [--pool transcode] [--pool-type docker|process]
                                [--storage-from-env] [--deploy]

- storage: with `--storage-from-env`, the AwsCredentials + S3Bucket blocks are saved from
  TRANSCODE_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the compose stack's
  init service; with AWS leave the endpoint and keys out and the role's credentials are
  used), and the bucket is created; otherwise the blocks must exist (`transcode up`
  saves them). Either way the bucket gets its lifecycle rules.
- the work pool (type docker by default) and its queues, with the priorities and
  concurrency limits of prefect.yaml's `definitions.work_pool_setup`;
- `--deploy`: `prefect --no-prompt deploy --all`, with defaults for the `{{ $VAR }}`
  values prefect.yaml uses (printed, so a user sees what was filled in).

Running it again changes nothing that is already as asked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import yaml

from transcoder.settings import REPO_ROOT, get_settings

PROJECT_FILE = REPO_ROOT / "prefect.yaml"
DEFAULT_POOL = "transcode"
LIFECYCLE_RULES = [
    {   # split intermediates (`{video_id}/chunks/`): a prefix rule cannot match under every
        # video id, so such objects carry this tag (Storage.upload) and the rule matches it
        "ID": "expire-chunk-intermediates",
        "Filter": {"Tag": {"Key": "transcode-intermediate", "Value": "chunk"}},
        "Status": "Enabled",
        "Expiration": {"Days": 1},
    },
    {   # uploads through the ingest API: the run copies the original to {video_id}/source/
        "ID": "expire-api-uploads",
        "Filter": {"Prefix": "uploads/"},
        "Status": "Enabled",
        "Expiration": {"Days": 7},
    },
    {   # cache-key locks (transcoder/locks.py) whose holder died and nobody took over
        "ID": "expire-stale-locks",
        "Filter": {"Prefix": "locks/"},
        "Status": "Enabled",
        "Expiration": {"Days": 1},
    },
    {
        "ID": "abort-incomplete-multipart-uploads",
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    },
]


def pool_setup(project_file: Path = PROJECT_FILE) -> dict:
    return yaml.safe_load(project_file.read_text())["definitions"]["work_pool_setup"]


def deploy_env(pool: str, settings=None) -> dict[str, str]:
    """The `{{ $VAR }}` values of prefect.yaml: the environment's, else these defaults."""
    settings = settings or get_settings()
    defaults = {
        "TRANSCODE_WORK_POOL": pool,
        "TRANSCODE_CODE_DIR": str(REPO_ROOT),  # where workers find flows/ (the image: /opt/transcoder)
        "TRANSCODE_IMAGE": "transcoder:local",
        "TRANSCODE_DOCKER_NETWORK": "host",
        "TRANSCODE_STORAGE_BLOCK": settings.storage_block,
        "TRANSCODE_PUBLIC_S3_ENDPOINT": settings.public_s3_endpoint or "",
    }
    return {name: os.environ.get(name) or value for name, value in defaults.items()}


def save_storage_from_env(settings) -> None:
    from transcoder.stack import save_blocks

    endpoint = os.environ.get("TRANSCODE_S3_ENDPOINT") or None
    save_blocks(endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                settings)


def ensure_results_block(settings) -> list[str]:
    """The stage-results block beside the storage block (stacks made before it existed lack it)."""
    from prefect_aws import S3Bucket

    from transcoder.stack import RESULTS_FOLDER

    try:
        S3Bucket.load(settings.results_block, _sync=True)
        return []
    except ValueError:
        storage = S3Bucket.load(settings.storage_block, _sync=True)
    S3Bucket(bucket_name=storage.bucket_name, credentials=storage.credentials, bucket_folder=RESULTS_FOLDER).save(
        settings.results_block, overwrite=True)
    return [f"block {settings.results_block} saved (results of stage flows, {RESULTS_FOLDER}/)"]


def prepare_bucket(settings) -> list[str]:
    """Create the bucket if needed and set its lifecycle rules; returns what it did."""
    from transcoder.storage import Storage, forget_buckets

    forget_buckets()
    storage = Storage()
    client = storage.client
    done = []
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if storage.name not in names:
        region = client.meta.region_name
        # outside us-east-1, AWS wants the region named (MinIO and SeaweedFS accept either)
        client.create_bucket(Bucket=storage.name, **({"CreateBucketConfiguration": {"LocationConstraint": region}}
                                                     if region and region != "us-east-1" else {}))
        done.append(f"bucket {storage.name} created")
    try:
        client.put_bucket_lifecycle_configuration(Bucket=storage.name,
                                                  LifecycleConfiguration={"Rules": LIFECYCLE_RULES})
        done.append(f"lifecycle rules set on {storage.name}: {', '.join(r['ID'] for r in LIFECYCLE_RULES)}")
    except client.exceptions.ClientError as exc:
        # an S3 server without lifecycle support: say so, the rest works without it
        done.append(f"WARNING: {storage.name}: lifecycle rules not set ({exc.response['Error'].get('Code')}: "
                    f"{exc.response['Error'].get('Message')}); expire */chunks/ objects another way")
    return done


async def ensure_pool(name: str, pool_type: str, project_file: Path = PROJECT_FILE) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    wanted = pool_setup(project_file)
    done = []
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
            if pool.type != pool_type:
                raise SystemExit(f"work pool {name} exists with type {pool.type}, not {pool_type}: "
                                 f"delete it or pick another name (--pool)")
            if pool.concurrency_limit != wanted.get("concurrency_limit"):
                await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=wanted.get("concurrency_limit")))
                done.append(f"work pool {name}: concurrency limit {wanted.get('concurrency_limit')}")
        except ObjectNotFound:
            template = await get_default_base_job_template_for_infrastructure_type(pool_type)
            if template is None:
                raise SystemExit(f"no job template for work pools of type {pool_type} "
                                 f"(for docker: pip install prefect-docker)") from None
            await client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template,
                                                         concurrency_limit=wanted.get("concurrency_limit")))
            done.append(f"work pool {name} ({pool_type}) created")
        existing = {q.name: q for q in await client.read_work_queues(work_pool_name=name)}
        for queue, options in wanted["queues"].items():
            limit, priority = options.get("concurrency_limit"), options.get("priority")
            if queue not in existing:
                await client.create_work_queue(name=queue, work_pool_name=name, concurrency_limit=limit,
                                               priority=priority)
                done.append(f"queue {queue} created (limit {limit})")
            elif (existing[queue].concurrency_limit, existing[queue].priority) != (limit, priority):
                await client.update_work_queue(existing[queue].id, concurrency_limit=limit, priority=priority)
                done.append(f"queue {queue}: limit {limit}, priority {priority}")
    return done


def deploy(pool: str, project_file: Path = PROJECT_FILE) -> None:
    env = {**os.environ, **deploy_env(pool)}
    for name in sorted(deploy_env(pool)):
        print(f"  {name}={env[name]}")
    prefect = Path(sys.executable).parent / "prefect"
    cmd = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all",
           "--prefect-file", str(project_file)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"prefect deploy failed (exit {proc.returncode})")
    for line in proc.stdout.splitlines():
        if "Deployment '" in line and "successfully created" in line:
            print("  " + line.strip())


def pause_scheduled(project_file: Path = PROJECT_FILE) -> list[str]:
    """Pause the deployments of prefect.yaml that have schedules; returns their names."""
    from prefect.client.orchestration import get_client

    project = yaml.safe_load(project_file.read_text())
    names = []
    with get_client(sync_client=True) as client:
        for spec in project["deployments"]:
            if spec.get("schedules"):
                flow_name = _flow_name(spec["entrypoint"])
                deployment = client.read_deployment_by_name(f"{flow_name}/{spec['name']}")
                client.pause_deployment(deployment.id)
                names.append(deployment.name if "/" in deployment.name else f"{flow_name}/{deployment.name}")
    return names


def _flow_name(entrypoint: str) -> str:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO_ROOT / entrypoint)).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default=os.environ.get("TRANSCODE_WORK_POOL", DEFAULT_POOL))
    parser.add_argument("--pool-type", default="docker", help="docker (production), process (one machine, tests)")
    parser.add_argument("--storage-from-env", action="store_true",
                        help="save the storage blocks from TRANSCODE_S3_ENDPOINT / AWS_* and create the bucket")
    parser.add_argument("--deploy", action="store_true", help="then run `prefect deploy --all`")
    parser.add_argument("--paused", action="store_true",
                        help="deploy with the scheduled deployments paused (resume them in the UI or "
                             "`prefect deployment resume NAME`)")
    parser.add_argument("--prefect-file", type=Path, default=PROJECT_FILE)
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("PREFECT_API_URL is not set: point it at the Prefect server (http://HOST:4200/api)")
    settings = get_settings()
    if args.storage_from_env:
        save_storage_from_env(settings)
        print(f"storage blocks saved: {settings.storage_block}, {settings.results_block}")
    for line in ensure_results_block(settings) + prepare_bucket(settings):
        print(line)
    for line in asyncio.run(ensure_pool(args.pool, args.pool_type, args.prefect_file)):
        print(line)
    if args.deploy:
        print(f"deploying {args.prefect_file.name} to pool {args.pool}:")
        deploy(args.pool, args.prefect_file)
        if args.paused:
            for name in pause_scheduled(args.prefect_file):
                print(f"  paused: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
