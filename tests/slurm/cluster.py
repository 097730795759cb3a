"""A real single-node Slurm on localhost, from Debian's packages, for the cluster path's tests.

Used by the session fixture in ``tests/runner/test_executor_slurm.py``, and by hand to try
``--executor slurm`` on a laptop or workstation (as root, packages from ``.ci/slurm-install.sh``)::

    python -m tests.slurm.cluster            # starts everything, prints `export SLURM_CONF=...`
    # in another shell: export SLURM_CONF=...; python -m bench run all --profile smoke --executor slurm
    # Ctrl-C in the first shell stops every daemon

Everything lives in one temporary folder and runs as root: munged, MariaDB (127.0.0.1, a free
port, ``--no-defaults``), slurmdbd, slurmctld and slurmd (node ``localhost`` = 127.0.0.1, so the
machine's host name does not matter). Each choice below fixed a failure seen on Debian 12 without
systemd or cgroups (details in shared/notes/slurm-local.md):

- accounting (slurmdbd + MariaDB) is required: submitit reads job states with ``sacct``, and
  without it a job that died without a result stays UNKNOWN and is waited for forever;
- munge's socket folder must be mode 755 and its key mode 600; a non-default socket must be
  named in ``AuthInfo`` of both configs and in ``AccountingStoragePass``;
- ``slurmdbd.conf`` must be mode 600 and owned by root;
- no cgroups: ``proctrack/linuxproc`` and ``task/none``; memory limits are not enforced;
- ``batch_sched_delay=0,sched_min_interval=0`` starts a job in ~1 s instead of ~3 s;
- every daemon is stopped through its pid file, also when the start failed half-way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# binary -> Debian package that ships it (what .ci/slurm-install.sh installs)
BINARIES = {
    "munged": "munge", "mariadbd": "mariadb-server", "mariadb-install-db": "mariadb-server",
    "mariadb": "mariadb-client", "slurmdbd": "slurmdbd", "slurmctld": "slurmctld",
    "slurmd": "slurmd", "sbatch": "slurm-client", "sacct": "slurm-client",
    "sacctmgr": "slurm-client", "sinfo": "slurm-client", "scontrol": "slurm-client",
}
# Stop order: compute daemons, then accounting, then the services under it.
STOP_GROUPS = (("slurmd", "slurmctld"), ("slurmdbd",), ("mariadbd", "munged"))


class ClusterError(RuntimeError):
    """The local cluster could not start; the message carries the daemon's log tail."""


def which(name: str) -> str | None:
    """A binary on PATH or in /usr/sbin (not on a non-root user's PATH on Debian)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if which(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    """90% of MemTotal: slurmd marks a node invalid when it declares more memory than it has."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return max(256, int(line.split()[1]) * 9 // 10 // 1024)
    return 1024


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:]) or f"(empty log {path})"


