"""Helpers of the dbt tests: profiles for a test database, the integration project copied to a
temporary directory, and :class:`DbtProject`, which runs dbt in-process (``dbtRunner``) and
keeps each command's log lines."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dbt.cli.main import dbtRunner
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[2]


def profile_target(dsn: str, adapter_type: str = "pgtrickle", **extra: Any) -> dict[str, Any]:
    """A dbt target for the database of ``dsn``."""
    params = conninfo_to_dict(dsn)
    return {
        "type": adapter_type,
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "user": params.get("user", "postgres"),
        "pass": params.get("password", ""),
        "dbname": params["dbname"],
        "threads": 4,
        **extra,
    }


def write_profile(folder: Path, profile: str, target: dict[str, Any]) -> Path:
    """``folder/profiles.yml`` with one target; returns ``folder`` (for ``--profiles-dir``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {profile: {"target": "test", "outputs": {"test": target}}}
    (folder / "profiles.yml").write_text(yaml.safe_dump(data))
    return folder


def copy_integration_project(tmp_path: Path) -> Path:
    """integration_tests/ beside hub_package/ (its local package) under ``tmp_path``, so dbt's
    target/, logs/ and dbt_packages/ land there, not in the repository."""
    for folder in ("integration_tests", "hub_package"):
        shutil.copytree(
            ROOT / folder,
            tmp_path / folder,
            ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "package-lock.yml"),
        )
    return tmp_path / "integration_tests"


@dataclass
class DbtResult:
    success: bool
    lines: list[str]
    exception: BaseException | None = None

    @property
    def log(self) -> str:
        return "\n".join(self.lines) + (
            f"\nexception: {self.exception!r}" if self.exception else ""
        )


@dataclass
class DbtProject:
    """A dbt project directory and a profiles directory, driven in-process."""

    project_dir: Path
    profiles_dir: Path
    commands: list[str] = field(default_factory=list)

    def dbt(self, *args: str, expect: bool = True, profiles_dir: Path | None = None) -> DbtResult:
        """Run ``dbt ARGS``; fails the test unless it succeeds (``expect=False``: fails)."""
        lines: list[str] = []

        def keep(event: Any) -> None:
            msg = getattr(event.info, "msg", "")
            if msg:
                lines.append(str(msg))

        argv = [
            *args,
            "--project-dir",
            str(self.project_dir),
            "--profiles-dir",
            str(profiles_dir or self.profiles_dir),
        ]
        if args[0] != "deps":
            argv += ["--log-path", str(self.project_dir / "logs")]
        outcome = dbtRunner(callbacks=[keep]).invoke(argv)
        result = DbtResult(bool(outcome.success), lines, outcome.exception)
        done = [line for line in lines if line.startswith("Done. ")]
        self.commands.append(
            f"dbt {' '.join(args)}: " + (done[-1] if done else "ok" if result.success else "failed")
        )
        if result.success != expect:
            verb = "succeed" if expect else "fail"
            raise AssertionError(f"expected `dbt {' '.join(args)}` to {verb}; log:\n{result.log}")
        return result
