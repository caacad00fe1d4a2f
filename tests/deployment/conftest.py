"""A real deployment on loopback: a SuperLink and SuperNodes as separate processes started
through scripts/deploy/*.sh, each with its own throwaway FLWR_HOME.

``deployment`` (a factory) records every process it starts; its finalizer stops them by PID
(SuperNodes by process group, the SuperLink's detached SuperExec / ServerApp by the PIDs found
under it) even when the test failed or timed out. ``time_limit`` bounds a whole test with
SIGALRM so that a hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "scripts" / "deploy"
SITES = ("hospital_a", "hospital_b", "hospital_c")

# the tiny run config of the brief; plus one local epoch per round so a round is not dominated
# by training on 2 cores (a deployment round is ~5-10 s of Flower process start and polling)
TINY = (
    'data.size-scale=0.12 data.length=16 classifier.kind="gru" classifier.hidden=8 classifier.num-layers=1 '
    'unet.dim=8 unet.dim-mults="1,2" unet.attention-levels="1" unet.heads=2 unet.head-dim=4 unet.groups=4 '
    "diffusion.num-steps=20 sampling.num-inference-steps=4 federation.classifier-rounds=1 "
    'federation.diffusion-rounds=1 evaluation.seeds="0" evaluation.epochs=1 evaluation.tsrtr-ratios="1.0" '
    "classifier-train.epochs=1 diffusion-train.epochs=1"
)


def env() -> dict[str, str]:
    e = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
         "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
         "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}
    e.pop("FLWR_HOME", None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ----------------------------------------------------------------------------- processes


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    """PIDs below ``pid`` (children, grandchildren, ...), read from /proc."""
    children, out, todo = _ppid_map(), set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_ours(pid: int) -> bool:
    """Still a Flower process (not a PID reused by something else), and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and any(k in _cmdline(pid) for k in ("flower-", "flwr", "start_super"))


def alive(pid: int) -> bool:
    return _is_ours(pid)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    known: set[int] = field(default_factory=set)  # PIDs seen below it

    @property
    def pid(self) -> int:
        return self.popen.pid

    def snapshot(self) -> set[int]:
        if self.popen.poll() is None:
            self.known |= descendants(self.pid)
        return self.known

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> set[int]:
        """Signal its process group (it is a session leader); returns the PIDs that were below it."""
        below = self.snapshot()
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        return below


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[3]) == pgid:
                    members.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return members


