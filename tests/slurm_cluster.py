"""A real SLURM cluster for the tests: munged, slurmctld and two slurmd nodes on this machine.

The `slurm` fixture (session-scoped) starts everything in a fresh temporary directory, with its
own munge key and socket, so it never touches a system munged or slurm.conf. It skips when SLURM
and munge are not installed or the tests do not run as root (`.ci/run` installs them; a user's
`make test` never does); once they are there, a cluster that fails to start fails the tests,
with the daemons' logs. There is no accounting daemon: jobs are followed with `scontrol`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PROGRAMS = "sbatch scancel scontrol sinfo squeue slurmctld slurmd munged mungekey".split()
NODES = ["n1", "n2"]
# Job states after which a job (or array task) never runs again.
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
        "DEADLINE", "PREEMPTED"}  # fmt: skip


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_job_lines(text: str) -> list[dict[str, str]]:
    """`scontrol show job -o` output: one dict per line (job or array task), KEY=VALUE fields."""
    records = []
    for line in text.splitlines():
        fields = re.split(r" (?=[A-Za-z:/]+=)", line.strip())
        records.append(dict(f.split("=", 1) for f in fields if "=" in f))
    return [r for r in records if "JobId" in r]


class Cluster:
    """A running cluster: `env` points SLURM's commands (and jobs) at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *args: str, check: bool = True) -> str:
        """Run a SLURM command against this cluster; its stdout."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def submit(self, args: list[str], cwd: Path | str, env_extra: dict | None = None) -> str:
        """`sbatch --parsable ARGS` in `cwd`, the environment plus `env_extra`; the job ID."""
        env = {**self.env, **(env_extra or {})}
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, f"sbatch {args}: {done.stderr}"
        return done.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """The records of a job: one, or one per array task (pending tasks share one)."""
        return parse_job_lines(self.run("scontrol", "show", "job", "-o", job_id))

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        """Wait until the job (every task of an array) has finished for good. Returns
        {"states": {task: state}, "exit_codes": {task: "N:SIG"}, "restarts": max Restarts,
        "records": [...]}, the task being the array task ID or the job ID."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.jobs(job_id)
            if records and all(r["JobState"] in DONE for r in records):
                break
            if time.monotonic() > deadline:
                summary = [(r["JobId"], r["JobState"], r.get("Reason")) for r in records]
                raise AssertionError(f"job {job_id} not done in {timeout} s: {summary}")
            time.sleep(0.5)
        task = {r["JobId"]: r.get("ArrayTaskId", r["JobId"]) for r in records}
        return {
            "states": {task[r["JobId"]]: r["JobState"] for r in records},
            "exit_codes": {task[r["JobId"]]: r["ExitCode"] for r in records},
            "restarts": max(int(r.get("Restarts", 0)) for r in records),
            "records": records,
        }

    def signal_batch(self, job_id: str, signal: str = "USR1") -> None:
        """Send a signal to the job's batch shell only (as `#SBATCH --signal=B:...` does)."""
        self.run("scancel", f"--signal={signal}", "--batch", job_id)

    def logs(self, lines: int = 30) -> str:
        """The tail of every daemon's log, for failure messages."""
        out = []
        for path in sorted(self.root.glob("*.out.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def start(self) -> None:
        """Start munged, slurmctld and the slurmd nodes; wait until every node is idle."""
        munge = self.root / "munge"
        munge.mkdir()
        munge.chmod(0o755)  # clients need to reach the socket
        key = munge / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        sock = munge / "munge.socket"
        self._spawn("munged", ["munged", "--foreground", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                               f"--seed-file={munge}/munged.seed"], user="munge")  # fmt: skip
        self._until(sock.exists, 20, "munged made no socket")
        self.conf.write_text(self._conf(sock))
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for node in NODES:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-f", str(self.conf), "-N", node])

        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).split()
            return out == [x for node in NODES for x in (node, "idle")]

        self._until(idle, 60, "the nodes never became idle")

    def _conf(self, sock: Path) -> str:
        """slurm.conf: two nodes on 127.0.0.1, every path in the temporary directory."""
        d = self.root
        nodes = [f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={free_port()} "
                 "CPUs=2 RealMemory=8000" for n in NODES]  # fmt: skip
        settings = {
            "ClusterName": "layoutja", "SlurmctldHost": f"{socket.gethostname()}(127.0.0.1)",
            "SlurmctldPort": free_port(), "SlurmUser": "root", "AuthType": "auth/munge",
            "AuthInfo": f"socket={sock},cred_expire=10", "CredType": "cred/munge",
            "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none", "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core", "MpiDefault": "none", "ReturnToService": 2,
            "SlurmdParameters": "config_overrides", "MinJobAge": 3600, "KillWait": 5,
            "SchedulerParameters": "sched_interval=2,bf_interval=2",
            "StateSaveLocation": d / "state", "SlurmdSpoolDir": d / "spool-%n",
            "SlurmctldPidFile": d / "slurmctld.pid", "SlurmdPidFile": d / "slurmd-%n.pid",
            "SlurmctldLogFile": d / "slurmctld.log", "SlurmdLogFile": d / "slurmd-%n.log",
        }  # fmt: skip
        lines = [f"{k}={v}" for k, v in settings.items()] + nodes
        lines.append(f"PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE")
        return "\n".join(lines) + "\n"

    def _spawn(self, name: str, args: list[str], user: str | None = None) -> None:
        """Start a daemon in the foreground (its own session), output to NAME.out.log."""
        log = open(self.root / f"{name}.out.log", "wb")  # the child keeps its own copy
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=log, user=user,
                                            group=user, start_new_session=True)  # fmt: skip
        log.close()

    def _until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for `ready`; fail with the logs when a daemon exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"{timeout} s"
                pytest.fail(f"SLURM did not start ({what}; {why}):\n{self.logs()}", pytrace=False)
            time.sleep(0.3)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmctld takes seconds) and wait for them."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self.run("squeue", "-h", "-o", "%A", check=False).split()
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + 30
                while self.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for name in [*(f"slurmd-{n}" for n in NODES), "slurmctld", "munged"]:
            proc = self.procs.get(name)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "the SLURM tests start slurmd and munged, which needs root"
    absent = [p for p in PROGRAMS if shutil.which(p) is None]
    if absent:
        return f"SLURM/munge not installed (no {', '.join(absent)}; .ci/run installs them)"
    return None


@pytest.fixture(scope="session")
def slurm() -> Iterator[Cluster]:
    """A running two-node SLURM cluster (n1, n2: 2 CPUs each) for the whole session."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    # Not under pytest's 0700 temporary root: munged runs as the munge user and must reach it.
    root = Path(tempfile.mkdtemp(prefix="layoutja-slurm-"))
    root.chmod(0o755)
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
