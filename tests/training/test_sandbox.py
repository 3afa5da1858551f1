"""The sandbox backends, tested from inside real sandboxes (no mocks).

Every behavioural test runs once per backend. Each job runs a small `python -c` script through
`backend.run`, with the same interpreter, site-packages binding and /code staging as a real
training job, and reports what it saw as one JSON line in its log.

    .venv/bin/python -m pytest tests/training/test_sandbox.py -p no:django

A backend that is not available here is skipped with the reason (docker: engine or image
missing -> scripts/start_dockerd.sh, scripts/build_sandbox_image.sh; bubblewrap: apt-get
install bubblewrap).
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.sandbox import (  # noqa: E402
    LABEL,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    get_backend,
    reap_orphans,
    stage_runtime_code,
)

MiB = 1024 * 1024

BACKENDS = [
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    pytest.param("bubblewrap", marks=pytest.mark.bubblewrap, id="bubblewrap"),
]


# These tests are Django-free and run with `-p no:django`. The root conftest's autouse fixtures
# touch Django settings; a module fixture of the same name overrides them for this file only
# (and is simply unused where no root conftest defines them).
@pytest.fixture(autouse=True)
def _isolated_storage():
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    yield


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    try:
        return get_backend(request.param)
    except SandboxUnavailable as exc:
        pytest.skip(f"{request.param} sandbox unavailable here: {exc}")


@pytest.fixture(scope="module")
def workspace():
    """A world-traversable folder (pytest's tmp_path sits below a 0700 folder, which the
    unprivileged host uid of the bubblewrap sandbox could not traverse), like var/jobs/."""
    root = Path(tempfile.mkdtemp(prefix="rapha-sandbox-test-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Job:
    """One job folder: data/ and models/ (read-only), code/ (staged runtime), out/, log."""

    def __init__(self, root: Path):
        self.id = f"test-{uuid.uuid4().hex[:12]}"
        self.dir = root / self.id
        (self.dir / "data").mkdir(parents=True)
        (self.dir / "models").mkdir()
        for d in (self.dir, self.dir / "data", self.dir / "models"):
            os.chmod(d, 0o755)
        (self.dir / "data" / "train.jsonl").write_text('{"record": "r-1", "patient": "p-1", "text": "x"}\n')
        (self.dir / "models" / "config.json").write_text("{}")
        self.code = stage_runtime_code(self.dir)
        self.out = self.dir / "out"
        self.log = self.dir / "job.log"

    def spec(self, script: str, **overrides) -> SandboxSpec:
        kw = dict(
            job_id=self.id,
            command=["python", "-c", textwrap.dedent(script)],
            out_dir=self.out,
            mounts=[(str(self.dir / "data"), "/data", True), (str(self.dir / "models"), "/models", True),
                    (self.code, "/code", True)],
            wall_clock_seconds=60,
            memory_bytes=512 * MiB,
            pids_limit=64,
            cpus=1,
            log_path=self.log,
        )
        kw.update(overrides)
        return SandboxSpec(**kw)

    def run(self, backend, script: str, poll=None, **overrides):
        result = backend.run(self.spec(script, **overrides), poll=poll)
        return result, self.log.read_text(errors="replace") if self.log.exists() else ""


def report(log: str) -> dict:
    """The last line of the job's log that is a JSON object."""
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON report in the job log:\n{log[-3000:]}")


def assert_gone(backend, job_id: str) -> None:
    from training.sandbox.spec import safe_name

    assert safe_name(job_id) not in backend.list_job_ids() and job_id not in backend.list_job_ids()
    if backend.name == "docker":
        left = backend.client.containers.list(all=True, filters={"label": f"{LABEL}={job_id}"})
        assert left == []


# ---------------------------------------------------------------------------------------------
# Running

