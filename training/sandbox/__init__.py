"""Sandbox backends that run one job with no network, read-only inputs and hard limits.

Django-free. The GPU worker's Celery task does:

    from training.sandbox import SandboxSpec, get_backend, reap_orphans, stage_runtime_code
    code = stage_runtime_code(job_dir)                    # -> job_dir/code, mount it at /code
    backend = get_backend("auto")                         # "auto" | "docker" | "bubblewrap"
    result = backend.run(SandboxSpec(...), poll=callback) # callback() ~1/s, True cancels
    result.status in {"succeeded", "failed", "timed_out", "oom", "cancelled"}

and `reap_orphans(known_running_job_ids)` when a worker starts. See docs/sandbox.md.
"""

from __future__ import annotations

import os

from .bwrap_backend import BubblewrapBackend, reap_cgroups
from .docker_backend import DEFAULT_IMAGE, DockerBackend, reap_containers
from .spec import (LABEL, SANDBOX_GID, SANDBOX_UID, STATUSES, SandboxError, SandboxResult,
                   SandboxSpec, SandboxUnavailable)
from .staging import stage_runtime_code

__all__ = [
    "BubblewrapBackend", "DEFAULT_IMAGE", "DockerBackend", "LABEL", "SANDBOX_GID", "SANDBOX_UID",
    "STATUSES", "SandboxError", "SandboxResult", "SandboxSpec", "SandboxUnavailable", "get_backend",
    "grant_sandbox_access", "reap_orphans", "stage_runtime_code",
]

KINDS = ("auto", "docker", "bubblewrap")

INSTALL_HINT = (
    "install one: apt-get install -y docker.io, then scripts/start_dockerd.sh and "
    "scripts/build_sandbox_image.sh (production); or apt-get install -y bubblewrap")


def get_backend(kind: str = "auto", *, image: str = DEFAULT_IMAGE, docker_client=None):
    """The backend to run jobs with.

    "auto": docker when an engine answers and `image` exists in it, else bubblewrap when it
    works here; neither -> SandboxUnavailable saying why each failed and how to install one.
    "docker" / "bubblewrap": that one or SandboxUnavailable.
    """
    if kind == "docker":
        return DockerBackend(image, client=docker_client)
    if kind == "bubblewrap":
        return BubblewrapBackend()
    if kind != "auto":
        raise ValueError(f"unknown sandbox backend {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        return DockerBackend(image, client=docker_client)
    except SandboxUnavailable as docker_exc:
        try:
            return BubblewrapBackend()
        except SandboxUnavailable as bwrap_exc:
            raise SandboxUnavailable(
                f"no sandbox is available on this worker (docker: {docker_exc}; bubblewrap: {bwrap_exc}); "
                f"{INSTALL_HINT}") from None


def reap_orphans(known_running_job_ids=(), *, job_id_prefix: str = "", docker_client=None) -> list[str]:
    """Kill and remove sandboxes left over from a worker that died: labelled docker containers
    and bubblewrap job cgroups whose job id is not in known_running_job_ids (pass every job the
    database says is running, on any worker: workers on one machine share the engine and the
    cgroups). job_id_prefix limits reaping to job ids starting with it (tests, or several
    deployments on one machine). Returns what was removed, one line each. Backends that are
    not available here are skipped."""
    reaped: list[str] = []
    client = docker_client
    if client is None:
        try:
            import docker  # noqa: PLC0415

            client = docker.from_env(timeout=60)
            client.ping()
        except Exception:  # noqa: BLE001 - no engine here: nothing of docker's to reap
            client = None
    if client is not None:
        reaped += reap_containers(client, known_running_job_ids, job_id_prefix=job_id_prefix)
    reaped += reap_cgroups(known_running_job_ids, job_id_prefix=job_id_prefix)
    return reaped


def grant_sandbox_access(path: str | os.PathLike, *, gid: int = SANDBOX_GID) -> None:
    """Make a staged folder readable by the sandbox user without making it world-readable:
    group `gid` (nogroup, the sandbox's group) with g+rX, recursively. Needs root (chown);
    a non-root worker runs its sandboxes as itself and needs nothing."""
    if os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, -1, gid)
        os.chmod(dirpath, (os.stat(dirpath).st_mode & 0o7777) | 0o050)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            os.chown(p, -1, gid)
            os.chmod(p, (os.stat(p).st_mode & 0o7777) | 0o040)
