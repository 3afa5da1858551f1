"""The bubblewrap backend: for a worker host without a Docker engine.

    bwrap --unshare-all --die-with-parent --new-session --uid 65534 --gid 65534 ...

Nothing of the host is visible but what is bound explicitly: /usr read-only (with /bin, /lib...
as the host's merged-/usr symlinks), the worker venv's site-packages and the start-up hook
read-only under /opt/rapha, the job's read-only mounts, /out read-write, a size-capped tmpfs
/tmp, a fresh /proc and a minimal /dev, and three generated files in /etc (passwd, group, hosts).
The root of the sandbox is remounted read-only. There is no `--ro-bind / /`: that would expose
the repository, its SQLite database and secrets.

Limits (bwrap sets none itself):
- memory, processes, CPU: a per-job cgroup (v2, or v1 where that is what the host has), entered
  before bwrap is executed, so everything the job forks is counted; see cgroups.py;
- without a usable cgroup (a non-root worker without delegation): RLIMIT_DATA for memory and
  RLIMIT_NPROC for processes (per host uid, so approximate); a root worker refuses to run
  without cgroups;
- wall clock and cancel: the poll loop kills bwrap's process group, then everything left in
  the cgroup; `--die-with-parent` kills the sandbox if the worker dies.
A root worker does not run bwrap as root: it enters the cgroup, then drops to uid/gid 65534
(no supplementary groups) and bwrap maps that to 65534 inside, so the sandbox is unprivileged
on the host too (a user namespace mapped onto host root would still pass checks that compare
the kernel uid with 0, e.g. sysctl permissions).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .cgroups import CgroupManager, JobCgroup
from .spec import (MiB, OUT_DIR, SANDBOX_GID, SANDBOX_PYTHON, SANDBOX_UID, TMP_DIR,
                   CappedLog, SandboxError, SandboxResult, SandboxSpec, SandboxUnavailable,
                   check_mount_sources, check_python_abi, describe_exit, python_binds,
                   safe_name, sandbox_command, sandbox_env)

_PASSWD = b"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nsandbox:x:65534:65534:sandbox:/tmp:/usr/sbin/nologin\n"
_GROUP = b"root:x:0:\nsandbox:x:65534:\n"
_HOSTS = b"127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n"
# Host Python package folders that would otherwise be importable inside (hidden by an empty tmpfs).
_MASK = ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3.11/dist-packages",
         "/usr/local/lib/python3.11/site-packages")

_ACCESS_CHECK = r"""
import json, os, sys
problems = []
for path, write, walk in json.loads(sys.argv[1]):
    isdir = os.path.isdir(path)
    mode = os.R_OK | (os.X_OK if isdir else 0) | (os.W_OK if write else 0)
    if not os.access(path, mode):
        parts, blocked = path.rstrip("/").split("/")[1:], None
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if not os.access(parent, os.X_OK):
                blocked = parent + " (a parent it cannot traverse)"; break
        problems.append(blocked or path); continue
    if isdir and walk:
        n = 0
        for dp, dns, fns in os.walk(path):
            for d in dns:
                if not os.access(os.path.join(dp, d), os.R_OK | os.X_OK): problems.append(os.path.join(dp, d))
            for f in fns:
                if not os.access(os.path.join(dp, f), os.R_OK): problems.append(os.path.join(dp, f))
            n += len(dns) + len(fns)
            if problems or n > 5000: break
    if problems: break
