"""Perplexity through the compiled model with every token run as a one-token decode step.

e2e.py's perplexity comes from the portable IR in one pass per window (exact f32 everywhere). Deployed decode runs
one token at a time through the fused IR, where the op and OpenVINO's own compressed FCs quantize activations on the
fly by default (SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE / DYNAMIC_QUANTIZATION_GROUP_SIZE). This feeds held-out text
token by token into the stateful model (teacher forcing) and records the perplexity twice per folder: with the
defaults ("dq") and with both quantizations off ("exact").

usage: python benchmarks/decode_ppl.py --json OUT FOLDER [FOLDER ...] [--windows 8] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov

from common import cpu_name, write_json

try:
    from scap_ov import assets
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scap_ov import assets
from scap_ov.dataset import token_windows
from scap_ov.errors import ScapError
from scap_ov.extension import extension_path
from scap_ov.integrations import check_folder
from scap_ov.pipeline import load_tokenizer

DQ_ENV = "SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE"


def decode_perplexity(compiled, windows: np.ndarray) -> tuple[float, int]:
    names = {i.get_any_name() for i in compiled.inputs}
    req = compiled.create_infer_request()
    nll, n = 0.0, 0
    for row in windows:
        req.reset_state()
        for i in range(len(row) - 1):
            feed = {"input_ids": np.array([[row[i]]], np.int64), "attention_mask": np.ones((1, i + 1), np.int64)}
            if "position_ids" in names:
                feed["position_ids"] = np.array([[i]], np.int64)
            if "beam_idx" in names:
                feed["beam_idx"] = np.array([0], np.int32)
            logits = req.infer(feed)["logits"][0, -1].astype(np.float64)
            top = logits.max()
            nll += top + math.log(np.exp(logits - top).sum()) - logits[row[i + 1]]
            n += 1
    return math.exp(nll / n), n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="exported model folders (dense or SCAP)")
    ap.add_argument("--json", required=True, type=Path)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    try:  # every folder checked before the first (minutes-long) run: IR, artifact, extension
        for folder in args.folders:
            check_folder(folder)
    except ScapError as exc:
        print(f"decode_ppl: {exc}", file=sys.stderr)
        return 2
    core = ov.Core()
    core.add_extension(str(extension_path()))
    records = []
    saved = os.environ.get(DQ_ENV)
    try:
        for folder in args.folders:
            windows = token_windows(load_tokenizer(folder), [assets.novel_text(assets.PERPLEXITY_NOVEL)],
                                    args.seq_len, args.windows, "evaluation")
            for variant, group in (("dq", None), ("exact", 0)):
                cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
                if group is None:
                    os.environ.pop(DQ_ENV, None)  # the op reads it per call
                else:
                    cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group
                    os.environ[DQ_ENV] = str(group)
                t0 = time.time()
                ppl, tokens = decode_perplexity(core.compile_model(str(folder / "openvino_model.xml"), "CPU", cfg),
                                                windows)
                records.append({"folder": folder.name, "variant": variant, "perplexity": ppl, "tokens": tokens,
                                "seconds": round(time.time() - t0, 1)})
                print(f"{folder.name:40s} {variant:6s} ppl {ppl:8.3f} ({tokens} tokens)", flush=True)
    finally:
        if saved is None:
            os.environ.pop(DQ_ENV, None)
        else:
            os.environ[DQ_ENV] = saved
    write_json(args.json, {"meta": {"cpu": cpu_name(), "windows": args.windows, "seq_len": args.seq_len,
                                    "threads": args.threads, "text": assets.PERPLEXITY_NOVEL},
                           "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
