"""cluster.yaml: valid for Ray's own cluster launcher, and it keeps what docs/cluster.md promises.

Offline and fast: Ray's schema (ray/autoscaler/ray-schema.json) with jsonschema, through the
same `prepare_config` + `validate_config` that `ray up` runs before it talks to the cloud.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    """The config as `ray up` sees it: defaults for the provider merged in, node types filled."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw))


def ray_schema() -> dict:
    import json

    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def worker_types(config: dict) -> dict:
    return {name: node for name, node in config["available_node_types"].items()
            if name != config["head_node_type"]}


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    commands = [cmd for key in keys for cmd in config.get(key) or []]
    for node in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node.get(key) or []
    return commands


# -- Ray's own validation ----------------------------------------------------------------------
def test_the_file_as_written_matches_rays_schema(raw):
    jsonschema.validate(raw, ray_schema())


def test_ray_up_would_accept_it(prepared):
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_the_schema_check_is_not_a_rubber_stamp(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["worker.gpu"]["min_wrokers"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    too_many = copy.deepcopy(raw)
    too_many["max_workers"] = 0
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(too_many))


# -- node types --------------------------------------------------------------------------------
def test_head_is_a_cpu_node(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0


def test_a_gpu_and_a_cpu_worker_type_with_min_and_max(raw, prepared):
    workers = worker_types(raw)
    gpu = [name for name, node in workers.items() if node["resources"].get("GPU", 0) >= 1]
    cpu = [name for name, node in workers.items()
           if node["resources"].get("GPU", 0) == 0 and node["resources"].get("CPU", 0) >= 1]
    assert gpu, "no worker type offers a GPU"
    assert cpu, "no CPU-only worker type"
    for name in gpu + cpu:
        node = workers[name]
        assert "min_workers" in node and "max_workers" in node, name
        assert 0 <= node["min_workers"] <= node["max_workers"], name
        assert node["node_config"].get("InstanceType"), name
    assert sum(n["min_workers"] for n in workers.values()) <= raw["max_workers"]
    assert max(n["max_workers"] for n in workers.values()) <= raw["max_workers"]
    assert set(worker_types(prepared)) == set(workers)


def test_every_node_type_uses_one_image(raw):
    images = {node["node_config"].get("ImageId") for node in raw["available_node_types"].values()}
    assert len(images) == 1 and None not in images


# -- setup -------------------------------------------------------------------------------------
def mount_of(config: dict, local: str) -> str:
    """The remote path whose local side is `local` (relative to the repository root)."""
    for remote, source in config["file_mounts"].items():
        if Path(source).expanduser() == Path(local) or (ROOT / source).resolve() == ROOT / local:
            return remote
    raise AssertionError(f"nothing in file_mounts copies {local!r}: {config['file_mounts']}")


def test_setup_commands_install_raydemucs_on_every_node(raw, prepared):
    source = mount_of(raw, ".")
    assert 'name = "raydemucs"' in (ROOT / "pyproject.toml").read_text()
    install = [cmd for cmd in raw["setup_commands"]
               if re.search(r"pip install\b.*" + re.escape(source) + r"(\b|\[|$)", cmd)]
    assert install, f"no setup command pip-installs the mounted source {source}"
    joined = "\n".join(raw["setup_commands"])
    assert "ffmpeg" not in joined  # audio needs no system package (PyAV, soundfile)
    assert re.search(r"pip install[^\n]*\btorch\b", joined), "torch is not installed"
    # The common setup reaches both the head and the workers (ray up merges it into both).
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any(cmd in prepared[key] for cmd in install), key
    for name, node in worker_types(raw).items():
        assert "worker_setup_commands" not in node, f"{name} would replace the common setup"


def test_cluster_ray_matches_the_local_ray(raw):
    import ray

    pins = re.findall(r"ray\[default\]==([\w.]+)", "\n".join(raw["setup_commands"]))
    assert pins == [ray.__version__], "the cluster must run the Ray that `ray up` runs"


def test_model_repo_is_mounted(raw):
    remote = mount_of(raw, "models")
    assert remote.startswith("~/") or remote.startswith("/")


def test_commands_are_valid_shell(raw):
    bash = shutil.which("bash")
    for cmd in all_commands(raw):
        # `ray up` runs each command as `... && (CMD)` in a login shell.
        result = subprocess.run([bash, "-n", "-c", f"true && ({cmd})"], capture_output=True,
                                text=True)
        assert result.returncode == 0, f"{cmd!r}: {result.stderr}"


# -- security: token auth on, dashboard local --------------------------------------------------
def test_token_auth_stays_on(raw):
    remotes = {str(Path(r)) for r in raw["file_mounts"]}
    assert "~/.ray/auth_token" in remotes or any(r.endswith("/.ray/auth_token") for r in remotes)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in raw[key] if "ray start" in cmd]
        assert starts, key
        for cmd in starts:
            before = cmd.split("ray start")[0]
            assert "RAY_AUTH_MODE=token" in before, f"{key}: ray start without RAY_AUTH_MODE=token"
    for cmd in all_commands(raw):
        assert not re.search(r"RAY_AUTH_MODE=(disabled|none|off)", cmd), cmd


def test_dashboard_only_on_localhost(raw):
    head = " ".join(raw["head_start_ray_commands"])
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head)
    for cmd in all_commands(raw):
        assert "0.0.0.0" not in cmd, cmd
    assert "0.0.0.0" not in CLUSTER_YAML.read_text().split("head_start_ray_commands")[1]
