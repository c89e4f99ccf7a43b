"""A throwaway PostgreSQL server for tests: Debian's binaries (``apt-get install postgresql``),
a data directory in a temporary folder, listening on 127.0.0.1 on a free port, stopped and
deleted afterwards. Run as the ``postgres`` user when the tests run as root (the server refuses
root). :func:`unavailable` says why a server cannot be had here (the tests skip with it).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "lopt"


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (the newest Debian version first), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def unavailable() -> str | None:
    """Why no test server can be started here (None: it can)."""
    if binaries() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    if importlib.util.find_spec("psycopg") is None:
        return 'no PostgreSQL driver: pip install "lopt-harness[postgres]"'
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run the server"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``start()``, then :meth:`database` URLs, then ``stop()`` (also a context manager)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lopt-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.bin = binaries()
        self._as: dict[str, str] = {}
        if os.geteuid() == 0:
            self._as = {"user": "postgres", "group": "postgres"}
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        assert self.bin is not None
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            cwd=self.root,
            **self._as,  # type: ignore[arg-type]
        )

    def start(self) -> Server:
        """initdb (trust authentication for ``lopt``), then the server; raises on failure."""
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=200"
        try:
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                "-w", "start",
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            log = (self.root / "log").read_text() if (self.root / "log").is_file() else ""
            raise RuntimeError(f"pg_ctl start failed: {exc.stderr.strip()} {log[-500:]}") from exc
        return self

    def url(self, database: str = "postgres") -> str:
        """The URL a user writes (psycopg 3 is chosen by the harness)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create the database ``name``; its URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
