"""What a sandbox runs (`SandboxSpec`), what comes back (`SandboxResult`), and what both backends share.

Django-free: the Celery task builds a spec from the job row and settings; nothing here reads
settings, the database or the environment of the worker beyond its own Python installation.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MiB = 1024 * 1024
GiB = 1024 * MiB

LABEL = "rapha.job"  # docker label / cgroup name carrying the job id
STATUSES = ("succeeded", "failed", "timed_out", "oom", "cancelled")

# Inside every sandbox, both backends:
SANDBOX_PYTHON = "/usr/bin/python3"  # Debian's CPython 3.11 (image's own; the host's /usr for bwrap)
SITE_PACKAGES = "/opt/rapha/site-packages"  # the worker venv's site-packages, read-only
PLAT_SITE_PACKAGES = "/opt/rapha/site-packages-plat"  # only when platlib != purelib
BOOT_DIR = "/opt/rapha/boot"  # sitecustomize.py: processes .pth files of SITE_PACKAGES
CODE_DIR = "/code"  # the per-job copy of training/runtime (see stage_runtime_code)
OUT_DIR = "/out"
TMP_DIR = "/tmp"
SANDBOX_UID = 65534
SANDBOX_GID = 65534

# Container paths a job mount may not shadow (the sandbox's own plumbing).
_RESERVED = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys",
             "/tmp", "/out", "/opt/rapha", "/run", "/var")
_PROXY_VARS = {"http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy", "socks_proxy"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_BOOT_HOST_DIR = Path(__file__).resolve().parent / "_boot"
REPO_ROOT = Path(__file__).resolve().parents[2]


class SandboxError(RuntimeError):
    """A job could not be run as asked (bad spec, engine error); the message says why."""


class SandboxUnavailable(SandboxError):
    """No usable sandbox backend on this worker; the message says how to install one."""


@dataclass
class SandboxSpec:
    job_id: str
    command: list[str]
    out_dir: str | os.PathLike
    mounts: list[tuple[str | os.PathLike, str, bool]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    wall_clock_seconds: float = 3600
    memory_bytes: int = 8 * GiB
    pids_limit: int = 256
    cpus: float | None = None
    gpus: None | str | list[int | str] = None
    log_path: str | os.PathLike | None = None  # stdout+stderr, hospital staff only
    log_max_bytes: int = 8 * MiB  # head and tail kept, middle dropped with a marker
    tmp_bytes: int = 1 * GiB  # size cap of the /tmp tmpfs (counts against memory too)

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not self.job_id.strip():
            raise ValueError("job_id must be a non-empty string")
        if (not isinstance(self.command, (list, tuple)) or not self.command
                or not all(isinstance(a, str) for a in self.command)):
            raise ValueError("command must be a non-empty list of strings")
        self.command = list(self.command)
        if self.wall_clock_seconds <= 0:
            raise ValueError("wall_clock_seconds must be positive")
        if int(self.memory_bytes) < 32 * MiB:
            raise ValueError("memory_bytes must be at least 32 MiB")
        if int(self.pids_limit) < 8:
            raise ValueError("pids_limit must be at least 8")
        if self.cpus is not None and self.cpus <= 0:
            raise ValueError("cpus must be positive or None")
        if self.log_max_bytes < 1024:
            raise ValueError("log_max_bytes must be at least 1 KiB")
        if self.tmp_bytes < MiB:
            raise ValueError("tmp_bytes must be at least 1 MiB")
        if self.gpus is not None and self.gpus != "all":
            if isinstance(self.gpus, (str, bytes)) or not all(
                    str(g).isdigit() or re.fullmatch(r"GPU-[0-9a-fA-F-]+", str(g)) for g in self.gpus):
                raise ValueError('gpus must be None, "all" or a list of device indexes/UUIDs')
            self.gpus = [str(g) for g in self.gpus]
        self.out_dir = os.path.abspath(self.out_dir)
        mounts, seen = [], set()
        for m in self.mounts:
            try:
                host, target, read_only = m
            except (TypeError, ValueError):
                raise ValueError(f"mount {m!r} must be (host_path, container_path, read_only)") from None
            target_p = PurePosixPath(target)
            if not target_p.is_absolute() or ".." in target_p.parts or str(target_p) != target:
                raise ValueError(f"container path {target!r} must be a normalised absolute path")
            for reserved in _RESERVED:
                if (target == reserved or (reserved != "/" and target.startswith(reserved + "/"))
                        or reserved.startswith(target + "/")):
                    raise ValueError(f"container path {target!r} is reserved by the sandbox "
                                     f"(or would cover {reserved})")
            if target in seen:
                raise ValueError(f"container path {target!r} is mounted twice")
            seen.add(target)
            mounts.append((os.path.abspath(host), target, bool(read_only)))
        self.mounts = mounts
        for key, value in self.env.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"environment variable name {key!r} is invalid")
            if key.lower() in _PROXY_VARS:
                raise ValueError(f"{key} may not be set: sandboxes have no network and no proxy")
            if not isinstance(value, str):
                raise ValueError(f"environment variable {key} must be a string")

    @property
    def safe_id(self) -> str:
        return safe_name(self.job_id)


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    exit_code: int | None
    reason: str  # a short human sentence
    seconds: float
    backend: str = ""
    image_id: str | None = None  # docker: the image the container ran (pinned id)


def safe_name(job_id: str) -> str:
    """The job id as it may appear in a container or cgroup name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)[:64].lstrip(".-") or "job"


