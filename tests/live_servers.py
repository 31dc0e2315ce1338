#!/usr/bin/env python3
"""Throwaway PostgreSQL, MariaDB and Firebird servers for the django-pdr test suite.

Standard library only (Python 3.11+), so it runs before any virtualenv exists.

Usage::

    python tests/live_servers.py run [--only pg|mysql|fb] -- CMD [ARGS...]
        Start the servers, run CMD with the PDR_TEST_* variables below in its
        environment, stop the servers, remove their files and exit with CMD's
        exit code (128+N if CMD was killed by signal N).

    python tests/live_servers.py start [--only pg|mysql|fb]
        Start the servers and leave them running.  The ``export K=V`` lines are
        printed on stdout and written to /tmp/pdr-live-servers.env (together
        with what ``stop`` needs), so ``eval "$(python tests/live_servers.py
        start)"`` or ``. /tmp/pdr-live-servers.env`` both work.

    python tests/live_servers.py stop [--only pg|mysql|fb]
        Stop the servers started by ``start`` and remove their files.

Variables exported (per server actually started)::

    PDR_TEST_PG_HOST=127.0.0.1     PDR_TEST_MYSQL_HOST=127.0.0.1
    PDR_TEST_PG_PORT=<free port>   PDR_TEST_MYSQL_PORT=<free port>
    PDR_TEST_PG_USER=pdr           PDR_TEST_MYSQL_USER=pdr
    PDR_TEST_PG_PASSWORD=pdr       PDR_TEST_MYSQL_PASSWORD=pdr
    PDR_TEST_PG_DB=pdr             PDR_TEST_MYSQL_DB=pdr
    PDR_TEST_PG_SOCKET=<unix socket directory>
    PDR_TEST_MYSQL_SOCKET=<unix socket path>

    PDR_TEST_FB_HOST=127.0.0.1  PDR_TEST_FB_PORT=<free port>
    PDR_TEST_FB_USER=SYSDBA     PDR_TEST_FB_PASSWORD=pdr
    PDR_TEST_FB_DB=<server-side path of the pdr.fdb database>
    PDR_TEST_FB_DIR=<server-side directory where tests create their database files>

Firebird (Debian's firebird3.0-server, run as our own process): its root directory
(``FIREBIRD``) is a temporary directory of symbolic links to the package's plugins,
messages and character sets, with our own firebird.conf (port, ServerMode Super),
databases.conf and a copy of the package's security3.fdb in which SYSDBA's password
is set through an embedded connection (isql-fb, before the server starts); its lock
and temporary files go to the same directory (``FIREBIRD_LOCK``, ``FIREBIRD_TMP``).
Databases are files on the server: tests create them in PDR_TEST_FB_DIR.

The ``pdr`` role is a superuser on PostgreSQL (pytest-django creates test
databases) and has ALL PRIVILEGES ... WITH GRANT OPTION on MariaDB.

From Python (e.g. a conftest)::

    from live_servers import live_servers
    with live_servers(only=["pg"]) as env:
        ...  # env is a dict of the variables above

Environment knobs: PDR_PG_BINDIR (PostgreSQL bin directory, default the newest
/usr/lib/postgresql/*/bin, preferring 15), PDR_LIVE_SERVERS_TIMEOUT (seconds to
wait for each server to start, default 60).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import glob
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PREFIX = "live_servers:"
ENV_FILE = "/tmp/pdr-live-servers.env"
STATE_MARK = "# live_servers-state: "
TMP_ROOT = "/tmp"
START_TIMEOUT = float(os.environ.get("PDR_LIVE_SERVERS_TIMEOUT", "60"))
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 30
KINDS = ("pg", "mysql", "fb")
USER = PASSWORD = DB = "pdr"
HOST = "127.0.0.1"

IS_ROOT = os.geteuid() == 0

# Set when startup must be abandoned (signal, or the other server failed).
_abort = threading.Event()
_port_lock = threading.Lock()
_ports_taken: set[int] = set()


def log(msg: str) -> None:
    try:
        print(f"{PREFIX} {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr gone (e.g. the guardian after its parent died)
        pass


class LiveServerError(Exception):
    """A server could not be installed, initialised or started."""


class Aborted(Exception):
    """Startup was abandoned because _abort was set."""


class Terminated(BaseException):
    """Raised from a signal handler during startup."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- helpers


def tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    if not path:
        return "(no log)"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    text = data.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:]
    return "\n".join("    " + line for line in text) or "    (log is empty)"


def _port_is_free(port: int) -> bool:
    # Something already listening (any address) makes a plain bind fail.
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr, port))
        except OSError as e:
            if family == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here: ignore
                continue
            return False
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return False
    except OSError:
        return True


def free_port() -> int:
    """A TCP port that nothing listens on (not one of ours either)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        with _port_lock:
            if port in _ports_taken:
                continue
            if _port_is_free(port):
                _ports_taken.add(port)
                return port
    raise LiveServerError("could not find a free TCP port on 127.0.0.1")


def _clean_env(drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.setdefault("LANG", "C.UTF-8")
    return env


def run_cmd(cmd: list[str], log_path: str, what: str, timeout: float, **kw) -> None:
    """Run a set-up command, output appended to log_path; abortable; raise on failure."""
    with open(log_path, "ab") as logf:
        logf.write(f"\n$ {shlex.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if _abort.is_set():
                    raise Aborted()
                if time.monotonic() > deadline:
                    raise LiveServerError(f"{what} did not finish within {timeout:.0f}s; log {log_path}:\n"
                                          + tail(log_path))
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if rc != 0:
        raise LiveServerError(f"{what} failed (exit {rc}); last lines of {log_path}:\n" + tail(log_path))


def _proc_state(pid: int) -> str | None:
    """Process state letter from /proc, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return "?"
    return data[data.rfind(")") + 2:][:1] or "?"


