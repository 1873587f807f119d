"""deployments/prefect-ecs.yaml, rendered the way Prefect and prefect-aws's ECS worker do it.

No AWS account is reachable here, so the last hop is replaced: a private Prefect server
(its own SQLite, not the session's test server, whose `transcode-video/default` and friends
the docker tests deploy) gets the pool from `prefect work-pool create --type ecs` and the
deployments from `prefect deploy --all --prefect-file deployments/prefect-ecs.yaml`; then, for
a flow run of each deployment, the worker's own code builds the job configuration
(`ECSJobConfiguration.resolve_for_flow_run`) and the ECS requests
(`ECSWorker._prepare_and_create_task`), which go to botocore clients with a `Stubber`:
botocore checks every request against the ECS/EC2 API models, and the test reads what
would have been sent (RegisterTaskDefinition, RunTask).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect_aws.workers.ecs_worker")

REPO = Path(__file__).resolve().parent.parent
ECS_FILE = REPO / "deployments" / "prefect-ecs.yaml"
PROD_FILE = REPO / "prefect.yaml"
DOC = REPO / "docs" / "deploy-cloud.md"
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "transcode-ecs"
REGION = "eu-west-1"

# entrypoint -> queue: prefect.yaml's deployments (used when it lists none)
EXPECTED = {
    "flows/transcode.py:transcode_video": "orchestrate",
    "flows/stages.py:download_source": "download",
    "flows/stages.py:probe_video": "metadata",
    "flows/stages.py:split_video": "split",
    "flows/stages.py:transcode_batch": "transcode",
    "flows/stages.py:merge_video": "merge",
    "flows/pickup.py:pickup_incoming": "orchestrate",
}
FLOW_NAMES = {
    "flows/transcode.py:transcode_video": "transcode-video",
    "flows/stages.py:download_source": "download-source",
    "flows/stages.py:probe_video": "probe-video",
    "flows/stages.py:split_video": "split-video",
    "flows/stages.py:transcode_batch": "transcode-batch",
    "flows/stages.py:merge_video": "merge-video",
    "flows/pickup.py:pickup_incoming": "pickup-incoming",
}
# what an operator exports before deploying (fake but well-formed values)
ENV = {
    "TRANSCODE_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/transcoder:1.4.0",
    "TRANSCODE_ECS_CLUSTER": "media-transcode",
    "TRANSCODE_VPC_ID": "vpc-0a1b2c3d4e5f60718",
    "TRANSCODE_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/transcoder-task",
    "TRANSCODE_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/transcoder-execution",
    "TRANSCODE_STORAGE_BLOCK": "transcode-storage",
}
SUBNETS = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]
# cpu (units) and memory (MiB) per queue: what the tasks must get
SIZES = {"orchestrate": (512, 1024), "download": (1024, 2048), "metadata": (512, 1024),
         "split": (1024, 2048), "transcode": (8192, 16384), "merge": (2048, 4096)}
# Fargate's valid cpu -> memory range (MiB) and step
FARGATE = {256: (512, 2048, 512), 512: (1024, 4096, 1024), 1024: (2048, 8192, 1024),
           2048: (4096, 16384, 1024), 4096: (8192, 30720, 1024), 8192: (16384, 61440, 4096),
           16384: (32768, 122880, 8192)}
ON_DEMAND = {"orchestrate", "merge"}  # capacity provider FARGATE, never Spot
KEY_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
KEY_PATTERN = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
# prefect.yaml job env entries that do not apply on AWS S3 (presigned links are signed for
# the S3 endpoint itself; MinIO behind a proxy needs it)
DOCKER_ONLY_ENV = {"TRANSCODE_PUBLIC_S3_ENDPOINT"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def queue_of(spec: dict) -> str:
    return spec["work_pool"]["work_queue_name"]


def render_like_prefect_deploy(spec: dict, env: dict[str, str]) -> dict:
    """What `prefect deploy` does to one deployment's `{{ $VAR }}` values (prefect/cli/deploy/
    _core.py: apply_values with os.environ, keeping unknowns; then apply_values with the
    build/push step outputs, here none, which drops what is still unset)."""
    from prefect.utilities.templating import apply_values

    old = os.environ.copy()
    try:
        os.environ.clear()  # only the variables given: none of the caller's TRANSCODE_*
        os.environ.update({k: v for k, v in old.items() if not k.startswith("TRANSCODE_")}, **env)
        spec = apply_values(copy.deepcopy(spec), os.environ, remove_notset=False)
        triggers = spec.pop("triggers", None)  # deploy keeps trigger parameters untemplated
        spec = apply_values(spec, {}, warn_on_notset=False, skip_prefixes=["ctx."])
    finally:
        os.environ.clear()
        os.environ.update(old)
    if triggers is not None:
        spec["triggers"] = triggers
    return spec


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)


def assert_no_keys(value, where: str) -> None:
    for s in strings(value):
        assert not any(name in s for name in KEY_NAMES), f"{where}: AWS key variable {s!r}"
        assert not KEY_PATTERN.search(s), f"{where}: something like an AWS access key id: {s!r}"


# ---------------------------------------------------------------- the file itself (no server)


def test_every_production_deployment_has_its_ecs_counterpart():
    ecs = load(ECS_FILE)
    prod = load(PROD_FILE) if PROD_FILE.exists() else {}
    prod_deps = prod.get("deployments") or []
    wanted = {d["entrypoint"]: d for d in prod_deps} or {e: None for e in EXPECTED}
    got = {d["entrypoint"]: d for d in ecs["deployments"]}
    assert len(got) == len(ecs["deployments"]), "an entrypoint is deployed twice"
    assert set(got) == set(wanted), f"missing {set(wanted) - set(got)}, extra {set(got) - set(wanted)}"
    for entrypoint, spec in got.items():
        assert spec["work_pool"]["name"] == POOL
        assert spec["name"] == "default"
        ref = wanted[entrypoint]
        if ref is None:
            assert queue_of(spec) == EXPECTED[entrypoint]
            continue
        # only the pool and its job variables may differ
        assert queue_of(spec) == queue_of(ref), entrypoint
        assert spec["name"] == ref["name"], entrypoint
        for key in ("parameters", "schedules", "triggers", "concurrency_limit", "tags", "paused",
                    "enforce_parameter_schema"):
            assert spec.get(key) == ref.get(key), f"{entrypoint}: {key} differs from prefect.yaml"
        ref_env = ref["work_pool"].get("job_variables", {}).get("env", {}) or {}
        ecs_env = spec["work_pool"]["job_variables"]["env"]
        for name, value in ref_env.items():
            if name not in DOCKER_ONLY_ENV:
                assert ecs_env.get(name) == value, f"{entrypoint}: job env {name} differs from prefect.yaml"
    for entrypoint, queue in EXPECTED.items():  # the design's list, whatever prefect.yaml says
        assert queue_of(got[entrypoint]) == queue


def test_same_queues_limits_and_code_directory_as_production():
    ecs = load(ECS_FILE)
    prod = load(PROD_FILE) if PROD_FILE.exists() else {}
    setup = ecs["definitions"]["work_pool_setup"]
    assert set(setup["queues"]) == set(SIZES)
    if prod.get("definitions", {}).get("work_pool_setup"):
        assert setup == prod["definitions"]["work_pool_setup"]
    step = ecs["pull"][0]["prefect.deployments.steps.set_working_directory"]
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert step["directory"] == workdirs[-1] == "/opt/transcoder"
    assert ecs.get("build") is None and ecs.get("push") is None  # the image is built and pushed beforehand


def test_job_variables_are_the_ecs_workers_own():
    """Every job variable is a variable of prefect-aws's ECS base job template (the server
    would accept an unknown one and the worker would silently ignore it)."""
    from prefect_aws.workers.ecs_worker import ECSWorker

    known = set(ECSWorker.get_default_base_job_template()["variables"]["properties"])
    for spec in load(ECS_FILE)["deployments"]:
        unknown = set(spec["work_pool"]["job_variables"]) - known
        assert not unknown, f"{spec['entrypoint']}: not ECS job variables: {unknown}"


def test_sizes_are_valid_fargate_sizes():
    for spec in load(ECS_FILE)["deployments"]:
        jv = spec["work_pool"]["job_variables"]
        cpu, memory = jv["cpu"], jv["memory"]
        assert isinstance(cpu, int) and isinstance(memory, int)  # a `{{ $VAR }}` would render a string
        assert (cpu, memory) == SIZES[queue_of(spec)]
        low, high, step = FARGATE[cpu]
        assert low <= memory <= high and (memory - low) % step == 0, f"{cpu}/{memory} is not a Fargate size"


def test_env_placeholders_are_documented_and_render_like_prefect_deploy():
    from prefect.utilities.templating import PlaceholderType, find_placeholders

    ecs = load(ECS_FILE)
    names = {p.name[1:] for p in find_placeholders(ecs) if p.type is PlaceholderType.ENV_VAR}
    assert names == set(ENV), names
    header = ECS_FILE.read_text().split("\nname:")[0]
    doc = DOC.read_text()
    for name in names:
        assert name in header and name in doc, f"{name} is not explained"
    spec = next(d for d in ecs["deployments"] if queue_of(d) == "transcode")
    rendered = render_like_prefect_deploy(spec, ENV)["work_pool"]["job_variables"]
    assert rendered["image"] == ENV["TRANSCODE_IMAGE"]
    assert rendered["env"]["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/transcode-storage-results"
    # an unset variable: prefect deploy goes on with an empty string (hence the list to export)
    unset = render_like_prefect_deploy(spec, {k: v for k, v in ENV.items() if k != "TRANSCODE_TASK_ROLE_ARN"})
    assert unset["work_pool"]["job_variables"]["task_role_arn"] == ""


def test_no_credentials_in_the_files():
    assert_no_keys(load(ECS_FILE), str(ECS_FILE))
    text = DOC.read_text()
    assert not KEY_PATTERN.search(text)


# ---------------------------------------------------------------- deployed and rendered


class Rendered:
    def __init__(self):
        self.deployments: dict[str, object] = {}  # entrypoint -> DeploymentResponse
        self.configs: dict[str, object] = {}  # entrypoint -> ECSJobConfiguration
        self.calls: dict[str, dict[str, dict]] = {}  # entrypoint -> ECS operation -> params
        self.flow_runs: dict[str, object] = {}
        self.pool = None
        self.deploy_output = ""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A private server, the pool, `prefect deploy --all`, then the worker's rendering."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.stub import Stubber
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsCredentials
    from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

    from transcoder.stack import _stop, free_port, start_prefect_server

    root = tmp_path_factory.mktemp("ecs-server")
    proc, url = start_prefect_server(root / "home", free_port(), root / "server.log")
    out = Rendered()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "TRANSCODE_"))}
    env = {**base_env, **ENV, "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(root / "client-home"), "PYTHONPATH": str(REPO)}
    try:
        # what docs/deploy-cloud.md tells the operator to run
        made = subprocess.run([PREFECT, "work-pool", "create", POOL, "--type", "ecs"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stdout + made.stderr
        deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(ECS_FILE)],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        out.deploy_output = deployed.stdout + deployed.stderr
        assert deployed.returncode == 0, out.deploy_output[-6000:]

        ecs_client = boto3.client("ecs", region_name=REGION, config=Config(signature_version=UNSIGNED))
        ec2_client = boto3.client("ec2", region_name=REGION, config=Config(signature_version=UNSIGNED))
        current: dict[str, dict] = {}

        def capture(params, model, **_):
            current[model.name] = copy.deepcopy(params)

        ecs_client.meta.events.register("provide-client-params.ecs.*", capture)
        clients = {"ecs": ecs_client, "ec2": ec2_client}
        original_get_client = AwsCredentials.get_client
        AwsCredentials.get_client = lambda self, client_type: clients[client_type]  # no AWS here
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                async def build():
                    async with get_client() as client:
                        out.pool = await client.read_work_pool(POOL)
                        worker = ECSWorker(work_pool_name=POOL, name="ecs-template-test")
                        for spec in load(ECS_FILE)["deployments"]:
                            ep = spec["entrypoint"]
                            dep = await client.read_deployment_by_name(f"{FLOW_NAMES[ep]}/default")
                            # the flow run a worker would get (stage flows need typed parameters,
                            # which do not matter to the infrastructure: not created on the server)
                            run = FlowRun(id=uuid.uuid4(), name=f"test-{dep.work_queue_name}", flow_id=dep.flow_id,
                                          deployment_id=dep.id, work_queue_name=dep.work_queue_name,
                                          work_pool_name=POOL)
                            config = await ECSJobConfiguration.resolve_for_flow_run(
                                run, client=client, work_pool=out.pool, worker_name=worker.name, deployment=dep)
                            out.deployments[ep], out.flow_runs[ep], out.configs[ep] = dep, run, config
                            current.clear()
                            with Stubber(ecs_client) as ecs_stub, Stubber(ec2_client) as ec2_stub:
                                ec2_stub.add_response("describe_vpcs", {"Vpcs": [{"VpcId": ENV["TRANSCODE_VPC_ID"]}]},
                                                      {"VpcIds": [ENV["TRANSCODE_VPC_ID"]]})
                                ec2_stub.add_response("describe_subnets",
                                                      {"Subnets": [{"SubnetId": s} for s in SUBNETS]})
                                # match_latest_revision_in_family: the family does not exist yet
                                ecs_stub.add_client_error("describe_task_definition", "ClientException",
                                                          "Unable to describe task definition.")
                                arn = (f"arn:aws:ecs:{REGION}:123456789012:task-definition/"
                                       f"{spec['work_pool']['job_variables']['family']}:1")
                                ecs_stub.add_response("register_task_definition",
                                                      {"taskDefinition": {"taskDefinitionArn": arn}})
                                ecs_stub.add_response("run_task", {
                                    "tasks": [{"taskArn": f"arn:aws:ecs:{REGION}:123456789012:task/x/1",
                                               "clusterArn": f"arn:aws:ecs:{REGION}:123456789012:cluster/x"}],
                                    "failures": []})
                                await asyncio.to_thread(worker._prepare_and_create_task,
                                                        logging.getLogger("ecs-template-test"),
                                                        ecs_client, config, run)
                                ecs_stub.assert_no_pending_responses()
                                ec2_stub.assert_no_pending_responses()
                            out.calls[ep] = dict(current)

                asyncio.run(build())
        finally:
            AwsCredentials.get_client = original_get_client
        yield out
    finally:
        _stop(proc.pid)


def test_pool_created_by_the_cli_has_the_workers_template(rendered):
    from prefect_aws.workers.ecs_worker import ECSWorker

    assert rendered.pool.type == "ecs"
    assert rendered.pool.base_job_template == ECSWorker.get_default_base_job_template()


def test_deployed_as_declared(rendered):
    for spec in load(ECS_FILE)["deployments"]:
        ep = spec["entrypoint"]
        dep = rendered.deployments[ep]
        assert dep.entrypoint == ep and dep.work_pool_name == POOL
        assert dep.work_queue_name == EXPECTED[ep]
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/transcoder"}}]
        # the server holds what the offline rendering above computes
        assert dep.job_variables == render_like_prefect_deploy(spec, ENV)["work_pool"]["job_variables"]
    parent = rendered.deployments["flows/transcode.py:transcode_video"]
    assert parent.parameters == {"mode": "deployments"}
    pickup = rendered.deployments["flows/pickup.py:pickup_incoming"]
    assert [s.schedule.cron for s in pickup.schedules] == ["*/5 * * * *"]


def test_task_definitions(rendered):
    for ep, calls in rendered.calls.items():
        queue = EXPECTED[ep]
        td = calls["RegisterTaskDefinition"]
        cpu, memory = SIZES[queue]
        assert (td["cpu"], td["memory"]) == (str(cpu), str(memory)), ep
        assert td["family"] == f"transcoder-{queue}"
        assert td["executionRoleArn"] == ENV["TRANSCODE_EXECUTION_ROLE_ARN"]
        assert td["requiresCompatibilities"] == ["FARGATE"] and td["networkMode"] == "awsvpc"
        (container,) = td["containerDefinitions"]
        assert container["name"] == "prefect" and container["image"] == ENV["TRANSCODE_IMAGE"]
        logs = container["logConfiguration"]
        assert logs["logDriver"] == "awslogs" and logs["options"]["awslogs-group"] == "/prefect/transcoder"
        assert logs["options"]["awslogs-region"] == REGION


def test_run_task_requests(rendered):
    for ep, calls in rendered.calls.items():
        queue = EXPECTED[ep]
        req = calls["RunTask"]
        run = rendered.flow_runs[ep]
        assert req["cluster"] == ENV["TRANSCODE_ECS_CLUSTER"]
        assert req["taskDefinition"].endswith(f"task-definition/transcoder-{queue}:1")
        assert req["overrides"]["taskRoleArn"] == ENV["TRANSCODE_TASK_ROLE_ARN"]
        cpu, memory = SIZES[queue]
        assert (req["overrides"]["cpu"], req["overrides"]["memory"]) == (str(cpu), str(memory))
        strategy = req.get("capacityProviderStrategy")
        if queue == "transcode":
            assert strategy == [{"capacityProvider": "FARGATE_SPOT", "weight": 1, "base": 0}]
            assert "launchType" not in req  # RunTask refuses both
        elif queue in ON_DEMAND:
            assert strategy == [{"capacityProvider": "FARGATE", "weight": 1, "base": 0}]
            assert "launchType" not in req
        else:
            assert req["launchType"] == "FARGATE" and not strategy
        assert req["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == SUBNETS
        (container,) = req["overrides"]["containerOverrides"]
        assert container["name"] == "prefect"
        assert container["command"] == ["prefect", "flow-run", "execute"]
        env = {e["name"]: e["value"] for e in container["environment"]}
        assert env["TRANSCODE_STORAGE_BLOCK"] == ENV["TRANSCODE_STORAGE_BLOCK"]
        assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
        assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/transcode-storage-results"
        assert env["PREFECT__FLOW_RUN_ID"] == str(run.id)
        assert env["PREFECT_API_URL"].startswith("http://127.0.0.1:")  # the worker's own API URL
        assert ("TRANSCODE_MAX_WORKERS" in env) == (queue == "transcode")
        tags = {t["key"]: t["value"] for t in req["tags"]}
        assert tags["prefect.io/flow-run-id"] == str(run.id)


def test_no_access_keys_anywhere(rendered):
    for ep, config in rendered.configs.items():
        creds = config.aws_credentials
        assert creds.aws_access_key_id is None and creds.aws_secret_access_key is None
        assert creds.aws_session_token is None and creds.profile_name is None
        assert_no_keys(rendered.calls[ep], ep)
        assert_no_keys(rendered.deployments[ep].job_variables, ep)
    assert_no_keys(rendered.pool.base_job_template, "pool template")
    dump = json.dumps(rendered.calls, indent=2)  # plain data: what would have gone to AWS
    if os.environ.get("TRANSCODE_ECS_REQUESTS_OUT"):  # to read them: set it to a file path
        Path(os.environ["TRANSCODE_ECS_REQUESTS_OUT"]).write_text(dump)