def test_run_zero_exit_succeeds_with_out_and_log(backend, workspace):
    job = Job(workspace)
    result, log = job.run(backend, """
        import json
        open("/out/result.txt", "w").write("from inside")
        print(json.dumps({"hello": open("/data/train.jsonl").read().count("patient")}))
    """)
    assert result.status == "succeeded", (result, log)
    assert result.exit_code == 0
    assert result.backend == backend.name
    assert report(log) == {"hello": 1}
    assert (job.out / "result.txt").read_text() == "from inside"
    assert_gone(backend, job.id)


def test_run_nonzero_exit_fails_with_code(backend, workspace):
    result, log = Job(workspace).run(backend, "import sys; sys.exit(7)")
    assert result.status == "failed", (result, log)
    assert result.exit_code == 7
    assert "7" in result.reason


def test_environment_offline_unprivileged_without_worker_secrets(backend, workspace, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@127.0.0.1/rapha")
    result, log = Job(workspace).run(backend, """
        import json, os
        print(json.dumps({"uid": os.getuid(), "env": dict(os.environ)}))
    """, env={"RAPHA_TEST_VALUE": "yes"})
    assert result.status == "succeeded", (result, log)
    seen = report(log)
    env = seen["env"]
    assert seen["uid"] != 0
    assert env["HF_HUB_OFFLINE"] == "1" and env["HOME"] == "/tmp"
    assert env["RAPHA_TEST_VALUE"] == "yes"
    assert not {k for k in env if k.lower().endswith("_proxy")}
    assert "DATABASE_URL" not in env


def test_log_over_cap_is_truncated(backend, workspace):
    job = Job(workspace)
    result, log = job.run(backend, """
        import sys
        sys.stdout.write("head-marker\\n" + "x" * 99 + "\\n")
        for _ in range(3000):
            sys.stdout.write("y" * 999 + "\\n")
        sys.stdout.write("tail-marker\\n")
    """, log_max_bytes=64 * 1024)
    assert result.status == "succeeded", result
    assert job.log.stat().st_size < 64 * 1024 + 200
    assert log.startswith("head-marker") and log.rstrip().endswith("tail-marker")
    assert "bytes of log dropped" in log


# ---------------------------------------------------------------------------------------------
# Network

def test_network_only_loopback_interface(backend, workspace):
    result, log = Job(workspace).run(backend, """
        import json
        lines = open("/proc/net/dev").read().splitlines()[2:]
        print(json.dumps({"interfaces": sorted(l.split(":")[0].strip() for l in lines)}))
    """)
    assert result.status == "succeeded", (result, log)
    assert report(log)["interfaces"] == ["lo"]


def test_network_tcp_to_postgres_and_redis_ports_fails(backend, workspace):
    # Only loopback addresses: inside the sandbox 127.0.0.1 is the sandbox's own loopback,
    # where nothing listens, while the host's PostgreSQL and Redis listen on the host's.
    result, log = Job(workspace).run(backend, """
        import json, socket
        outcome = {}
        for port in (5432, 6379):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=3).close()
                outcome[port] = "connected"
            except OSError as exc:
                outcome[port] = exc.__class__.__name__
        print(json.dumps(outcome))
    """)
    assert result.status == "succeeded", (result, log)
    assert report(log) == {"5432": "ConnectionRefusedError", "6379": "ConnectionRefusedError"}


# ---------------------------------------------------------------------------------------------
# Filesystem

def test_filesystem_writes_outside_out_and_tmp_fail(backend, workspace):
    result, log = Job(workspace).run(backend, """
        import json
        outcome = {}
        for path in ["/data/new", "/models/new", "/code/new", "/new", "/usr/new", "/etc/new",
                     "/opt/rapha/site-packages/new", "/out/new", "/tmp/new"]:
            try:
                with open(path, "w") as fh:
                    fh.write("x")
                outcome[path] = "written"
            except OSError as exc:
                outcome[path] = exc.errno
        print(json.dumps(outcome))
    """)
    assert result.status == "succeeded", (result, log)
    outcome = report(log)
    assert outcome.pop("/out/new") == "written"
    assert outcome.pop("/tmp/new") == "written"
    assert all(v in (errno.EROFS, errno.EACCES, errno.EPERM) for v in outcome.values()), outcome


def test_filesystem_sibling_job_and_repository_not_visible(backend, workspace):
    sibling = workspace / f"other-job-{uuid.uuid4().hex[:8]}"
    sibling.mkdir()
    os.chmod(sibling, 0o755)
    marker = f"secret-of-other-job-{uuid.uuid4().hex[:8]}.txt"
    (sibling / marker).write_text("patient data of another job")
    result, log = Job(workspace).run(backend, f"""
        import json, os
        found = []
        for top in sorted(os.listdir("/")):
            if top in ("proc", "sys", "dev", "usr") or os.path.islink("/" + top):
                continue
            for dirpath, dirnames, filenames in os.walk("/" + top):
                dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != "/opt/rapha/site-packages"]
                if ({marker!r} in filenames or "db.sqlite3" in filenames
                        or (dirpath.endswith("/portal") and "settings.py" in filenames)):
                    found.append(dirpath)
        print(json.dumps({{
            "found": found,
            "sibling": os.path.exists({str(sibling)!r}),
            "repo": os.path.exists({str(REPO)!r}),
            "repo_var": os.path.exists({str(REPO / "var")!r}),
            "code": sorted(os.listdir("/code/training")),
        }}))
    """)
    assert result.status == "succeeded", (result, log)
    seen = report(log)
    assert seen == {"found": [], "sibling": False, "repo": False, "repo_var": False,
                    "code": ["__init__.py", "runtime"]}


def test_run_mount_exposing_repository_refused(backend, workspace):
    job = Job(workspace)
    spec = job.spec("print('never')", mounts=[(str(REPO), "/repo", True)])
    with pytest.raises(SandboxError, match="repository"):
        backend.run(spec)
    assert not job.log.exists()
    assert_gone(backend, job.id)


def test_run_missing_mount_source_refused(backend, workspace):
    job = Job(workspace)
    with pytest.raises(SandboxError, match="does not exist"):
        backend.run(job.spec("print('never')", mounts=[(str(job.dir / "nope"), "/data", True)]))


# ---------------------------------------------------------------------------------------------
# Limits

def test_process_fork_bomb_stops_at_pids_limit(backend, workspace):
    # Bounded: at most 200 children, each sleeping 20 s, even if the limit did not hold.
    result, log = Job(workspace).run(backend, """
        import json, os, time
        children, failure = [], None
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError as exc:
                failure = exc.errno
                break
            if pid == 0:
                time.sleep(20)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print(json.dumps({"forked": len(children), "errno": failure}))
    """, pids_limit=32)
    assert result.status == "succeeded", (result, log)
    seen = report(log)
    assert seen["errno"] == errno.EAGAIN
    assert seen["forked"] < 32


def test_memory_hog_ends_oom(backend, workspace):
    # Bounded at 1 GiB even if the limit did not hold.
    result, log = Job(workspace).run(backend, """
        chunks = []
        for _ in range(64):
            chunks.append(b"\\x01" * (16 * 1024 * 1024))
        print("survived")
    """, memory_bytes=128 * MiB)
    assert result.status == "oom", (result, log)
    assert "memory" in result.reason and "128 MiB" in result.reason
    assert "survived" not in log


def test_wall_clock_exceeded_ends_timed_out_and_sandbox_gone(backend, workspace):
    job = Job(workspace)
    result, log = job.run(backend, """
        import time
        time.sleep(60)
        open("/out/finished", "w").write("x")
    """, wall_clock_seconds=2)
    assert result.status == "timed_out", (result, log)
    assert "wall-clock" in result.reason
    assert not (job.out / "finished").exists()
    assert_gone(backend, job.id)


def test_cancel_via_poll_ends_cancelled_and_sandbox_gone(backend, workspace):
    job = Job(workspace)
    calls = []

    def poll():
        calls.append(1)
        return len(calls) >= 2

    result, log = job.run(backend, """
        import time
        time.sleep(50)
        open("/out/finished", "w").write("x")
    """, poll=poll, wall_clock_seconds=55)
    assert result.status == "cancelled", (result, log)
    assert len(calls) == 2
    assert not (job.out / "finished").exists()
    assert_gone(backend, job.id)


def test_poll_exception_propagates_and_sandbox_gone(backend, workspace):
    job = Job(workspace)

    def poll():
        raise RuntimeError("worker shutting down")

    with pytest.raises(RuntimeError, match="worker shutting down"):
        job.run(backend, "import time; time.sleep(50)", poll=poll)
    assert_gone(backend, job.id)


# ---------------------------------------------------------------------------------------------
# The training stack

def test_ml_stack_imports_inside_sandbox(backend, workspace):
    result, log = Job(workspace).run(backend, """
        import json
        import torch, transformers, peft, safetensors.torch
        import training.runtime
        x = torch.ones(4, 4) @ torch.ones(4, 4)
        print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                          "peft": peft.__version__, "sum": float(x.sum()),
                          "runtime": training.runtime.__file__}))
    """, memory_bytes=4096 * MiB, pids_limit=256, wall_clock_seconds=180)
    assert result.status == "succeeded", (result, log)
    seen = report(log)
    assert seen["torch"] == importlib.metadata.version("torch")
    assert seen["transformers"] == importlib.metadata.version("transformers")
    assert seen["peft"] == importlib.metadata.version("peft")
    assert seen["sum"] == 64.0
    assert seen["runtime"] == "/code/training/runtime/__init__.py"


# ---------------------------------------------------------------------------------------------
# Orphans

@pytest.mark.docker
def test_reap_orphans_removes_leftover_labelled_container():
    try:
        backend = get_backend("docker")
    except SandboxUnavailable as exc:
        pytest.skip(f"docker sandbox unavailable here: {exc}")
    # A prefix of this test's own: never reap sandboxes of anything else running on this machine.
    prefix = f"test-reap-{uuid.uuid4().hex[:8]}-"
    orphan_id, running_id = prefix + "orphan", prefix + "running"
    made = []
    try:
        for job_id in (orphan_id, running_id):
            made.append(backend.client.containers.create(
                backend.image_id, ["sleep", "60"], labels={LABEL: job_id}, network_mode="none",
                user="65534:65534", read_only=True, detach=True))
            made[-1].start()
        reaped = reap_orphans(known_running_job_ids=[running_id], job_id_prefix=prefix)
        assert any(orphan_id in line for line in reaped)
        assert backend.client.containers.list(all=True, filters={"label": f"{LABEL}={orphan_id}"}) == []
        assert len(backend.client.containers.list(all=True, filters={"label": f"{LABEL}={running_id}"})) == 1
    finally:
        for c in made:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - already reaped
                pass


@pytest.mark.bubblewrap
def test_reap_orphans_removes_leftover_job_cgroup():
    try:
        backend = get_backend("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable here: {exc}")
    if not backend.cgroups.available:
        pytest.skip("no writable cgroup here; bubblewrap jobs leave none to reap")
    # A prefix of this test's own: never reap sandboxes of anything else running on this machine.
    prefix = f"test-reap-{uuid.uuid4().hex[:8]}-"
    orphan_id, running_id = prefix + "orphan", prefix + "running"
    groups = [backend.cgroups.create(j, memory_bytes=64 * MiB, pids_limit=8, cpus=None)
              for j in (orphan_id, running_id)]
    try:
        reaped = reap_orphans(known_running_job_ids=[running_id], job_id_prefix=prefix)
        assert any(orphan_id in line for line in reaped)
        assert orphan_id not in backend.list_job_ids()
        assert running_id in backend.list_job_ids()
    finally:
        for g in groups:
            g.remove()


# ---------------------------------------------------------------------------------------------
# Without a backend

def test_spec_invalid_values_rejected(tmp_path):
    ok = dict(job_id="j", command=["python", "-c", "pass"], out_dir=tmp_path)
    bad = [
        dict(mounts=[(str(tmp_path), "data", True)]),
        dict(mounts=[(str(tmp_path), "/usr/lib", True)]),
        dict(mounts=[(str(tmp_path), "/opt", True)]),
        dict(mounts=[(str(tmp_path), "/out", True)]),
        dict(mounts=[(str(tmp_path), "/data", True), (str(tmp_path), "/data", True)]),
        dict(env={"HTTPS_PROXY": "http://127.0.0.1:3128"}),
        dict(env={"BAD-NAME": "x"}),
        dict(gpus="0"),
        dict(command=[]),
        dict(job_id=""),
        dict(wall_clock_seconds=0),
        dict(memory_bytes=1024),
        dict(pids_limit=1),
    ]
    for override in bad:
        with pytest.raises(ValueError):
            SandboxSpec(**{**ok, **override})
    assert SandboxSpec(**ok, gpus=[0, "1"]).gpus == ["0", "1"]


def test_get_backend_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        get_backend("none")


def test_get_backend_auto_returns_backend_or_says_how_to_install():
    try:
        backend = get_backend("auto")
    except SandboxUnavailable as exc:
        assert "apt-get install" in str(exc)
    else:
        assert backend.name in ("docker", "bubblewrap")


def test_stage_runtime_code_copies_only_runtime(tmp_path):
    code = Path(stage_runtime_code(tmp_path / "job"))
    assert code == tmp_path / "job" / "code"
    assert sorted(p.name for p in code.iterdir()) == ["training"]
    assert sorted(p.name for p in (code / "training").iterdir()) == ["__init__.py", "runtime"]
    assert (code / "training" / "__init__.py").read_bytes() == b""
    assert (code / "training" / "runtime" / "__init__.py").is_file()
    assert not list(code.rglob("__pycache__"))
    # Staging again replaces the copy.
    (code / "training" / "stray.py").write_text("x")
    stage_runtime_code(tmp_path / "job")
    assert not (code / "training" / "stray.py").exists()


@pytest.mark.docker
def test_docker_image_with_own_python_runs_without_worker_binds(workspace):
    """Production images (docker/Dockerfile) bring their interpreter and packages: the backend
    binds none of the worker's Python and resolves `python3` through the image's PATH."""
    try:
        base = get_backend("docker")
    except SandboxUnavailable as exc:
        pytest.skip(f"docker sandbox unavailable here: {exc}")
    tag = f"rapha-sandbox-test:own-python-{uuid.uuid4().hex[:8]}"
    holder = base.client.containers.create(base.image_id, ["true"], network_mode="none")
    try:
        image = holder.commit(repository=tag.split(":")[0], tag=tag.split(":")[1],
                              changes=["LABEL rapha.python-env=image", "ENV PATH=/usr/bin:/bin"])
    finally:
        holder.remove(force=True)
    try:
        backend = get_backend("docker", image=tag)
        assert backend.python_env == "image" and backend.image_id == image.id
        job = Job(workspace)
        script = textwrap.dedent("""
            import json, os, sys
            print(json.dumps({"exe": sys.executable, "path": sys.path,
                              "site": os.path.exists("/opt/rapha/site-packages/torch")}))
        """)
        # `python3` through PATH: the debootstrap base has no `python` alias (a real image does).
        result = backend.run(job.spec("", command=["python3", "-c", script]))
        assert result.status == "succeeded", (result, job.log.read_text())
        assert result.image_id == image.id
        seen = report(job.log.read_text())
        assert seen["exe"] == "/usr/bin/python3"
        assert seen["site"] is False
        assert "/code" in seen["path"] and "/opt/rapha/site-packages" not in seen["path"]
    finally:
        base.client.images.remove(image.id, force=True)