print(json.dumps(problems))
"""


class BubblewrapBackend:
    name = "bubblewrap"

    def __init__(self, *, bwrap: str = "bwrap", host_uid: int | None = None, host_gid: int | None = None):
        check_python_abi()
        path = shutil.which(bwrap)
        if not path:
            raise SandboxUnavailable("bubblewrap is not installed; install it with: apt-get install -y bubblewrap")
        self.bwrap = path
        if not os.access(SANDBOX_PYTHON, os.X_OK):
            raise SandboxUnavailable(
                f"the bubblewrap sandbox runs the host's {SANDBOX_PYTHON} (Debian python3 3.11) with the "
                f"worker's site-packages, and it is missing; install it with: apt-get install -y python3")
        try:
            usage = subprocess.run([path, "--help"], capture_output=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bubblewrap does not run: {exc}") from None
        # bwrap >= 0.8: no user namespaces inside the sandbox (less kernel surface).
        self._disable_userns = b"--disable-userns" in usage
        self.root = os.geteuid() == 0
        # A root worker drops to an unprivileged host uid before bwrap; others run as themselves.
        self.host_uid = host_uid if host_uid is not None else (SANDBOX_UID if self.root else os.getuid())
        self.host_gid = host_gid if host_gid is not None else (SANDBOX_GID if self.root else os.getgid())
        self.cgroups = CgroupManager()
        if not self.cgroups.available and self.root:
            raise SandboxUnavailable(
                "bubblewrap as root needs a writable cgroup (v2 with memory+pids, or v1 memory and "
                f"pids hierarchies) to enforce memory and process limits: {self.cgroups.problem}")
        self._probe()
        self._check_access(None)

    # ------------------------------------------------------------------------------------------
    def _probe(self) -> None:
        argv = self._base_argv(tmp_bytes=16 * MiB) + ["--", SANDBOX_PYTHON, "-I", "-S", "-c",
                                                      "import sys; print(sys.version_info[0], sys.version_info[1])"]
        fds = _data_fds()
        try:
            proc = subprocess.run(_fill_fds(argv, fds), capture_output=True, timeout=30, pass_fds=fds,
                                  preexec_fn=self._drop_privileges, cwd="/")
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bubblewrap does not start: {exc}") from None
        finally:
            _close_all(fds)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).decode(errors="replace").strip()[:300]
            raise SandboxUnavailable(
                f"bubblewrap cannot create a sandbox here (user namespaces disabled?): {msg}")
        if proc.stdout.split() != [b"3", b"11"]:
            raise SandboxUnavailable(
                f"{SANDBOX_PYTHON} is Python {proc.stdout.decode().strip()}, but the worker's packages are "
                f"built for 3.11")

    def _drop_privileges(self) -> None:
        if self.root and (self.host_uid, self.host_gid) != (0, 0):
            os.setgroups([])
            os.setresgid(self.host_gid, self.host_gid, self.host_gid)
            os.setresuid(self.host_uid, self.host_uid, self.host_uid)

    def _base_argv(self, *, tmp_bytes: int) -> list[str]:
        # The /etc files come from pipes made just before each start (_data_fds); their fd
        # numbers are filled in then (_fill_fds).
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--hostname", "sandbox",
                "--cap-drop", "ALL"]
        if self._disable_userns:
            argv.append("--disable-userns")
        argv += ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = f"/{top}"
            if os.path.islink(host):
                argv += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                argv += ["--ro-bind", host, host]
        for mask in _MASK:
            if os.path.isdir(mask):
                argv += ["--tmpfs", mask, "--remount-ro", mask]
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", str(int(tmp_bytes)), "--tmpfs", TMP_DIR,
                 "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
                 "--ro-bind-try", "/etc/localtime", "/etc/localtime",
                 "--perms", "0644", "--ro-bind-data", "{fd0}", "/etc/passwd",
                 "--perms", "0644", "--ro-bind-data", "{fd1}", "/etc/group",
                 "--perms", "0644", "--ro-bind-data", "{fd2}", "/etc/hosts"]
        return argv

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _binds(spec: SandboxSpec) -> list[tuple[str, str, bool]]:
        """(host, container, read_only): the interpreter's packages, the job's mounts (parents
        before children), /out."""
        binds = [(host, target, True) for host, target in python_binds()]
        binds += sorted(spec.mounts, key=lambda m: m[1].count("/"))
        binds.append((spec.out_dir, OUT_DIR, False))
        return binds

    def _argv(self, spec: SandboxSpec) -> list[str]:
        argv = self._base_argv(tmp_bytes=spec.tmp_bytes)
        # Host paths, opened by bwrap as the unprivileged host uid: their parents must be
        # traversable by it. (bwrap 0.8's --ro-bind-fd resolves the descriptor's path again,
        # so it does not lift that.)
        for host, target, read_only in self._binds(spec):
            argv += ["--ro-bind" if read_only else "--bind", host, target]
        if spec.gpus is not None:
            argv += self._gpu_argv(spec.gpus)
        argv += ["--remount-ro", "/", "--chdir", TMP_DIR, "--clearenv"]
        for key, value in sandbox_env(spec).items():
            argv += ["--setenv", key, value]
        return argv + ["--"] + sandbox_command(spec.command)

    @staticmethod
    def _gpu_argv(gpus) -> list[str]:
        argv = []
        for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"):
            argv += ["--dev-bind-try", node, node]
        if gpus == "all":
            ids = sorted(p[len("/dev/nvidia"):] for p in map(str, Path("/dev").glob("nvidia[0-9]*")))
        else:
            if not all(g.isdigit() for g in gpus):
                raise SandboxError("the bubblewrap backend takes GPU indexes, not UUIDs")
            ids = list(gpus)
        for i in ids:
            argv += ["--dev-bind", f"/dev/nvidia{i}", f"/dev/nvidia{i}"]
        return argv

    def _check_access(self, spec: SandboxSpec | None) -> None:
        """Mount sources, and their parents, must be readable by the unprivileged host uid
        bwrap runs as (spec None: the interpreter's binds, checked once when the backend is
        made). Checked as that uid, so the job fails here with the path, not inside bwrap."""
        if not self.root or self.host_uid == 0:
            return
        if spec is None:
            paths = [(h, False, False) for h, _ in python_binds()]
        else:
            out = Path(spec.out_dir)
            os.chown(out, self.host_uid, self.host_gid)
            os.chmod(out, 0o700)
            paths = [(h, not ro, ro) for h, _, ro in spec.mounts]
            if not paths:
                return
        proc = subprocess.run([SANDBOX_PYTHON, "-I", "-S", "-c", _ACCESS_CHECK, json.dumps(paths)],
                              capture_output=True, timeout=60, preexec_fn=self._drop_privileges, cwd="/")
        try:
            problems = json.loads(proc.stdout or b"null")
        except ValueError:
            problems = None
        if problems is None:
            raise SandboxError("could not check mount permissions: "
                               f"{proc.stderr.decode(errors='replace')[:300]}")
        if problems:
            exc = SandboxUnavailable if spec is None else SandboxError
            raise exc(
                f"{problems[0]} is not readable by the sandbox's host uid {self.host_uid}; stage job "
                f"folders readable by that uid or gid, below parents it can traverse (e.g. chgrp -R "
                f"{self.host_gid} + chmod -R g+rX, see training.sandbox.grant_sandbox_access)")

    # ------------------------------------------------------------------------------------------
    def run(self, spec: SandboxSpec, poll=None) -> SandboxResult:
        """Run spec to its end; the sandbox and its cgroup are gone when this returns or raises."""
        check_mount_sources(spec)
        self._check_access(spec)
        start = time.monotonic()
        cgroup: JobCgroup | None = None
        log = proc = reader = None
        status = None
        oom = 0
        fds: list[int] = []
        enter_fds: list[int] = []
        try:
            argv = self._argv(spec)
            if self.cgroups.available:
                cgroup = self.cgroups.create(spec.safe_id, memory_bytes=spec.memory_bytes,
                                             pids_limit=spec.pids_limit, cpus=spec.cpus)
                enter_fds = cgroup.open_enter_fds()
            log = CappedLog(spec.log_path, spec.log_max_bytes)
            fds = _data_fds()
            argv = _fill_fds(argv, fds)
            preexec = self._preexec(enter_fds, cgroup is None, int(spec.memory_bytes), int(spec.pids_limit))
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=preexec, cwd="/", pass_fds=tuple(fds))
            except OSError as exc:
                raise SandboxError(f"bubblewrap could not be started: {exc}") from exc
            _close_all(fds + enter_fds)
            fds, enter_fds = [], []
            reader = threading.Thread(target=_pump, args=(proc.stdout, log), daemon=True,
                                      name=f"sandbox-log-{spec.safe_id}")
            reader.start()
            while True:
                remaining = spec.wall_clock_seconds - (time.monotonic() - start)
                if remaining <= 0:
                    status = "timed_out"
                    break
                try:
                    proc.wait(timeout=min(1.0, remaining))
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - start >= spec.wall_clock_seconds:
                    status = "timed_out"
                    break
                if poll is not None and poll():
                    status = "cancelled"
                    break
        finally:
            _close_all(fds + enter_fds)
            if proc is not None:
                _kill(proc, cgroup)
            if reader is not None:
                reader.join(timeout=10)
            if log is not None:
                log.close()
            if cgroup is not None:
                oom = cgroup.oom_kills()
                cgroup.remove()
        seconds = round(time.monotonic() - start, 3)
        rc = proc.returncode
        if status == "timed_out":
            return SandboxResult("timed_out", None, f"wall-clock limit of {spec.wall_clock_seconds:g} s "
                                 "exceeded; the sandbox was killed", seconds, self.name)
        if status == "cancelled":
            return SandboxResult("cancelled", None, "cancelled; the sandbox was killed", seconds, self.name)
        if rc != 0 and oom:
            return SandboxResult("oom", rc, f"memory limit of {spec.memory_bytes // MiB} MiB exceeded; "
                                 "the job was killed", seconds, self.name)
        if rc == 0:
            return SandboxResult("succeeded", 0, "exited with code 0", seconds, self.name)
        if rc == 1 and log.first.startswith(b"bwrap: "):
            # bwrap's own message, before anything of the job ran (a job could imitate it, but
            # only to get this sentence: the reason never carries log text).
            return SandboxResult("failed", rc, f"the sandbox could not be set up (bwrap exit code {rc}); "
                                 "see the job log", seconds, self.name)
        return SandboxResult("failed", rc, describe_exit(rc), seconds, self.name)

    def _preexec(self, enter_fds: list[int], use_rlimits: bool, memory: int, pids: int):
        nproc = _count_processes(self.host_uid) + pids if use_rlimits else 0
        drop = self._drop_privileges

        def preexec():  # in the child between fork and exec: plain system calls only
            JobCgroup.enter(enter_fds)  # before dropping privileges: moving needs the opener's rights
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if use_rlimits:
                resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            try:
                fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
                os.write(fd, b"500")  # under host memory pressure, the sandbox goes first
                os.close(fd)
            except OSError:
                pass
            drop()

        return preexec

    # ------------------------------------------------------------------------------------------
    def list_job_ids(self) -> list[str]:
        """Job ids (as safe names) of sandboxes whose cgroup exists now."""
        return sorted({CgroupManager.safe_id_of(n) for n in self.cgroups.leftovers()})

    def reap_orphans(self, known_running_job_ids=(), *, job_id_prefix: str = "") -> list[str]:
        return reap_cgroups(known_running_job_ids, self.cgroups, job_id_prefix=job_id_prefix)


def reap_cgroups(known_running_job_ids=(), manager: CgroupManager | None = None, *,
                 job_id_prefix: str = "") -> list[str]:
    """Kill what is left in, and remove, job cgroups whose job id is not known to be running
    (only those whose job id starts with job_id_prefix)."""
    manager = manager or CgroupManager()
    if not manager.available:
        return []
    keep = {safe_name(j) for j in known_running_job_ids}
    prefix = safe_name(job_id_prefix) if job_id_prefix else ""
    reaped = []
    for name, group in manager.leftovers().items():
        sid = CgroupManager.safe_id_of(name)
        if sid in keep or not sid.startswith(prefix):
            continue
        group.remove()
        reaped.append(f"bubblewrap cgroup {name}")
    return reaped


def _data_fds() -> list[int]:
    """Read ends of pipes holding /etc/passwd, /etc/group and /etc/hosts for --ro-bind-data."""
    fds = []
    for data in (_PASSWD, _GROUP, _HOSTS):
        r, w = os.pipe()
        os.write(w, data)  # far below the pipe buffer: never blocks
        os.close(w)
        fds.append(r)
    return fds


def _fill_fds(argv: list[str], fds: list[int]) -> list[str]:
    names = {f"{{fd{i}}}": str(fd) for i, fd in enumerate(fds)}
    return [names.get(a, a) for a in argv]


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _pump(stream, log: CappedLog) -> None:
    fd = stream.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        log.write(chunk)
    stream.close()


def _kill(proc: subprocess.Popen, cgroup: JobCgroup | None) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if cgroup is not None:
        cgroup.kill_all()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
        proc.kill()
        proc.wait()


def _count_processes(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n

