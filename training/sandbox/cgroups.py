"""Per-job cgroups for the bubblewrap backend: memory, process and CPU limits, OOM detection,
and a reliable kill of everything a job started.

Two layouts are supported:
- cgroup v2 (unified, the default on Debian 12 / current distributions): one directory
  `<parent>/rapha.sandbox/job-<id>.<rand>` with memory.max, memory.swap.max=0, pids.max, cpu.max;
  OOM kills are counted in memory.events (`oom_kill`), cgroup.kill ends every process.
  <parent> is the worker's own cgroup when the worker may delegate controllers from it,
  else the root of the hierarchy (as root).
- cgroup v1 (legacy / hybrid, as on the machine this was developed on): one directory per
  controller hierarchy (memory, pids, cpu) below the worker's own group, with
  memory.limit_in_bytes (+ memory.memsw.limit_in_bytes), pids.max, cpu.cfs_quota_us;
  OOM kills are counted in memory.oom_control (`oom_kill`).
The job's process is moved in before bwrap is executed (`enter_fds` in the child, see
bwrap_backend), so everything the sandbox forks is inside from the start.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

BASE_NAME = "rapha.sandbox"
JOB_PREFIX = "job-"


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, mount root, fstype, super options) of cgroup mounts."""
    out = []
    try:
        lines = _read("/proc/self/mountinfo").splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        mountpoint = lf[4].replace("\\040", " ")
        out.append((mountpoint, lf[3], rf[0], set(rf[2].split(","))))
    return out


def _own_groups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    own = {}
    try:
        for line in _read("/proc/self/cgroup").splitlines():
            _, ctrls, path = line.split(":", 2)
            if ctrls == "":
                own[""] = path
            for c in ctrls.split(","):
                if c:
                    own[c] = path
    except OSError:
        pass
    return own


def _join(mountpoint: str, mount_root: str, path: str) -> str:
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root):]
    elif mount_root != "/":
        path = "/"
    return os.path.normpath(mountpoint + "/" + path.lstrip("/"))


