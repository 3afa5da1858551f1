"""The docker backend (production): one locked-down, labelled, throw-away container per job.

`containers.create` (never an implicit pull) on the image pinned by id, with no network, a
read-only root, a size-capped tmpfs /tmp, all capabilities dropped, no-new-privileges, a
non-root user, pids/memory(+swap)/CPU limits, no core dumps, a capped json-file log, and GPU
device requests when asked. The worker polls with short waits (calling poll() about every
second), streams the log into a capped file, kills on timeout or cancel, and always removes
the container.
"""

from __future__ import annotations

import os
import threading
import time

from .spec import (LABEL, OUT_DIR, SANDBOX_GID, SANDBOX_PYTHON, SANDBOX_UID, TMP_DIR, CappedLog,
                   MiB, SandboxError, SandboxResult, SandboxSpec, SandboxUnavailable,
                   check_mount_sources, check_python_abi, describe_exit, python_binds, safe_name,
                   sandbox_command, sandbox_env, unreadable_paths)

DEFAULT_IMAGE = "rapha-sandbox:bookworm-py311-1"  # built by scripts/build_sandbox_image.sh
KIND_LABEL = "rapha.sandbox"


def _docker():
    try:
        import docker  # noqa: PLC0415 - optional at import time of the package
    except ImportError:  # pragma: no cover - docker is in requirements
        raise SandboxUnavailable("the docker Python package is missing; pip install docker") from None
    return docker