# ---------------------------------------------------------------------------------------------
# Python inside the sandbox

def python_paths() -> tuple[str, str | None]:
    """Host site-packages of the worker's virtual environment: (purelib, platlib or None)."""
    paths = sysconfig.get_paths()
    pure = os.path.realpath(paths["purelib"])
    plat = os.path.realpath(paths["platlib"])
    return pure, (plat if plat != pure else None)


def python_binds() -> list[tuple[str, str]]:
    """(host, container) read-only binds that make the worker's packages importable inside."""
    pure, plat = python_paths()
    binds = [(pure, SITE_PACKAGES), (str(_BOOT_HOST_DIR), BOOT_DIR)]
    if plat:
        binds.append((plat, PLAT_SITE_PACKAGES))
    return binds


def sandbox_env(spec: SandboxSpec, *, bind_python: bool = True, path: str | None = None) -> dict[str, str]:
    """The whole environment of the sandboxed process: nothing is inherited from the worker.

    bind_python: the worker's site-packages are bound in (PYTHONPATH + the .pth hook);
    otherwise the image brings its own Python packages and only /code is added.
    """
    threads = str(max(1, int(spec.cpus))) if spec.cpus else None
    env = {
        "PATH": path or "/usr/local/bin:/usr/bin:/bin",
        "HOME": TMP_DIR,
        "TMPDIR": TMP_DIR,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONPATH": CODE_DIR,
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "HF_HOME": f"{TMP_DIR}/hf",
        "MPLCONFIGDIR": f"{TMP_DIR}/mpl",
        "RAPHA_SANDBOX": "1",
        "RAPHA_JOB_ID": spec.job_id,
    }
    if bind_python:
        _, plat = python_paths()
        site_dirs = [SITE_PACKAGES] + ([PLAT_SITE_PACKAGES] if plat else [])
        env["PYTHONPATH"] = ":".join([BOOT_DIR, CODE_DIR] + site_dirs)
        env["RAPHA_SITE_PACKAGES"] = ":".join(site_dirs)
    if threads:
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    # Idle OpenMP threads sleep instead of spinning: under a CPU quota (docker's nano_cpus) spinning
    # threads burn the quota and training ran at 0.14x the host's speed (bench/bench_training.py).
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if spec.gpus is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(spec.env)
    return env


def sandbox_command(command: list[str], interpreter: str | None = SANDBOX_PYTHON) -> list[str]:
    """`python`/`python3` means the sandbox interpreter (the debootstrap image has no `python`
    alias); interpreter None leaves it to the image's PATH."""
    if interpreter and command[0] in ("python", "python3", "python3.11"):
        return [interpreter] + command[1:]
    return list(command)


