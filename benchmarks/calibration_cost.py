"""Calibration cost: wall time and peak memory of SCAP calibration at two calibration-token counts.

Each size runs in its own process so peak RSS (ru_maxrss) belongs to that run alone.
    python benchmarks/calibration_cost.py --json benchmarks/results/calibration_cost.json [--sizes 16 64]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import write_json


def one_run(samples: int, seq_len: int) -> dict:
    import openvino as ov

    from scap_ov import assets
    from scap_ov.calibration import calibrate
    from scap_ov.config import CalibrationConfig
    from scap_ov.dataset import token_windows
    from scap_ov.export import IR_XML, dense_ir
    from scap_ov.pipeline import calibration_texts, load_tokenizer

    folder = dense_ir(assets.DEFAULT_MODEL)
    windows = token_windows(load_tokenizer(folder), calibration_texts(None), seq_len, samples, "calibration")
    model = ov.Core().read_model(folder / IR_XML)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.time()
    calibrate(model, windows, CalibrationConfig(samples=samples, seq_len=seq_len))
    return {"samples": samples, "seq_len": seq_len, "tokens": int(windows.size),
            "seconds": round(time.time() - started, 1), "rss_before_mb": round(rss_before),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.seq_len)))
        return
    records = []
    for samples in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--json", "-", "--one", str(samples),
                              "--seq-len", str(args.seq_len)], capture_output=True, text=True, check=True)
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(records[-1])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {"benchmark": "calibration_cost", "records": records})


if __name__ == "__main__":
    main()