class LocalSlurm:
    """Start and stop the daemons. ``start()`` raises :class:`ClusterError` with the reason;
    ``stop()`` is safe to call at any point (it stops whatever has a live pid file)."""

    def __init__(self, root: Path | None = None, cpus: int | None = None,
                 cluster: str = "capsbench", partition: str = "debug") -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="capsbench-slurm-"))
        self.cpus = cpus or os.cpu_count() or 1
        self.cluster, self.partition = cluster, partition
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.mysql_socket = self.root / "mysql" / "mysqld.sock"
        self.startup_s: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._pidfiles: dict[str, Path] = {}

    # -- public --------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What a submitting process needs (jobs inherit it): the config path."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> LocalSlurm:
        missing = missing_binaries()
        if missing:
            pkgs = sorted({BINARIES[b] for b in missing})
            raise ClusterError(f"Slurm binaries missing: {', '.join(missing)} "
                               f"(install {' '.join(pkgs)}: bash .ci/slurm-install.sh)")
        t0 = time.perf_counter()
        try:
            self._layout()
            self._start_munge(timeout_s)
            self._start_mariadb(timeout_s)
            self._start_slurmdbd(timeout_s)
            self._start_slurm(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        self._drain_jobs()
        for group in STOP_GROUPS:
            pids = {name: self._pid(name) for name in group}
            for pid in pids.values():
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for name, pid in pids.items():
                if pid is None:
                    continue
                while self._alive(name, pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if self._alive(name, pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc = self._procs.pop(name, None)
                if proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
        for pid in self._stepds():  # a step daemon whose slurmd went away first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _drain_jobs(self, timeout_s: float = 15.0) -> None:
        """Cancel what is still queued or running and let the step daemons report back:
        stopped under a running step, slurmd leaves orphaned slurmstepd processes behind."""
        if self._pid("slurmctld") is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            jobs = self._run("squeue", "-h", "-o", "%A").stdout.split()
            if jobs:
                self._run("scancel", *jobs)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if not self._run("squeue", "-h", "-o", "%A").stdout.strip() and not self._stepds():
                    return
            time.sleep(0.2)

    def _stepds(self) -> list[int]:
        """slurmstepd processes of this cluster (their environment names our SLURM_CONF)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "slurmstepd" and \
                        mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found

    def cleanup(self) -> None:
        """Remove the temporary folder (after :meth:`stop`)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, name: str, n: int = 15) -> str:
        return _tail(self.root / "log" / f"{name}.log", n)

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- steps ---------------------------------------------------------------------------------

    def _layout(self) -> None:
        self.root.chmod(0o755)
        for sub in ("etc", "log", "run", "state", "spool", "mysql", "munge"):
            (self.root / sub).mkdir(mode=0o755, exist_ok=True)
        (self.root / "munge-key").mkdir(mode=0o700, exist_ok=True)
        self.ports = {k: _free_port() for k in ("mysql", "dbd", "ctld", "slurmd")}
        self.db_pass = os.urandom(8).hex()

    def _start_munge(self, timeout_s: float) -> None:
        key = self.root / "munge-key" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        self._pidfiles["munged"] = self.root / "run" / "munged.pid"
        self._spawn("munged", [
            which("munged"), "--foreground", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={self._pidfiles['munged']}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={self.root / 'munge-key' / 'munged.seed'}",
        ])
        self._wait("munged", lambda: self.munge_socket.exists(), timeout_s)

    def _mysql(self, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [which("mariadb"), "--no-defaults", f"--socket={self.mysql_socket}", "-u", "root",
             "-e", sql], capture_output=True, text=True, timeout=30)

    def _start_mariadb(self, timeout_s: float) -> None:
        data = self.root / "mysql" / "data"
        small = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"]
        init = subprocess.run(
            [which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db",
             "--skip-name-resolve", *small],
            capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise ClusterError("mariadb-install-db failed: "
                               + "\n".join((init.stdout + init.stderr).splitlines()[-15:]))
        self._pidfiles["mariadbd"] = self.root / "run" / "mariadbd.pid"
        self._spawn("mariadbd", [
            which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root",
            "--bind-address=127.0.0.1", f"--port={self.ports['mysql']}",
            f"--socket={self.mysql_socket}", f"--pid-file={self._pidfiles['mariadbd']}",
            f"--log-error={self.root / 'log' / 'mariadbd.log'}", "--skip-name-resolve", *small,
        ])
        self._wait("mariadbd", lambda: self._mysql("SELECT 1").returncode == 0, timeout_s)
        user = "'slurm'@'127.0.0.1'"
        res = self._mysql(
            "CREATE DATABASE slurm_acct_db; "
            f"CREATE USER {user} IDENTIFIED BY '{self.db_pass}'; "
            f"GRANT ALL ON slurm_acct_db.* TO {user}; FLUSH PRIVILEGES;")
        if res.returncode != 0:
            raise ClusterError(f"creating the accounting database failed: {res.stderr.strip()}")

    def _write_conf(self, template: str, path: Path, mode: int) -> None:
        text = string.Template((HERE / template).read_text()).substitute(
            cluster=self.cluster, partition=self.partition, root=self.root, cpus=self.cpus,
            memory_mb=_memory_mb(), munge_socket=self.munge_socket, mysql_port=self.ports["mysql"],
            dbd_port=self.ports["dbd"], ctld_port=self.ports["ctld"],
            slurmd_port=self.ports["slurmd"], db_user="slurm", db_pass=self.db_pass)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)  # the umask may have narrowed it; slurmdbd insists on 600

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([which(argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=30, env={**os.environ, **self.env()})

    def _start_slurmdbd(self, timeout_s: float) -> None:
        # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF.
        self._write_conf("slurm.conf.in", self.conf, 0o644)
        self._write_conf("slurmdbd.conf.in", self.conf.parent / "slurmdbd.conf", 0o600)
        self._pidfiles["slurmdbd"] = self.root / "run" / "slurmdbd.pid"
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: self._run("sacctmgr", "-n", "list", "cluster")
                   .returncode == 0, timeout_s)
        res = self._run("sacctmgr", "-i", "add", "cluster", self.cluster)
        if res.returncode != 0 and "already exists" not in res.stdout + res.stderr:
            raise ClusterError(f"sacctmgr add cluster failed: {(res.stdout + res.stderr).strip()}")

    def _start_slurm(self, timeout_s: float) -> None:
        self._pidfiles["slurmctld"] = self.root / "run" / "slurmctld.pid"
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
        self._wait("slurmctld", lambda: "UP" in self._run("scontrol", "ping").stdout, timeout_s)
        self._pidfiles["slurmd"] = self.root / "run" / "slurmd.pid"
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", "localhost"])

        def idle() -> bool:
            out = self._run("sinfo", "-h", "-N", "-n", "localhost", "-o", "%T").stdout
            return out.strip().rstrip("*") == "idle"

        self._wait("slurmd", idle, timeout_s)

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str | None]) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the daemon owns it)
        self._procs[name] = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **self.env()})
        out.close()

    def _wait(self, name: str, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode} at start:\n"
                                   f"{self._logs(name)}")
            time.sleep(0.2)
        raise ClusterError(f"{name} not ready after {timeout_s:.0f} s:\n{self._logs(name)}")

    def _logs(self, name: str) -> str:
        parts = [self.log_tail(name), _tail(self.root / "log" / f"{name}.out", 8)]
        return "\n".join(p for p in parts if "(no log" not in p)

    def _pid(self, name: str) -> int | None:
        """The daemon's pid from its pid file (our child's pid if none was written yet)."""
        pidfile = self._pidfiles.get(name) or self.root / "run" / f"{name}.pid"
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
        if pid is None and name in self._procs and self._procs[name].poll() is None:
            pid = self._procs[name].pid
        return pid if pid and self._alive(name, pid) else None

    def _alive(self, name: str, pid: int) -> bool:
        """Alive and still that daemon (a recycled pid must not be killed)."""
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid and proc.poll() is not None:
            return False
        try:
            exe = os.path.realpath(f"/proc/{pid}/exe")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z" and exe == os.path.realpath(which(name) or name)

def main() -> None:
    """Start a cluster, print how to use it, stop it on Ctrl-C."""
    cluster = LocalSlurm()
    try:
        cluster.start()
    except ClusterError as e:
        sys.exit(f"error: {e}")
    print(f"single-node Slurm up in {cluster.startup_s:.1f} s (folder {cluster.root})")
    print(f"export SLURM_CONF={cluster.conf}")
    print("Ctrl-C stops every daemon.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        cluster.cleanup()


if __name__ == "__main__":
    main()