def check_python_abi() -> None:
    """The sandbox interpreter is CPython 3.11; the worker's packages must be built for it."""
    if sys.version_info[:2] != (3, 11) or sys.implementation.name != "cpython":
        raise SandboxUnavailable(
            f"the sandbox runs CPython 3.11 with the worker's site-packages, but the worker runs "
            f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}; "
            f"run the worker from a Python 3.11 virtual environment")


# ---------------------------------------------------------------------------------------------
# Checks shared by the backends

def check_mount_sources(spec: SandboxSpec) -> None:
    """Every host path exists, and none of them exposes the repository (settings, DB, secrets)."""
    repo = REPO_ROOT.resolve()
    for host, target, _ in spec.mounts:
        p = Path(host)
        if not p.exists():
            raise SandboxError(f"mount source {host} (for {target}) does not exist")
        real = p.resolve()
        if real == repo or real in repo.parents or real == Path("/"):
            raise SandboxError(
                f"mount source {host} would expose the repository {repo} inside the sandbox; "
                f"mount a staged copy instead (see stage_runtime_code)")
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real_out = out.resolve()
    if real_out == repo or real_out in repo.parents:
        raise SandboxError(f"out_dir {out} would expose the repository inside the sandbox")


def unreadable_paths(root: str, uid: int, gid: int, limit: int = 5000) -> list[str]:
    """Paths under root (root included) that uid:gid could not read (or traverse), by mode bits.

    Only the mounted tree is checked, not its host ancestors: the engine binds as root.
    """
    def ok(path: str, need_x: bool) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return True
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return bool(bits & 4) and (not need_x or bool(bits & 1))

    bad, seen = [], 0
    if not os.path.isdir(root):
        return [] if ok(root, False) else [root]
    if not ok(root, True):
        return [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            if not ok(os.path.join(dirpath, d), True):
                bad.append(os.path.join(dirpath, d))
        for f in filenames:
            if not ok(os.path.join(dirpath, f), False):
                bad.append(os.path.join(dirpath, f))
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in bad]
        seen += len(dirnames) + len(filenames)
        if bad or seen > limit:
            break
    return bad


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "ended without an exit status"
    if exit_code == 0:
        return "exited with code 0"
    if exit_code > 128 and exit_code - 128 < 65:
        return f"killed by {signal_name(exit_code - 128)} (exit code {exit_code})"
    if exit_code < 0:
        return f"killed by {signal_name(-exit_code)}"
    return f"exited with code {exit_code}"


# ---------------------------------------------------------------------------------------------
# Capped log file

class CappedLog:
    """Writes at most `limit` bytes: the first half as it comes, the last half kept in memory
    and appended on close after a marker saying how much was dropped in between."""

    def __init__(self, path: str | os.PathLike | None, limit: int):
        self.limit = limit
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.written = 0
        self.total = 0
        self.tail = bytearray()
        self.first = b""  # the first bytes, kept in memory (e.g. to recognise a bwrap setup error)
        self.fh = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "wb")
            os.chmod(path, 0o600)  # hospital staff only

    def write(self, data: bytes) -> None:
        if not data:
            return
        if len(self.first) < 256:
            self.first += data[: 256 - len(self.first)]
        self.total += len(data)
        if self.written < self.head_limit:
            take = data[: self.head_limit - self.written]
            if self.fh:
                self.fh.write(take)
            self.written += len(take)
            data = data[len(take):]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    def close(self) -> None:
        if self.fh is None:
            return
        dropped = self.total - self.written - len(self.tail)
        if dropped > 0:
            self.fh.write(f"\n[... {dropped} bytes of log dropped (log capped at {self.limit} bytes) ...]\n"
                          .encode())
        self.fh.write(bytes(self.tail))
        self.fh.close()
        self.fh = None

    @property
    def truncated(self) -> bool:
        return self.total > self.written + len(self.tail)