def _signal_all(procs: list[Proc], extra: set[int], sig: int) -> None:
    """``sig`` to every recorded process, the members of their process groups and ``extra``,
    each by PID and only while it is still one of ours."""
    targets = set(extra)
    for p in procs:
        targets.add(p.pid)
        targets.update(_group_members(p.pid))
    for pid in targets:
        if _is_ours(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def stop(procs: list[Proc], grace: float = 8.0) -> None:
    """SIGTERM everything recorded (and below it), wait up to ``grace`` s, then SIGKILL what is left."""
    extra: set[int] = set()
    for p in procs:
        extra |= p.snapshot()

    def remaining() -> bool:
        return any(p.running() for p in procs) or any(_is_ours(x) for x in extra) or any(
            _is_ours(m) for p in procs for m in _group_members(p.pid))

    _signal_all(procs, extra, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and remaining():
        time.sleep(0.2)
    _signal_all(procs, extra, signal.SIGKILL)
    for p in procs:
        try:
            p.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and remaining():
        time.sleep(0.2)


# ----------------------------------------------------------------------------- deployment


class Deployment:
    """One SuperLink + SuperNodes on 127.0.0.1, started through scripts/deploy/*.sh."""

    def __init__(self, root: Path, *, secure: bool, keys: Path | None):
        self.root, self.secure, self.keys = root, secure, keys
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.port = free_port()
        self.superlink: Proc | None = None
        self.supernodes: dict[str, Proc] = {}
        self.runs_dir = root / "runs"
        self.sites_dir = root / "sites"
        self._n = 0
        # record the PIDs below every process twice a second: a SuperLink's SuperExec and
        # ServerApp live in their own session and outlive it when it is killed
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._sampling.wait(0.5):
            for p in list(self.procs):
                p.snapshot()

    # -- processes

    def _start(self, name: str, cmd: list[str]) -> Proc:
        self._n += 1
        log = self.root / f"{self._n:02d}-{name}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(cmd, cwd=self.root, env=env(), stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    @property
    def cli_home(self) -> Path:
        return self.root / "superlink" / "cli"

    def start_superlink(self) -> Proc:
        cmd = ["bash", str(DEPLOY / "start_superlink.sh"), "--port", str(self.port),
               "--state-dir", str(self.root / "superlink")]
        cmd += ["--keys", str(self.keys)] if self.secure else ["--insecure"]
        self.superlink = self._start("superlink", cmd)

        def listening():
            if not self.superlink.running():
                raise RuntimeError("the SuperLink exited:\n" + self.superlink.text()[-3000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, 60, "the SuperLink to listen")
        return self.superlink

    def register(self, names: list[str]) -> dict[str, int]:
        pubs = [str(self.keys / "supernodes" / n / f"{n}.pub") for n in names]
        out = subprocess.run(["bash", str(DEPLOY / "register_supernodes.sh"), "--cli-home", str(self.cli_home), *pubs],
                             env=env(), capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stdout + out.stderr
        ids = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return {k: int(v) for k, v in ids.items()}

    def start_supernode(self, site: str, *, key_dir: Path | None = None, tag: str = "") -> Proc:
        name = f"supernode-{site}{tag}"
        cmd = ["bash", str(DEPLOY / "start_supernode.sh"), "--superlink", f"127.0.0.1:{self.port}",
               "--state-dir", str(self.root / name), "--dataset", "synthetic", "--site", site,
               "--device", "cpu", "--output-dir", str(self.sites_dir)]
        if self.secure:
            cmd += ["--keys", str(key_dir or self.keys / "supernodes" / site)]
        else:
            cmd += ["--insecure"]
        proc = self._start(name, cmd)
        self.supernodes[site] = proc
        return proc

    # -- Flower CLI

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        e = {**env(), "FLWR_HOME": str(self.cli_home)}
        return subprocess.run(["flwr", *args], env=e, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO_ROOT)

    def flwr_json(self, *args: str, timeout: float = 60) -> dict:
        out = self.flwr(*args, "--format", "json", timeout=timeout)
        text = out.stdout
        return json.loads(text[text.index("{"):]) if "{" in text else {"success": False, "raw": out.stdout + out.stderr}

    def online_nodes(self) -> list[dict]:
        res = self.flwr_json("supernode", "ls", "coordinator")
        return [n for n in res.get("nodes", []) if n.get("status") == "online"]

    def start_run(self, run_config: str, name: str) -> Proc:
        config = f'{run_config} output.dir="{self.runs_dir}" output.name="{name}"'
        proc = self._start("flwr-run", ["env", f"FLWR_HOME={self.cli_home}", "flwr", "run", str(REPO_ROOT),
                                        "coordinator", "--stream", "--run-config", config])
        self.run_proc = proc
        return proc

    def run_id(self, proc: Proc, timeout: float = 60) -> int:
        found = wait_until(lambda: re.search(r"Successfully started run (\d+)", proc.text()), timeout,
                           "flwr run to start a run")
        return int(found.group(1))

    def run_status(self, run_id: int) -> str:
        res = self.flwr_json("ls", "coordinator", "--run-id", str(run_id))
        if not res.get("success", True) or not res.get("runs"):
            return "unknown: " + str(res.get("error-message", res))
        return res["runs"][0]["status"]

    def stop(self) -> None:
        self._sampling.set()
        self._sampler.join(timeout=5)
        stop(self.procs)

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}, rc {p.popen.poll()}):\n{p.text()[-2500:]}" for p in self.procs)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Path:
    """provision.py output for hospital_a..c, plus an 'intruder' key pair nobody registers."""
    out = tmp_path_factory.mktemp("deploy-keys") / "keys"
    res = subprocess.run([sys.executable, str(DEPLOY / "provision.py"), "--out", str(out),
                          "--hospitals", ",".join(SITES), "--host", "coordinator.test"],
                         env=env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([sys.executable, str(DEPLOY / "provision.py"), "node-key", "--out",
                          str(out / "unregistered" / "intruder"), "--name", "intruder"],
                         env=env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    (out / "unregistered" / "intruder" / "ca.crt").write_bytes((out / "ca" / "ca.crt").read_bytes())
    return out


@pytest.fixture
def deployment(tmp_path, request):
    """Factory of ``Deployment``s; everything they started is stopped at teardown."""
    made: list[Deployment] = []

    def make(*, secure: bool, keys: Path | None = None, name: str = "fed") -> Deployment:
        d = Deployment(tmp_path / name, secure=secure, keys=keys)
        made.append(d)
        return d

    yield make
    failed = getattr(request.node, "rep_call", None)
    for d in made:
        if failed is not None and failed.failed:
            print(d.diagnostics())
        d.stop()
    leftovers = [pid for d in made for p in d.procs for pid in {p.pid, *p.known, *_group_members(p.pid)}
                 if _is_ours(pid)]
    assert not leftovers, f"processes left running: {[(pid, _cmdline(pid)) for pid in leftovers]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def time_limit(request, deployment):
    """``time_limit(seconds)``: SIGALRM fails the test after ``seconds``. It depends on
    ``deployment`` so that the alarm is disarmed before the processes are stopped."""
    started = time.monotonic()

    def _alarm(signum, frame):
        raise TimeoutError(f"test exceeded its time limit ({time.monotonic() - started:.0f} s)")

    old = signal.signal(signal.SIGALRM, _alarm)

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    print(f"[timing] {request.node.name}: {time.monotonic() - started:.1f} s")
