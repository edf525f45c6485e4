"""docker/: what can be checked without Docker or Kubernetes (neither runs on these machines).

The compose file and the KubeRay manifests parse and hold the fields the stack relies on;
every published port defaults to loopback; no secret value is committed; the images' pins are
pyproject.toml's; every `mfd` command the files run exists and parses; the RayCluster's groups
fit the Train groups of the presets its RayJobs run; and the node entrypoint starts a real Ray
head on 127.0.0.1 here, which this test stops by PID.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from processes import free_ports, session_pids, stop_session

from mfdiffuser.cli import app
from mfdiffuser.tuning.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]  # tests/integration/ -> the repository
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
KUBE = {p.name: yaml.safe_load(p.read_text()) for p in sorted((DOCKER / "kuberay").glob("*.yaml"))}
PINS = {
    re.split(r"[\[=<>]", d)[0]: d
    for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
}
CLI = typer.main.get_command(app)
SECRETS = ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "RAY_AUTH_TOKEN")


def _pin(name: str) -> str:
    return PINS[name].split("==", 1)[1]


def test_compose_has_the_stack_with_health_checks_and_named_volumes() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker"}
    assert services["ray-worker"]["deploy"]["replicas"] == 2  # two workers
    for name, svc in services.items():
        if name != "minio-init":  # a one-shot job
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services and cond["condition"] in (
                "service_healthy",
                "service_completed_successfully",
            ), (name, dep)
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in COMPOSE["volumes"], (name, vol)  # named volumes only
    assert services["ray-worker"]["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql://" in mlflow and "--serve-artifacts" in mlflow
    assert "--artifacts-destination s3://" in mlflow


def test_every_published_port_defaults_to_loopback() -> None:
    published = [p for svc in COMPOSE["services"].values() for p in svc.get("ports", [])]
    assert published
    for port in published:
        assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port
    env = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["BIND_ADDRESS"] == "127.0.0.1"


def test_no_secret_value_is_committed() -> None:
    env = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all(env[name] == "CHANGE-ME" for name in SECRETS), env
    text = {p: p.read_text() for p in DOCKER.rglob("*") if p.is_file()}
    for path, body in text.items():
        assert not re.search(r"AKIA[0-9A-Z]{16}", body), path  # an AWS access key id
        for name in (*SECRETS, "AWS_SECRET_ACCESS_KEY"):
            for value in re.findall(rf"(?<![{{$\w]){name}[:=]\s*(\S+)", body):
                # only a reference (${VAR:?...}), the placeholder, or a hand-made Secret
                assert value.startswith(("${", "CHANGE-ME", "...")), (path, name, value)
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env (the real secrets) must be git-ignored"


def test_the_images_pin_what_pyproject_pins_and_run_as_non_root() -> None:
    node = (DOCKER / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={_pin('torch')}" in node
    # the CPU image by default: the CPU wheel index has no CUDA packages
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in node
    assert "RUN pip install . " in node  # the rest at pyproject.toml's pins
    assert re.search(r"^USER mfd$", node, re.M)
    server = (DOCKER / "mlflow.Dockerfile").read_text()
    assert f'"mlflow=={_pin("mlflow")}"' in server and re.search(r"^USER mlflow$", server, re.M)
    assert COMPOSE["services"]["mlflow"]["image"].endswith(_pin("mlflow"))
    cluster = KUBE["raycluster.yaml"]
    assert cluster["spec"]["rayVersion"] == _pin("ray")
    pods = [cluster["spec"]["headGroupSpec"]] + cluster["spec"]["workerGroupSpecs"]
    for group in pods:
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def _mfd_commands() -> list[str]:
    """Every `mfd …` command line the deployment files and docs/deploy.md show or run."""
    out = []
    sources = [p.read_text() for p in DOCKER.rglob("*") if p.is_file()]
    sources.append((REPO / "docs" / "deploy.md").read_text())
    for job in (v for v in KUBE.values() if v["kind"] == "RayJob"):
        sources.append(job["spec"]["entrypoint"])
    for text in sources:
        text = re.sub(r"\\\n#?\s*", " ", text)
        out += [m.strip() for m in re.findall(r"(?:^|\s)(mfd [a-z][^\n#`]*)", text)]
    return sorted(set(out))


def test_every_mfd_command_in_the_files_exists_and_parses() -> None:
    commands = _mfd_commands()
    assert any(c.startswith("mfd sweep") for c in commands), commands
    for command in commands:
        args = shlex.split(command.replace('"$MFD_STORAGE"', "s3://b/p").replace(
            '"$MLFLOW_TRACKING_URI"', "http://h:5000"))  # fmt: skip
        assert args[1] in CLI.commands, command  # type: ignore[attr-defined]
        sub = CLI.commands[args[1]]  # type: ignore[attr-defined]
        sub.make_context(args[1], args[2:], resilient_parsing=False)
        for i, a in enumerate(args):
            if a in ("-c", "--config"):
                name = Path(args[i + 1]).name
                assert (REPO / "mfdiffuser" / "presets" / name).is_file(), command


def test_the_raycluster_fits_the_train_groups_of_its_rayjobs() -> None:
    cluster = KUBE["raycluster.yaml"]["spec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for g in groups:  # Ray's logical CPUs are the pod's CPU request
        container = g["template"]["spec"]["containers"][0]
        assert g["rayStartParams"]["num-cpus"] == container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"] == container["resources"]["limits"]
        gpus = container["resources"]["requests"].get("nvidia.com/gpu")
        assert g["rayStartParams"].get("num-gpus") == gpus
    cpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "cpu")
    per_pod = float(cpu["rayStartParams"]["num-cpus"])
    head = float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"])
    jobs = [v for v in KUBE.values() if v["kind"] == "RayJob"]
    assert {j["metadata"]["name"] for j in jobs} == {
        "mfdiffuser-paper-crowd-1d",
        "mfdiffuser-table-paper",
    }
    for job in jobs:
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "mfdiffuser"
        preset = re.search(r"-c (\S+)", job["spec"]["entrypoint"]).group(1)  # type: ignore[union-attr]
        sweep = load_sweep(REPO / "mfdiffuser" / "presets" / Path(preset).name)
        cfg = sweep.experiment_config(sweep.trials[0])
        train = cfg.train.num_workers * cfg.train.cpus_per_worker
        # one trial's Train group on one pod, its rollout actors too; its driver on the head
        assert train <= per_pod and cfg.eval.max_actors * cfg.eval.actor_cpus <= per_pod, preset
        assert cfg.train.cpus_per_worker <= per_pod and sweep.section.trial_cpus <= head


def _ray_cpus(address: str, env: dict[str, str]) -> float | None:
    probe = f"import ray; ray.init(address={address!r}); print(ray.cluster_resources().get('CPU'))"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_entrypoint_starts_a_head_on_loopback() -> None:
    """`mfd-node head` starts a Ray head a driver joins (1 CPU); `mfd-node worker` without
    RAY_HEAD_ADDRESS says what to set; any other command runs as given. (A worker joining over
    loopback is refused by `ray start` itself on one machine, so the worker role's start is
    not run here.)"""
    gcs, dash, client, agent, metrics, autoscaler = free_ports(6)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",
        RAY_NODE_IP="127.0.0.1",
        RAY_NUM_CPUS="1",
        RAY_USAGE_STATS_ENABLED="0",
        DASHBOARD_METRIC_PORT=str(metrics),
        AUTOSCALER_METRIC_PORT=str(autoscaler),
    )
    entry = str(DOCKER / "entrypoint.sh")
    missing = subprocess.run(
        ["bash", entry, "worker"],
        env={k: v for k, v in env.items() if k != "RAY_HEAD_ADDRESS"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode != 0 and "set RAY_HEAD_ADDRESS" in missing.stderr
    passthrough = subprocess.run(
        ["bash", entry, "mfd", "--version"], env=env, capture_output=True, text=True, timeout=60
    )
    assert passthrough.returncode == 0 and passthrough.stdout.strip(), passthrough.stderr
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="dk", dir="/tmp") as ray_tmp:
        try:
            head_env = {
                **env,
                "RAY_PORT": str(gcs),
                "RAY_DASHBOARD_PORT": str(dash),
                "RAY_TEMP_DIR": ray_tmp,
                "RAY_START_ARGS": f"--ray-client-server-port={client} "
                f"--dashboard-agent-listen-port={agent}",
            }
            started.append(_start([entry, "head"], head_env, Path(ray_tmp) / "head.log"))
            address = f"127.0.0.1:{gcs}"
            assert _wait(lambda: _ray_cpus(address, env) == 1.0, started[0], 180), _log(ray_tmp)
        finally:
            for proc in reversed(started):
                stop_session(proc.pid)
                proc.wait(timeout=30)
        for proc in started:
            assert not session_pids(proc.pid), "processes of the entrypoint's session are left"


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", *cmd], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _wait(check: Any, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if check():
            return True
        time.sleep(1)
    return False


def _log(ray_tmp: str) -> str:
    return "\n".join(p.read_text()[-2000:] for p in Path(ray_tmp).glob("*.log"))


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_mlflow_service_runs_its_compose_command_with_artifacts_on_s3(
    s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose file's own `mlflow server` command, run here: the backend store swapped for
    SQLite (no PostgreSQL on these machines), MinIO for moto's S3 server, port 5000 for a free
    one (the --allowed-hosts entries follow it); everything else verbatim. The service's health
    check passes, a run logs through it, and its artifact lands in the bucket."""
    from mlflow.tracking import MlflowClient
    from mlflow_server import MLFLOW, MlflowServer

    service = COMPOSE["services"]["mlflow"]
    (port,) = free_ports(1)
    prefix = "compose-mlflow"
    swap = {
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": s3_server.uri(prefix),
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    args, given = list(service["command"]), service["command"]
    for i, arg in enumerate(given[:-1]):
        if arg in swap:
            args[i + 1] = swap[arg]
        if arg == "--allowed-hosts":
            args[i + 1] = given[i + 1].replace(":5000", f":{port}")
    assert args[0] == "server" and "--serve-artifacts" in args
    assert service["build"]["dockerfile"].endswith("mlflow.Dockerfile")
    assert 'ENTRYPOINT ["mlflow"]' in (DOCKER / "mlflow.Dockerfile").read_text()
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)  # as the service sets it

    class ComposeMlflow(MlflowServer):
        def command(self) -> list[str]:
            return [str(MLFLOW), *args]

    server = ComposeMlflow(tmp_path / "server", port=port).start()
    try:
        probe = [
            a.replace("localhost:5000", f"localhost:{port}")
            for a in service["healthcheck"]["test"][1:]
        ]
        assert probe[0] == "python"
        health = subprocess.run([sys.executable, *probe[1:]], capture_output=True, timeout=30)
        assert health.returncode == 0, health.stderr
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.create_experiment("compose")
        run = client.create_run(experiment).info.run_id
        client.log_metric(run, "score", 0.25, step=3)
        client.log_text(run, "through the service", "notes/card.md")
        client.set_terminated(run)
        assert [(m.value, m.step) for m in client.get_metric_history(run, "score")] == [(0.25, 3)]
        keys = s3_server.keys(prefix)
        assert any(k.endswith(f"{run}/artifacts/notes/card.md") for k in keys), keys
    finally:
        server.stop(crash=True)