@dataclass
class JobCgroup:
    version: int
    dirs: dict[str, str]  # controller ("unified" for v2) -> job directory
    procs_files: list[str] = field(default_factory=list)

    # -- in the child, between fork and exec: only os.open/os.write/os.close ----------------
    def open_enter_fds(self) -> list[int]:
        return [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in self.procs_files]

    @staticmethod
    def enter(fds: list[int]) -> None:
        for fd in fds:
            os.write(fd, b"0")  # "0" moves the writing process

    # -- in the worker ------------------------------------------------------------------------
    def pids(self) -> set[int]:
        found = set()
        for d in self.dirs.values():
            try:
                found.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except (OSError, ValueError):
                pass
        return found

    def oom_kills(self) -> int:
        d = self.dirs.get("unified") or self.dirs.get("memory")
        if not d:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(d, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self, timeout: float = 10.0) -> None:
        kill_file = os.path.join(self.dirs.get("unified", ""), "cgroup.kill")
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return
            if self.version == 2 and os.path.exists(kill_file):
                try:
                    _write(kill_file, "1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def remove(self) -> bool:
        """Kill what is left and remove the job's directories; True when all are gone."""
        self.kill_all()
        ok = True
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        ok = False
                        break
                    time.sleep(0.02)  # the last exits are still being accounted
            else:
                ok = False
        return ok


class CgroupManager:
    """Finds a writable place for job cgroups once; `create` makes one per job."""

    def __init__(self) -> None:
        self.version = 0
        self.bases: dict[str, str] = {}  # controller -> base directory (rapha.sandbox)
        self.problem = ""
        self._v2_cpu = False
        try:
            self._setup_v2() or self._setup_v1()
        except OSError as exc:  # pragma: no cover - depends on the host
            self.problem = f"cgroup setup failed: {exc}"
            self.version, self.bases = 0, {}

    @property
    def available(self) -> bool:
        return self.version in (1, 2)

    @property
    def has_cpu(self) -> bool:
        return "cpu" in self.bases or (self.version == 2 and self._v2_cpu)

    # -- v2 -------------------------------------------------------------------------------------
    def _setup_v2(self) -> bool:
        own = _own_groups().get("")
        unified = [(mp, root) for mp, root, fs, _ in _mounts() if fs == "cgroup2"]
        if own is None or not unified:
            return False
        mp, root = unified[0]
        need = {"memory", "pids"}
        candidates = [_join(mp, root, own), mp]
        for parent in dict.fromkeys(candidates):
            try:
                available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
            except OSError:
                continue
            if not need <= available:
                continue
            want = sorted(need | ({"cpu"} & available))
            try:
                enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
                if not set(want) <= enabled:
                    _write(os.path.join(parent, "cgroup.subtree_control"),
                           " ".join("+" + c for c in want if c not in enabled))
                base = os.path.join(parent, BASE_NAME)
                os.makedirs(base, exist_ok=True)
                base_enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
                if not set(want) <= base_enabled:
                    _write(os.path.join(base, "cgroup.subtree_control"),
                           " ".join("+" + c for c in want if c not in base_enabled))
            except OSError as exc:
                self.problem = f"cgroup v2 at {parent} not usable: {exc.strerror or exc}"
                continue
            self.version = 2
            self.bases = {"unified": base}
            self._v2_cpu = "cpu" in want
            return True
        if not self.problem:
            self.problem = "cgroup v2 has no memory and pids controllers available here"
        return False

    # -- v1 -------------------------------------------------------------------------------------
    def _setup_v1(self) -> bool:
        own = _own_groups()
        bases = {}
        for mp, root, fs, opts in _mounts():
            if fs != "cgroup":
                continue
            for ctrl in ("memory", "pids", "cpu"):
                if ctrl in opts and ctrl not in bases and ctrl in own:
                    bases[ctrl] = os.path.join(_join(mp, root, own[ctrl]), BASE_NAME)
        if not {"memory", "pids"} <= set(bases):
            self.problem = (self.problem + "; " if self.problem else "") + \
                "cgroup v1 memory and pids hierarchies are not both mounted"
            return False
        for ctrl, base in list(bases.items()):
            try:
                os.makedirs(base, exist_ok=True)
            except OSError as exc:
                if ctrl == "cpu":
                    del bases[ctrl]
                    continue
                self.problem = (self.problem + "; " if self.problem else "") + \
                    f"cannot create {base}: {exc.strerror or exc}"
                return False
        self.version = 1
        self.bases = bases
        self._v2_cpu = False
        return True

    # -- jobs -----------------------------------------------------------------------------------
    def create(self, safe_id: str, *, memory_bytes: int, pids_limit: int, cpus: float | None) -> JobCgroup:
        name = f"{JOB_PREFIX}{safe_id}.{secrets.token_hex(3)}"
        dirs: dict[str, str] = {}
        job = JobCgroup(self.version, dirs)
        try:
            for ctrl, base in self.bases.items():
                d = os.path.join(base, name)
                os.mkdir(d)
                dirs[ctrl] = d
            if self.version == 2:
                d = dirs["unified"]
                _write(os.path.join(d, "memory.max"), str(int(memory_bytes)))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), "0")
                _write(os.path.join(d, "pids.max"), str(int(pids_limit)))
                if cpus and self._v2_cpu:
                    _write(os.path.join(d, "cpu.max"), f"{int(cpus * 100000)} 100000")
                job.procs_files = [os.path.join(d, "cgroup.procs")]
            else:
                m = dirs["memory"]
                _write(os.path.join(m, "memory.limit_in_bytes"), str(int(memory_bytes)))
                memsw = os.path.join(m, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _write(memsw, str(int(memory_bytes)))
                _write(os.path.join(dirs["pids"], "pids.max"), str(int(pids_limit)))
                if cpus and "cpu" in dirs:
                    _write(os.path.join(dirs["cpu"], "cpu.cfs_period_us"), "100000")
                    _write(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"), str(int(cpus * 100000)))
                job.procs_files = [os.path.join(d, "cgroup.procs") for d in dirs.values()]
        except BaseException:
            job.remove()
            raise
        return job

    def leftovers(self) -> dict[str, JobCgroup]:
        """Job cgroups present now, by directory name (job-<safe id>.<rand>)."""
        found: dict[str, dict[str, str]] = {}
        for ctrl, base in self.bases.items():
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for n in names:
                if n.startswith(JOB_PREFIX) and os.path.isdir(os.path.join(base, n)):
                    found.setdefault(n, {})[ctrl] = os.path.join(base, n)
        return {n: JobCgroup(self.version, dirs) for n, dirs in found.items()}

    @staticmethod
    def safe_id_of(name: str) -> str:
        return name[len(JOB_PREFIX):].rsplit(".", 1)[0]
