"""What every benchmark script shares: offline run-time settings, the package import, the machine, and
its JSON result written atomically. Import this module first."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub at run time
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
try:
    import scap_ov  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_name() -> str:
    from scap_ov.machine import cpu_description

    return cpu_description()


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` to ``path`` through a temporary sibling, so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def publish(path: Path, result: dict, plot, table) -> None:
    """Write the result JSON, its PNG beside it (``plot(result, png)``) and print its markdown table."""
    write_json(path, result)
    plot(result, Path(path).with_suffix(".png"))
    print(table(result))


def publish_records(path: Path, meta: dict, records: list, started: float, plot, table) -> None:
    """publish() a {"meta", "records"} result whose meta also carries what every run records: date, CPU, the
    command line and the seconds since ``started`` (time.time())."""
    import time

    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(), **meta,
            "command": "python " + " ".join(sys.argv), "seconds": round(time.time() - started, 1)}
    publish(path, {"meta": meta, "records": records}, plot, table)


def result_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every result-writing benchmark has: --json OUT, --table JSON."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--json", type=Path, help="output JSON (a PNG is written next to it)")
    parser.add_argument("--table", type=Path, help="print the markdown table of an existing result JSON and exit")
    return parser


def parse_or_print_table(parser: argparse.ArgumentParser, argv, table):
    """Parsed arguments, or None after printing ``table`` of the --table JSON (nothing left to run)."""
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return None
    if not args.json:
        parser.error("--json is required")
    return args
