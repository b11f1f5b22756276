"""Records of measured run times under docs/data/, which the docs print (writeup/docs.py renders them).

    python bench/records.py time RECORD -- COMMAND...
        run COMMAND; if it succeeds, write its wall time, the commit and the machine to RECORD
        (make record-time NAME=make-test CMD="make test": docs/data/commands/make-test.json)
    python bench/records.py runs RUNS_DIR RECORD --command "make all" --scripts NAME...
        make's run stamps of one build (RUNS_DIR = results/<model id>/.runs/<script>.json: wall time and peak
        memory of each script) with the commit and hardware each script's results file records
        (make record-runs MODEL=...: docs/data/runs/<model id>.json)

A record is written only from a run that succeeded, and says at which commit and on what machine it was measured:
the docs print that beside the number. Standard library only, but the repository's atomic JSON write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.io import git_commit, write_json_atomic  # noqa: E402


def machine() -> dict:
    """This machine as the docs describe it: CPU cores, the 1-minute load average now, the platform."""
    return {"cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2), "platform": platform.platform()}


def time_command(record: Path, command: list[str]) -> int:
    """Run `command` from the repository root; on success write {command, seconds, commit, machine, venv_ready}."""
    venv_ready = (REPO / ".venv" / ".installed").exists()
    commit, where = git_commit(), machine()  # before the run: the command may change the tree
    start = time.perf_counter()
    returncode = subprocess.call(command, cwd=REPO)
    seconds = time.perf_counter() - start
    if returncode != 0:
        print(f"{' '.join(command)} exited with status {returncode}: no record written", file=sys.stderr)
        return returncode
    write_json_atomic(record, {"command": " ".join(command), "seconds": round(seconds, 1), "commit": commit,
                               "machine": where, "venv_ready": venv_ready})
    print(f"{' '.join(command)}: {seconds:.0f} s -> {record}")
    return 0


def record_runs(runs_dir: Path, record: Path, command: str, scripts: list[str]) -> int:
    """Write one build's run stamps, in `scripts` order, with the commits and hardware of their results files."""
    stamps, commits, hardware = {}, [], None
    for script in scripts:
        stamp = runs_dir / f"{script}.json"
        if not stamp.exists():
            print(f"error: {stamp} does not exist: {script} did not run under make (run `{command}` first)",
                  file=sys.stderr)
            return 2
        stamps[script] = json.loads(stamp.read_text())
        provenance = json.loads((runs_dir.parent / f"{script}.json").read_text())["provenance"]
        commits += [provenance["git_commit"]] if provenance["git_commit"] not in commits else []
        hardware = hardware or provenance["hardware"]
    write_json_atomic(record, {"command": command, "commits": commits,
                               "machine": {"cpus": os.cpu_count(), "torch_threads": hardware["torch_threads"],
                                           "platform": hardware["platform"]},
                               "scripts": stamps})
    print(f"{len(stamps)} run stamps of {runs_dir} -> {record}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    timed = sub.add_parser("time", help="time one command")
    timed.add_argument("record", type=Path)
    timed.add_argument("command", nargs=argparse.REMAINDER)
    runs = sub.add_parser("runs", help="record make's run stamps of one build")
    runs.add_argument("runs_dir", type=Path)
    runs.add_argument("record", type=Path)
    runs.add_argument("--command", required=True, help="the make command that ran the build")
    runs.add_argument("--scripts", nargs="+", required=True, help="the build's scripts, in order")
    args = p.parse_args(argv)
    if args.what == "time":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            p.error("no command to time")
        return time_command(args.record, command)
    return record_runs(args.runs_dir, args.record, args.command, args.scripts)


if __name__ == "__main__":
    sys.exit(main())
