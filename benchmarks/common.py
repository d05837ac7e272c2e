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
    """Model name, family / model and the widest kernel ISA, e.g. "AMD EPYC (family 25 model 17, avx512)": VMs
    here report only "AMD EPYC", for AVX2-only Zen 3 and AVX-512 Zen 4 alike, and results differ between them."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    flags = set(fields.get("flags", "").split())
    isa = ("avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
           else "avx2" if "avx2" in flags else "no avx2")
    return f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {isa})"


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