class DockerBackend:
    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, *, client=None, user: str | None = None,
                 base_url: str | None = None):
        docker = _docker()
        self._errors = docker.errors
        try:
            self.client = client or (docker.DockerClient(base_url=base_url, timeout=60) if base_url
                                     else docker.from_env(timeout=60))
            self.client.ping()
        except Exception as exc:  # DockerException, requests errors, FileNotFoundError on the socket
            raise SandboxUnavailable(
                f"no Docker engine answers ({exc.__class__.__name__}: {str(exc)[:200]}); install one with "
                f"apt-get install -y docker.io and start it (scripts/start_dockerd.sh)") from None
        try:
            img = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(
                f"the sandbox image {image} is not in the Docker engine; build it with "
                f"scripts/build_sandbox_image.sh") from None
        self.image_name = image
        self.image_id = img.id  # every container is pinned to this id
        labels = img.labels or {}
        # "bind" (scripts/build_sandbox_image.sh): Debian's python3 in the image, the worker's
        # site-packages bound read-only. "image" (docker/Dockerfile): the image brings its own
        # interpreter and packages (CUDA torch), found through the image's PATH.
        self.python_env = labels.get("rapha.python-env", "bind")
        if self.python_env not in ("bind", "image"):
            raise SandboxUnavailable(f"image {image} has an unknown rapha.python-env label {self.python_env!r}")
        self.path = None
        if self.python_env == "bind":
            check_python_abi()
            py = labels.get("rapha.python")
            if py and py != "3.11":
                raise SandboxUnavailable(f"image {image} has Python {py}; the worker's packages need 3.11")
        else:
            for item in (img.attrs.get("Config") or {}).get("Env") or []:
                if item.startswith("PATH="):
                    self.path = item[5:]
        # A non-root worker runs containers as itself (so staged files and /out just work);
        # a root worker as nobody:nogroup.
        if user is None:
            user = (f"{SANDBOX_UID}:{SANDBOX_GID}" if os.geteuid() == 0
                    else f"{os.getuid()}:{os.getgid()}")
        self.user = user

    # ------------------------------------------------------------------------------------------
    def _prepare_dirs(self, spec: SandboxSpec) -> None:
        uid, _, gid = self.user.partition(":")
        uid, gid = int(uid), int(gid or uid)
        out = spec.out_dir
        if os.geteuid() == 0:
            os.chown(out, uid, gid)
            os.chmod(out, 0o700)
        for host, target, read_only in spec.mounts:
            bad = unreadable_paths(host, uid, gid)
            if bad:
                raise SandboxError(
                    f"{bad[0]} (mounted at {target}) is not readable by the sandbox user {self.user}; "
                    f"stage it readable by that uid or gid (see training.sandbox.grant_sandbox_access)")

    def _create_kwargs(self, spec: SandboxSpec) -> dict:
        docker = _docker()
        types = docker.types
        bind_python = self.python_env == "bind"
        mounts = [types.Mount(target, host, type="bind", read_only=True)
                  for host, target in (python_binds() if bind_python else [])]
        mounts += [types.Mount(target, host, type="bind", read_only=ro) for host, target, ro in spec.mounts]
        mounts.append(types.Mount(OUT_DIR, spec.out_dir, type="bind", read_only=False))
        kwargs = dict(
            image=self.image_id,
            command=sandbox_command(spec.command, SANDBOX_PYTHON if bind_python else None),
            name=f"rapha-{safe_name(spec.job_id)}-{os.urandom(3).hex()}",
            labels={LABEL: spec.job_id, KIND_LABEL: "1", "rapha.image": self.image_name},
            user=self.user,
            environment=sandbox_env(spec, bind_python=bind_python, path=self.path),
            working_dir=TMP_DIR,
            hostname="sandbox",
            network_mode="none",
            read_only=True,
            tmpfs={TMP_DIR: f"rw,nosuid,nodev,size={int(spec.tmp_bytes)},mode=1777"},
            mounts=mounts,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=int(spec.pids_limit),
            mem_limit=int(spec.memory_bytes),
            memswap_limit=int(spec.memory_bytes),
            oom_score_adj=500,
            ipc_mode="private",
            shm_size=64 * MiB,
            init=True,  # a real pid 1 (docker-init) reaps zombies and forwards signals
            ulimits=[types.Ulimit(name="core", soft=0, hard=0)],
            log_config=types.LogConfig(type="json-file",
                                       config={"max-size": str(max(2 * spec.log_max_bytes, MiB)), "max-file": "1"}),
            stdin_open=False,
            tty=False,
            detach=True,
        )
        if spec.cpus:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.gpus == "all":
            kwargs["device_requests"] = [types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        elif spec.gpus:
            kwargs["device_requests"] = [types.DeviceRequest(device_ids=list(spec.gpus), capabilities=[["gpu"]])]
        return kwargs

    # ------------------------------------------------------------------------------------------
    def run(self, spec: SandboxSpec, poll=None) -> SandboxResult:
        """Run spec to its end; the container is gone when this returns or raises."""
        import requests  # noqa: PLC0415 - a dependency of docker

        check_mount_sources(spec)
        self._prepare_dirs(spec)
        kwargs = self._create_kwargs(spec)
        start = time.monotonic()
        container = pump = None
        status = None
        exit_code = None
        oom = False
        log = CappedLog(spec.log_path, spec.log_max_bytes)
        try:
            try:
                container = self.client.containers.create(**kwargs)
                # Attached before start, as `docker run` does: the whole output, whatever the
                # engine's own (capped, rotating) json-file log keeps.
                output = self._attach(container)
                container.start()
            except self._errors.APIError as exc:
                hint = (" (GPU requested: is the NVIDIA container toolkit installed?)"
                        if spec.gpus is not None else "")
                raise SandboxError(f"docker could not start the sandbox: {exc.explanation or exc}{hint}") from exc
            pump = threading.Thread(target=_pump_logs, args=(output, log), daemon=True,
                                    name=f"sandbox-log-{spec.safe_id}")
            pump.start()
            while True:
                remaining = spec.wall_clock_seconds - (time.monotonic() - start)
                if remaining <= 0:
                    status = "timed_out"
                    break
                try:
                    exit_code = container.wait(timeout=max(0.05, min(1.0, remaining)))["StatusCode"]
                    break
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    pass  # still running (docker reports a wait timeout as either)
                container.reload()  # raises when the engine is gone
                if container.status in ("exited", "dead"):
                    exit_code = container.attrs["State"].get("ExitCode")
                    break
                if time.monotonic() - start >= spec.wall_clock_seconds:
                    status = "timed_out"
                    break
                if poll is not None and poll():
                    status = "cancelled"
                    break
        finally:
            try:
                if container is not None:
                    oom = self._finish(container, pump)
            finally:
                log.close()
        seconds = round(time.monotonic() - start, 3)
        if status == "timed_out":
            return self._result("timed_out", None, f"wall-clock limit of {spec.wall_clock_seconds:g} s "
                                "exceeded; the sandbox was killed", seconds)
        if status == "cancelled":
            return self._result("cancelled", None, "cancelled; the sandbox was killed", seconds)
        if oom:
            return self._result("oom", exit_code, f"memory limit of {spec.memory_bytes // MiB} MiB exceeded; "
                                "the job was killed", seconds)
        if exit_code == 0:
            return self._result("succeeded", 0, "exited with code 0", seconds)
        return self._result("failed", exit_code, describe_exit(exit_code), seconds)

    def _attach(self, container):
        """A stream of the container's stdout+stderr chunks, from its first byte to its exit."""
        output = container.attach(stdout=True, stderr=True, stream=True, logs=True)
        # The SDK leaves the client's read timeout (60 s) on an attach stream, which would end it
        # during a quiet minute of a long job; it disables it itself for `logs(follow=True)`.
        # Same call here (private API of docker-py, stable since 3.x; harmless if it changes).
        try:
            api = self.client.api
            api._disable_socket_timeout(api._get_raw_response_socket(output._response))
        except Exception:  # noqa: BLE001
            pass
        return output

    def _result(self, status, exit_code, reason, seconds) -> SandboxResult:
        return SandboxResult(status, exit_code, reason, seconds, self.name, self.image_id)

    def _finish(self, container, pump) -> bool:
        """Kill, read the OOM state (returned), let the log stream end, remove; each step
        survives the others failing, and only a failed removal raises."""
        oom = False
        errors = self._errors
        try:
            container.kill()
        except errors.APIError:
            pass  # already stopped (409) or gone (404)
        except Exception:  # noqa: BLE001 - engine trouble; removal below still tries
            pass
        try:
            container.wait(timeout=30)
        except Exception:  # noqa: BLE001
            pass
        try:
            container.reload()
            oom = bool(container.attrs["State"].get("OOMKilled"))
        except Exception:  # noqa: BLE001
            pass
        if pump is not None:
            pump.join(timeout=10)  # the attach stream ends once the container has stopped
        last = None
        for _ in range(3):
            try:
                container.remove(force=True, v=True)
                return oom
            except errors.NotFound:
                return oom
            except Exception as exc:  # noqa: BLE001
                last = exc
                time.sleep(0.5)
        raise SandboxError(f"could not remove container {container.name}: {last}")

    # ------------------------------------------------------------------------------------------
    def list_job_ids(self) -> list[str]:
        """Job ids of labelled sandbox containers that exist now (running or not)."""
        found = self.client.containers.list(all=True, filters={"label": LABEL})
        return sorted({c.labels.get(LABEL, "") for c in found})

    def reap_orphans(self, known_running_job_ids=(), *, job_id_prefix: str = "") -> list[str]:
        return reap_containers(self.client, known_running_job_ids, job_id_prefix=job_id_prefix)


def _pump_logs(output, log: CappedLog) -> None:
    """Copy the container's stdout+stderr into the capped log while it runs (staff can tail it)."""
    try:
        for chunk in output:
            log.write(chunk)
    except Exception:  # noqa: BLE001 - engine gone or container removed: the log ends here
        pass
    finally:
        try:
            output.close()
        except Exception:  # noqa: BLE001
            pass


def reap_containers(client, known_running_job_ids=(), *, job_id_prefix: str = "") -> list[str]:
    """Remove (force) every labelled sandbox container whose job id is not known to be running
    (only those whose job id starts with job_id_prefix)."""
    docker = _docker()
    keep = set(known_running_job_ids)
    reaped = []
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        job_id = c.labels.get(LABEL, "")
        if job_id in keep or not job_id.startswith(job_id_prefix):
            continue
        try:
            c.remove(force=True, v=True)
            reaped.append(f"docker container {c.name} (job {c.labels.get(LABEL)})")
        except docker.errors.NotFound:
            pass
    return reaped