def _proc_start_time(pid: int) -> str | None:
    """Start time of a process (to recognise it despite pid reuse), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def which(*names: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin")) -> str | None:
    path = os.environ.get("PATH", "") + ":" + ":".join(extra_dirs)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def find_pg_bindir() -> str | None:
    env = os.environ.get("PDR_PG_BINDIR")
    if env:
        return env if os.path.exists(os.path.join(env, "postgres")) else None
    if os.path.exists("/usr/lib/postgresql/15/bin/postgres"):
        return "/usr/lib/postgresql/15/bin"
    dirs = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    if dirs:
        return max(dirs, key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    pg_config = which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and os.path.exists(os.path.join(out, "postgres")):
            return out
    return None


def ensure_installed(kinds: list[str]) -> None:
    """apt-get install what is missing (as root); otherwise say what to install."""
    need = []
    if "pg" in kinds and not find_pg_bindir():
        need.append("postgresql")
    if "mysql" in kinds and not (which("mariadbd", "mysqld") and which("mariadb-install-db", "mysql_install_db")
                                 and which("mariadb", "mysql")):
        need.append("mariadb-server")
    if "fb" in kinds and not (os.path.exists(FirebirdServer.binary) and which("isql-fb")):
        need.append("firebird3.0-server")
    if not need:
        return
    if not IS_ROOT:
        raise LiveServerError(f"missing database server binaries: install them with "
                              f"`sudo apt-get install -y {' '.join(need)}` (or set PDR_PG_BINDIR)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", *need]
    t0 = time.monotonic()
    lists = [f for f in glob.glob("/var/lib/apt/lists/*") if not f.endswith(("/lock", "/partial", "/auxfiles"))]
    if not lists:
        log("apt package lists are empty: apt-get update")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=sys.stderr, check=False)
    log(f"installing {' '.join(need)} with apt-get ...")
    if subprocess.run(install, env=env, stdout=sys.stderr).returncode != 0:
        log("apt-get install failed; running apt-get update and retrying")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=sys.stderr, check=False)
        if subprocess.run(install, env=env, stdout=sys.stderr).returncode != 0:
            raise LiveServerError(f"apt-get install -y {' '.join(need)} failed")
    log(f"installed {' '.join(need)} in {time.monotonic() - t0:.1f}s")
    if "pg" in kinds and not find_pg_bindir():
        raise LiveServerError("postgresql installed but no /usr/lib/postgresql/*/bin/postgres found")
    if "mysql" in kinds and not which("mariadbd", "mysqld"):
        raise LiveServerError("mariadb-server installed but mariadbd not found")
    if "fb" in kinds and not os.path.exists(FirebirdServer.binary):
        raise LiveServerError(f"firebird3.0-server installed but {FirebirdServer.binary} not found")


# --------------------------------------------------------------------------- servers


class Server:
    kind = ""
    label = ""
    prefix = ""
    addr_in_use_markers = ("Address already in use",)

    def __init__(self, timeout: float = START_TIMEOUT):
        self.timeout = timeout
        self.tmpdir: str | None = None
        self.datadir: str | None = None
        self.log_path: str | None = None
        self.init_log: str | None = None
        self.socket: str | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.version = ""
        self.on_state = None  # callback(state dict), used to keep the guardian informed

    # -- state (for `start`/`stop` and the guardian)
    def state(self) -> dict:
        return {"kind": self.kind, "pid": self.pid, "port": self.port, "tmpdir": self.tmpdir,
                "datadir": self.datadir, "log": self.log_path, "socket": self.socket}

    @classmethod
    def from_state(cls, st: dict) -> "Server":
        srv = SERVER_CLASSES[st["kind"]]()
        srv.pid, srv.port, srv.tmpdir = st.get("pid"), st.get("port"), st.get("tmpdir")
        srv.datadir, srv.log_path, srv.socket = st.get("datadir"), st.get("log"), st.get("socket")
        return srv

    def _notify(self) -> None:
        if self.on_state:
            self.on_state(self.state())

    def env(self) -> dict[str, str]:
        p = self.prefix
        return {f"{p}HOST": HOST, f"{p}PORT": str(self.port), f"{p}USER": USER,
                f"{p}PASSWORD": PASSWORD, f"{p}DB": DB, f"{p}SOCKET": str(self.socket)}

    # -- lifecycle
    def _mkdtemp(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix=f"pdr-live-{self.kind}-", dir=TMP_ROOT)
        self.log_path = os.path.join(self.tmpdir, "server.log")
        self.init_log = os.path.join(self.tmpdir, "init.log")
        self._notify()

    def start(self) -> None:
        t0 = time.monotonic()
        self._mkdtemp()
        self.init_datadir()
        t_init = time.monotonic() - t0
        for attempt in range(1, 4):
            self.port = free_port()
            t1 = time.monotonic()
            self._spawn()
            try:
                self._wait_ready()
                break
            except LiveServerError:
                in_use = self._exited() and any(m in tail(self.log_path, 10) for m in self.addr_in_use_markers)
                if in_use and attempt < 3:
                    log(f"{self.label}: port {self.port} was taken meanwhile, retrying on another port")
                    self._kill_hard()
                    continue
                raise
        t_ready = time.monotonic() - t1
        self.create_user()
        log(f"{self.label} {self.version} ready on {HOST}:{self.port} in {time.monotonic() - t0:.1f}s "
            f"(init {t_init:.1f}s, start {t_ready:.1f}s; files in {self.tmpdir})")

    def _popen(self, cmd: list[str], **kw) -> None:
        logf = open(self.log_path, "ab")
        try:
            logf.write(f"\n$ {shlex.join(cmd)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.tmpdir, **kw)
        finally:
            logf.close()
        self.pid = self.proc.pid
        self._notify()

    def _exited(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        if self.pid is None:
            return True
        st = _proc_state(self.pid)
        return st is None or st in ("Z", "X") or not self._owns_pid()

    def _owns_pid(self) -> bool:
        return bool(self.datadir) and self.datadir in _proc_cmdline(self.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if _abort.is_set():
                raise Aborted()
            if self._exited():
                code = self.proc.returncode if self.proc else "?"
                raise LiveServerError(f"{self.label} exited during startup (exit {code}); "
                                      f"last lines of {self.log_path}:\n{tail(self.log_path)}")
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise LiveServerError(f"{self.label} did not accept connections on port {self.port} within "
                                      f"{self.timeout:.0f}s; last lines of {self.log_path}:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.05)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if self._exited():
                return True
            time.sleep(0.05)
        return self._exited()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def _kill_hard(self) -> None:
        if self.pid is not None and not self._exited():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self._wait_exit(5)
        self.proc = None
        self.pid = None

    def stop(self, remove: bool = True) -> None:
        t0 = time.monotonic()
        if self.pid is not None and not self._exited():
            graceful = self.shutdown_signals()
            for sig, wait in graceful:
                self._signal(sig)
                if self._wait_exit(wait):
                    break
            else:
                log(f"{self.label} (pid {self.pid}) did not stop: SIGKILL to its process group")
                self._kill_hard()
            log(f"{self.label} on port {self.port} stopped in {time.monotonic() - t0:.1f}s")
        if remove and self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- per engine
    def init_datadir(self) -> None:
        raise NotImplementedError

    def _spawn(self) -> None:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def create_user(self) -> None:
        raise NotImplementedError

    def shutdown_signals(self) -> list[tuple[int, float]]:
        raise NotImplementedError


class PostgresServer(Server):
    kind = "pg"
    label = "postgresql"
    prefix = "PDR_TEST_PG_"
    addr_in_use_markers = ("Address already in use", "could not create any TCP/IP sockets")

    def __init__(self, timeout: float = START_TIMEOUT):
        super().__init__(timeout)
        self.bindir = find_pg_bindir() or "/usr/lib/postgresql/15/bin"

    def _as_pg(self) -> dict:
        """Popen arguments that run a command as the postgres OS user when we are root."""
        env = _clean_env(("PG",))
        if not IS_ROOT:
            return {"env": env}
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise LiveServerError("PostgreSQL refuses to run as root and there is no `postgres` OS user "
                                  "(install the postgresql package, which creates it)") from None
        env.update(HOME=self.tmpdir, USER="postgres", LOGNAME="postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "env": env}

    def init_datadir(self) -> None:
        self.datadir = os.path.join(self.tmpdir, "data")
        self.socket = os.path.join(self.tmpdir, "sock")
        os.mkdir(self.socket)
        os.chmod(self.tmpdir, 0o755)
        os.chmod(self.socket, 0o755)
        pg_kw = self._as_pg()
        if IS_ROOT:
            os.chown(self.tmpdir, pg_kw["user"], pg_kw["group"])
            os.chown(self.socket, pg_kw["user"], pg_kw["group"])
        self._notify()
        out = subprocess.run([os.path.join(self.bindir, "postgres"), "--version"], capture_output=True,
                             text=True).stdout
        m = re.search(r"\d+(\.\d+)*", out)
        self.version = m.group(0) if m else "?"
        run_cmd([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
                self.init_log, "initdb", self.timeout, cwd=self.tmpdir, **pg_kw)
        # Unix socket: trust (set-up only, by the postgres superuser); TCP: password.
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write("# written by tests/live_servers.py\n"
                    "local   all          all                  trust\n"
                    "local   replication  all                  trust\n"
                    "host    all          all   127.0.0.1/32   scram-sha-256\n"
                    "host    replication  all   127.0.0.1/32   scram-sha-256\n")

    def _spawn(self) -> None:
        self._popen([os.path.join(self.bindir, "postgres"), "-D", self.datadir, "-k", self.socket,
                     "-c", f"listen_addresses={HOST}", "-c", f"port={self.port}",
                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "wal_level=logical", "-c", "max_connections=200", "-c", "max_wal_senders=10",
                     "-c", "max_prepared_transactions=2100",
                     "-c", "max_replication_slots=10"], **self._as_pg())

    def is_ready(self) -> bool:
        r = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-q", "-h", HOST, "-p", str(self.port),
                            "-t", "2"], env=_clean_env(("PG",)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def create_user(self) -> None:
        sql = [f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'",
               f"CREATE DATABASE {DB} OWNER {USER}"]
        cmd = [os.path.join(self.bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket,
               "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        for s in sql:
            cmd += ["-c", s]
        run_cmd(cmd, self.init_log, "creating the pdr role and database", self.timeout,
                env=_clean_env(("PG",)))

    def shutdown_signals(self) -> list[tuple[int, float]]:
        # SIGINT = fast shutdown, SIGQUIT = immediate shutdown.
        return [(signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0)]


class MariaDBServer(Server):
    kind = "mysql"
    label = "mariadb"
    prefix = "PDR_TEST_MYSQL_"
    addr_in_use_markers = ("Address already in use", "Bind on TCP/IP port")

    def __init__(self, timeout: float = START_TIMEOUT):
        super().__init__(timeout)
        self.mariadbd = which("mariadbd", "mysqld") or "/usr/sbin/mariadbd"
        self.install_db = which("mariadb-install-db", "mysql_install_db") or "mariadb-install-db"
        self.client = which("mariadb", "mysql") or "mariadb"
        self.os_user = "root" if IS_ROOT else getpass.getuser()

    def init_datadir(self) -> None:
        self.datadir = os.path.join(self.tmpdir, "data")
        self.socket = os.path.join(self.tmpdir, "mysqld.sock")
        self._notify()
        out = subprocess.run([self.mariadbd, "--version"], capture_output=True, text=True).stdout.split()
        self.version = out[2] if len(out) > 2 else "?"
        run_cmd([self.install_db, "--no-defaults", f"--user={self.os_user}", f"--datadir={self.datadir}",
                 "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
                self.init_log, "mariadb-install-db", self.timeout, cwd=self.tmpdir, env=_clean_env(("MYSQL",)))

    def _spawn(self) -> None:
        cmd = [self.mariadbd, "--no-defaults"]
        if IS_ROOT:
            cmd.append("--user=root")
        cmd += [f"--datadir={self.datadir}", f"--socket={self.socket}", f"--port={self.port}",
                f"--bind-address={HOST}", f"--pid-file={os.path.join(self.tmpdir, 'mariadbd.pid')}",
                "--skip-log-bin", "--skip-name-resolve", "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci", "--max-connections=300",
                "--innodb-flush-log-at-trx-commit=2", "--innodb-fast-shutdown=2"]
        self._popen(cmd, env=_clean_env(("MYSQL",)))

    def _client(self, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.client, "--no-defaults", "--protocol=socket", f"--socket={self.socket}",
                               "-uroot", "--connect-timeout=2", "-e", sql],
                              env=_clean_env(("MYSQL",)), capture_output=True, text=True)

    def is_ready(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        return self._client("SELECT 1").returncode == 0

    def create_user(self) -> None:
        stmts = ["DELETE FROM mysql.global_priv WHERE User = ''"]  # anonymous users shadow 'pdr'@'%'
        for host in ("%", "localhost", "127.0.0.1"):
            stmts += [f"CREATE USER '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'",
                      f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'{host}' WITH GRANT OPTION"]
        stmts += [f"CREATE DATABASE `{DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci", "FLUSH PRIVILEGES"]
        r = self._client(";\n".join(stmts) + ";")
        if r.returncode != 0:
            raise LiveServerError(f"creating the pdr user and database on mariadb failed: {r.stderr.strip()}")

    def shutdown_signals(self) -> list[tuple[int, float]]:
        return [(signal.SIGTERM, STOP_TIMEOUT)]


class FirebirdServer(Server):
    """Debian's firebird3.0-server binary, run as our own process with its own root
    directory (configuration, security database, lock and temporary files)."""

    kind = "fb"
    label = "firebird"
    prefix = "PDR_TEST_FB_"
    binary = "/usr/sbin/firebird"
    libdir = "/usr/lib/x86_64-linux-gnu/firebird/3.0"
    security_template = "/var/lib/firebird/3.0/system/security3.fdb"
    user = "SYSDBA"

    def _fb_env(self) -> dict:
        env = _clean_env(("FIREBIRD", "ISC_"))
        env.update(FIREBIRD=self.datadir, FIREBIRD_LOCK=os.path.join(self.datadir, "lock"),
                   FIREBIRD_TMP=os.path.join(self.datadir, "tmp"), FIREBIRD_MSG=self.datadir)
        return env

    def env(self) -> dict[str, str]:
        p = self.prefix
        return {f"{p}HOST": HOST, f"{p}PORT": str(self.port), f"{p}USER": self.user,
                f"{p}PASSWORD": PASSWORD, f"{p}DB": os.path.join(self.socket, f"{DB}.fdb"),
                f"{p}DIR": str(self.socket)}

    def _owns_pid(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/environ", "rb") as f:
                return bool(self.datadir) and f"FIREBIRD={self.datadir}".encode() in f.read().split(b"\0")
        except OSError:
            return False

    def init_datadir(self) -> None:
        self.datadir = os.path.join(self.tmpdir, "root")
        self.socket = os.path.join(self.tmpdir, "data")  # where the databases go
        for d in (self.datadir, self.socket, os.path.join(self.datadir, "lock"), os.path.join(self.datadir, "tmp")):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.tmpdir, 0o755)
        self._notify()
        for name in ("firebird.msg", "intl", "plugins", "UDF", "lib", "plugins.conf", "fbtrace.conf"):
            os.symlink(os.path.join(self.libdir, name), os.path.join(self.datadir, name))
        security = os.path.join(self.datadir, "security3.fdb")
        shutil.copyfile(self.security_template, security)
        with open(os.path.join(self.datadir, "databases.conf"), "w") as f:
            f.write(f"# written by tests/live_servers.py\nsecurity.db = {security}\n{{\n    RemoteAccess = false\n}}\n")
        m = re.search(r"/(\d+\.\d+)$", self.libdir)
        self.version = "3.0" if not m else m.group(1)
        with contextlib.suppress(OSError):
            pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "firebird3.0-server"], capture_output=True,
                                 text=True).stdout
            self.version = pkg.split(".ds")[0] or self.version
        self._write_conf()  # (the port is set before each start)
        # SYSDBA's password, set in the security database through an embedded connection
        r = subprocess.run(["isql-fb", "-q", "-user", self.user, security], input=(
            f"CREATE OR ALTER USER {self.user} PASSWORD '{PASSWORD}' USING PLUGIN Srp;\nCOMMIT;\n"),
            env=self._fb_env(), capture_output=True, text=True, timeout=self.timeout, cwd=self.tmpdir)
        with open(self.init_log, "a") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0 or "error" in (r.stdout + r.stderr).lower():
            raise LiveServerError(f"setting SYSDBA's password in {security} failed: {(r.stdout + r.stderr).strip()}")

    def _write_conf(self) -> None:
        with open(os.path.join(self.datadir, "firebird.conf"), "w") as f:
            f.write("# written by tests/live_servers.py\n"
                    f"RemoteServicePort = {self.port or 3050}\n"
                    f"RemoteBindAddress = {HOST}\n"
                    "ServerMode = Super\n"
                    f"SecurityDatabase = {os.path.join(self.datadir, 'security3.fdb')}\n"
                    f"TempDirectories = {os.path.join(self.datadir, 'tmp')}\n"
                    "UdfAccess = None\n"
                    "AuthServer = Srp\n"
                    "UserManager = Srp\n"
                    "WireCrypt = Enabled\n"
                    "DefaultDbCachePages = 2048\n")

    def _spawn(self) -> None:
        self._write_conf()
        self._popen([self.binary], env=self._fb_env())

    def is_ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1):
            return True
        return False

    def create_user(self) -> None:
        path = os.path.join(self.socket, f"{DB}.fdb")
        r = subprocess.run(["isql-fb", "-q"], input=(
            f"CREATE DATABASE '{HOST}/{self.port}:{path}' USER '{self.user}' PASSWORD '{PASSWORD}' "
            f"DEFAULT CHARACTER SET UTF8;\nCOMMIT;\n"),
            env=self._fb_env(), capture_output=True, text=True, timeout=self.timeout, cwd=self.tmpdir)
        with open(self.init_log, "a") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0 or not os.path.exists(path):
            raise LiveServerError(f"creating {path} on firebird failed: {(r.stdout + r.stderr).strip()}")

    def shutdown_signals(self) -> list[tuple[int, float]]:
        return [(signal.SIGTERM, STOP_TIMEOUT)]


SERVER_CLASSES: dict[str, type[Server]] = {"pg": PostgresServer, "mysql": MariaDBServer, "fb": FirebirdServer}


# --------------------------------------------------------------------------- guardian
# A small helper process in its own session that stops the servers if this
# process dies without cleaning up (e.g. SIGKILL): it reads server states on a
# pipe and, on EOF without a final "done", stops them and removes their files.


class Guardian:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "_guard"],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as e:  # not fatal: normal cleanup still happens
            log(f"warning: could not start the cleanup guardian: {e}")

    def send(self, line: str) -> None:
        with self.lock:
            if self.proc is None or self.proc.stdin is None:
                return
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def add(self, state: dict) -> None:
        self.send(json.dumps(state))

    def add_child(self, pid: int) -> None:
        """The command run by `run`: terminated too if this process dies."""
        self.send(json.dumps({"child": pid, "start": _proc_start_time(pid)}))

    def release(self) -> None:
        """Normal end: tell the guardian there is nothing to clean."""
        self.send("done")
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def guard_main() -> int:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    states: dict[str, dict] = {}
    children: list[dict] = []
    for raw in sys.stdin.buffer:
        line = raw.decode().strip()
        if line == "done":
            return 0
        if line:
            st = json.loads(line)
            if "child" in st:
                children.append(st)
            else:
                states[st["tmpdir"]] = st
    if states:
        log("parent died without cleaning up: stopping its servers")
    for ch in children:
        if ch["start"] is not None and _proc_start_time(ch["child"]) == ch["start"]:
            with contextlib.suppress(OSError):
                os.kill(ch["child"], signal.SIGTERM)
    for st in states.values():
        with contextlib.suppress(Exception):
            Server.from_state(st).stop()
    return 0


# --------------------------------------------------------------------------- orchestration


def _parallel(fn, servers: list[Server]) -> dict[Server, BaseException]:
    errors: dict[Server, BaseException] = {}

    def target(s: Server) -> None:
        try:
            fn(s)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors[s] = e

    threads = [threading.Thread(target=target, args=(s,), name=f"live-{s.kind}", daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    except BaseException:
        _abort.set()
        for t in threads:
            t.join(30)
        raise
    return errors


def start_servers(kinds: list[str], timeout: float = START_TIMEOUT, guardian: Guardian | None = None) -> list[Server]:
    """Start the servers in parallel; on any failure stop what was started and raise."""
    ensure_installed(kinds)
    servers = [SERVER_CLASSES[k](timeout) for k in kinds]
    if guardian is not None:
        for s in servers:
            s.on_state = guardian.add
    _abort.clear()
    t0 = time.monotonic()
    try:
        errors = _parallel(Server.start, servers)
        if errors:
            _abort.set()
            real = [(s, e) for s, e in errors.items() if not isinstance(e, Aborted)]
            raise LiveServerError("\n".join(str(e) for s, e in real) or "startup aborted")
    except BaseException:
        _stop_despite_signals(servers)
        raise
    log(f"all servers ready in {time.monotonic() - t0:.1f}s")
    return servers


def stop_servers(servers: list[Server], remove: bool = True) -> None:
    errors = _parallel(lambda s: s.stop(remove=remove), servers)
    for s, e in errors.items():
        log(f"error while stopping {s.label}: {e!r}")


def _stop_despite_signals(servers: list[Server]) -> None:
    """stop_servers, retried if a signal handler raises in the middle (Ctrl-C pressed twice)."""
    for _ in range(10):
        try:
            stop_servers(servers)
            return
        except (KeyboardInterrupt, Terminated):
            log("interrupted while stopping the servers: still stopping")


def servers_env(servers: list[Server]) -> dict[str, str]:
    env: dict[str, str] = {}
    for s in servers:
        env.update(s.env())
    return env


@contextlib.contextmanager
def live_servers(only: list[str] | None = None, timeout: float = START_TIMEOUT):
    """Context manager for Python callers: yields the PDR_TEST_* dict, stops the servers on exit."""
    guardian = Guardian()
    servers: list[Server] = []
    try:
        servers = start_servers(list(only or KINDS), timeout, guardian)
        yield servers_env(servers)
    finally:
        stop_servers(servers)
        guardian.release()


# --------------------------------------------------------------------------- CLI


def _raise_on_signal(signum, frame):
    raise Terminated(signum)


def _install_startup_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)


def _ignore_during_cleanup() -> None:
    def handler(signum, frame):
        log(f"got {signal.Signals(signum).name} while stopping the servers: still stopping")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _in_foreground() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def cmd_run(kinds: list[str], command: list[str], timeout: float) -> int:
    if not command:
        log("run: nothing to run; usage: live_servers.py run [--only pg|mysql|fb] -- CMD [ARGS...]")
        return 2
    guardian = Guardian()
    servers: list[Server] = []
    _install_startup_handlers()
    try:
        try:
            servers = start_servers(kinds, timeout, guardian)
        except Terminated as e:
            log(f"interrupted by {signal.Signals(e.signum).name} during startup")
            return 128 + e.signum
        except KeyboardInterrupt:
            return 128 + signal.SIGINT
        except LiveServerError as e:
            log(f"ERROR: {e}")
            return 1
        env = dict(os.environ, **servers_env(servers))
        log("running: " + shlex.join(command).replace("\n", "\\n"))
        t0 = time.monotonic()
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as e:
            log(f"cannot run {command[0]!r}: {e}")
            return 127
        guardian.add_child(child.pid)
        received: list[int] = []

        def forward(signum, frame):
            received.append(signum)
            if len(received) >= 3:
                log("third signal: killing the command")
                sig = signal.SIGKILL
            elif signum == signal.SIGINT and _in_foreground():
                return  # the terminal already sent it to the whole foreground group
            else:
                sig = signum
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries anyway
                continue
        rc = 128 - rc if rc < 0 else rc
        log(f"command exited with {rc} after {time.monotonic() - t0:.1f}s")
        if rc == 5 and "pytest" in shlex.join(command):
            log("pytest exit code 5 means no tests were collected: this counts as a failure")
        return rc
    finally:
        _ignore_during_cleanup()
        stop_servers(servers)
        guardian.release()


def _read_env_file(path: str) -> list[dict]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(STATE_MARK):
                    return json.loads(line[len(STATE_MARK):])["servers"]
    except FileNotFoundError:
        return []
    return []


def _write_env_file(path: str, servers: list[Server]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in servers_env(servers).items())
    body = ("# Written by tests/live_servers.py start; stop with: python tests/live_servers.py stop\n"
            + exports + STATE_MARK + json.dumps({"servers": [s.state() for s in servers]}) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(body)
    os.replace(tmp, path)
    return exports


def cmd_start(kinds: list[str], timeout: float, env_file: str) -> int:
    previous = [Server.from_state(st) for st in _read_env_file(env_file)]
    alive = [s for s in previous if not s._exited()]
    if alive:
        log(f"servers from {env_file} are still running ({', '.join(f'{s.label}:{s.port}' for s in alive)}); "
            f"run `python {sys.argv[0]} stop` first")
        return 1
    for s in previous:  # stale entries: remove their files
        s.stop()
    guardian = Guardian()
    _install_startup_handlers()
    try:
        servers = start_servers(kinds, timeout, guardian)
    except Terminated as e:
        guardian.release()
        return 128 + e.signum
    except LiveServerError as e:
        guardian.release()
        log(f"ERROR: {e}")
        return 1
    exports = _write_env_file(env_file, servers)
    guardian.release()
    sys.stdout.write(exports)
    sys.stdout.flush()
    log(f"environment written to {env_file}; stop with: python {sys.argv[0]} stop")
    return 0


def cmd_stop(kinds: list[str], env_file: str) -> int:
    states = _read_env_file(env_file)
    if not states:
        log(f"nothing to stop ({env_file} missing or empty)")
        return 0
    _ignore_during_cleanup()
    servers = [Server.from_state(st) for st in states]
    to_stop = [s for s in servers if s.kind in kinds]
    keep = [s for s in servers if s.kind not in kinds]
    for s in to_stop:
        if s.pid and not s._exited():
            continue
        log(f"{s.label} (port {s.port}) was not running; removing {s.tmpdir}")
    stop_servers(to_stop)
    if keep:
        _write_env_file(env_file, keep)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(env_file)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_guard"]:
        return guard_main()
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="live_servers.py", description=__doc__.split("\n\n")[0],
                                     epilog="Example: python tests/live_servers.py run -- python -m pytest -x")
    parser.add_argument("action", choices=["run", "start", "stop"])
    parser.add_argument("command", nargs="*", help="for run: the command (put it after --)")
    parser.add_argument("--only", choices=KINDS, action="append",
                        help="start/stop only this server (repeatable); default all")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT, help="startup timeout per server (s)")
    parser.add_argument("--env-file", default=ENV_FILE, help=f"start/stop state file (default {ENV_FILE})")
    args = parser.parse_args(argv)
    command = args.command + command
    kinds = [k for k in KINDS if k in (args.only or KINDS)]
    if args.action == "run":
        return cmd_run(kinds, command, args.timeout)
    if command:
        parser.error(f"{args.action} takes no command")
    if args.action == "start":
        return cmd_start(kinds, args.timeout, args.env_file)
    return cmd_stop(kinds, args.env_file)


if __name__ == "__main__":
    sys.exit(main())
