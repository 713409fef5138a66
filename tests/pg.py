"""A throwaway PostgreSQL server for tests: initdb in a temp dir, started on a free port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import free_port


def postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # /usr/local/bin may link initdb alone
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self, root: Path) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise FileNotFoundError(
                "PostgreSQL server binaries (initdb) not found; apt-get install postgresql"
            )
        self.bin = bin_dir
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        # PostgreSQL refuses to run as root: run it as the `postgres` system user when we are root.
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.prefix:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "vstreamer", "--auth=trust", "-E", "UTF8"
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://vstreamer@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "vstreamer", name
        )
        return self.url(name)
