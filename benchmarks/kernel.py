"""Kernel benchmark: SCAPFullyConnected vs OpenVINO's own dense FC, same shape / weight format / threads.

For each weight format x Llama-2-7B FC shape, two models are compiled, each holding L copies of the layer
(distinct weights, one Parameter per copy so nothing is fused) so that one inference streams more than the
32 MiB L3: the dense one (MatMul on an f32 / bf16 / f16 constant, or NNCF's decompression chain for int8 /
int4, compiled with OpenVINO's default fast path for compressed weights) and the SCAP one (the C++ op on
the packed weights; threshold is a runtime input so one model serves every sparsity). x has a static token
count M (the per-call dynamic-shape fallback cost of extension ops in the CPU plugin is measured separately
and recorded in meta.dynamic_shape_overhead_us). Dense and SCAP inferences are interleaved; per-layer time =
median over repetitions / L (the min-based ratio is recorded too: robust when the machine is shared).

A read-bandwidth ceiling is measured in the same run (an OpenVINO ReduceSum over a 512 MiB f32 constant on
the same threads); touched_gbps is the bytes the SCAP kernel must read (kept weight rows + scales + zero
points, or all rows on the dense prefill path) over its time.

usage: python benchmarks/kernel.py --json out.json [--quick] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov

from common import cpu_name, write_json

try:
    from scap_ov import ops, packing
    from scap_ov.extension import extension_path
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scap_ov import ops, packing
    from scap_ov.extension import extension_path

FORMATS = ["f32", "bf16", "f16", "int8_sym", "int8_asym", "int4_sym_g128", "int4_asym_g128"]
EXTRA_FORMATS = ["int4_sym_g64", "int4_asym_g64", "int4_sym_g32"]  # on request (--formats): SmolLM2's int4 is g64
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K = IC, N = OC)
SPARSITIES = [0.0, 0.25, 0.5, 0.7, 0.9]
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------

class LayerWeights:
    """One layer's weights in NNCF layout ([N, K] / [N, K/g, g]) plus the packed SCAP form."""

    def __init__(self, rng, fmt: str, k: int, n: int):
        self.fmt, self.k, self.n = fmt, k, n
        if fmt in ("f32", "bf16", "f16"):
            w = (rng.standard_normal((n, k), dtype=np.float32) * 0.02)
            self.w = w
            self.packed = packing.pack_float(w, fmt)
            return
        bits = 8 if fmt.startswith("int8") else 4
        asym = "asym" in fmt
        g = int(fmt.rsplit("_g", 1)[1]) if bits == 4 else k
        lo, hi = ((0, 2**bits - 1) if asym else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
        self.wq = rng.integers(lo, hi + 1, size=(n, k // g, g), dtype=np.int16 if bits == 8 else np.int8)
        self.scale = rng.uniform(0.001, 0.01, size=(n, k // g, 1)).astype(np.float16)
        self.zp = rng.integers(lo, hi + 1, size=(n, k // g, 1)).astype(np.int16) if asym else None
        self.wtype = {(8, False): "i8", (8, True): "u8", (4, False): "i4", (4, True): "u4"}[(bits, asym)]
        self.group = g
        if bits == 8:  # NNCF per-channel: [N, K] and [N, 1]
            self.packed = packing.pack_compressed(self.wq.reshape(n, k), self.scale.reshape(n, 1),
                                                  None if self.zp is None else self.zp.reshape(n, 1), self.wtype)
        else:
            self.packed = packing.pack_compressed(self.wq, self.scale, self.zp, self.wtype)

    # OpenVINO's dense FC on the same format
    def dense_weight_output(self) -> ov.Output:
        import openvino.opset13 as opset
        fmt, n, k = self.fmt, self.n, self.k
        if fmt == "f32":
            return ov.op.Constant(self.w).output(0)
        if fmt == "f16":
            return opset.convert(ov.op.Constant(self.w.astype(np.float16)), ov.Type.f32).output(0)
        if fmt == "bf16":
            bits = packing.f32_to_bf16_bits(self.w)
            c = ov.op.Constant(ov.Tensor(bits, ov.Shape([n, k]), ov.Type.bf16), shared_memory=False)
            return opset.convert(c, ov.Type.f32).output(0)
        t = {"i8": ov.Type.i8, "u8": ov.Type.u8, "i4": ov.Type.i4, "u4": ov.Type.u4}[self.wtype]
        grouped = self.wtype in ("i4", "u4")
        wshape = [n, k // self.group, self.group] if grouped else [n, k]
        sshape = [n, k // self.group, 1] if grouped else [n, 1]
        if grouped:
            wdata = packing.pack_int4(self.wq)
        else:
            wdata = self.wq.reshape(n, k).astype(np.int8 if t == ov.Type.i8 else np.uint8)
        wc = ov.op.Constant(ov.Tensor(np.ascontiguousarray(wdata), ov.Shape(wshape), t), shared_memory=False)
        x = opset.convert(wc, ov.Type.f16)
        if self.zp is not None:
            zdata = packing.pack_int4(self.zp) if grouped else self.zp.reshape(n, 1).astype(np.uint8)
            zc = ov.op.Constant(ov.Tensor(np.ascontiguousarray(zdata), ov.Shape(sshape), t), shared_memory=False)
            x = opset.subtract(x, opset.convert(zc, ov.Type.f16))
        x = opset.multiply(x, ov.op.Constant(np.ascontiguousarray(self.scale.reshape(sshape))))
        if grouped:
            x = opset.reshape(x, ov.op.Constant(np.array([n, k], np.int64)), special_zero=False)
        return opset.convert(x, ov.Type.f32).output(0)

    @property
    def weight_bytes(self) -> int:
        return int(self.packed.data.nbytes)

    @property
    def aux_bytes(self) -> int:
        return self.packed.nbytes - self.weight_bytes


def build_models(core, layers, k, m=-1):
    """Dense and SCAP models over `layers`, x of shape [m, k] (m=-1: dynamic token count)."""
    import openvino.opset13 as opset
    xs_d, outs_d, xs_s, outs_s = [], [], [], []
    thr = ov.op.Parameter(ov.Type.f32, ov.PartialShape([]))
    thr.set_friendly_name("threshold")
    for i, lw in enumerate(layers):
        xd = ov.op.Parameter(ov.Type.f32, ov.PartialShape([m, k]))
        xs_d.append(xd)
        outs_d.append(opset.matmul(xd, lw.dense_weight_output(), False, True).output(0))
        xsp = ov.op.Parameter(ov.Type.f32, ov.PartialShape([m, k]))
        xs_s.append(xsp)
        p = lw.packed
        inputs = [xsp.output(0), p.weights_constant().output(0), p.scales_constant().output(0),
                  p.zero_points_constant().output(0), ov.op.Constant(np.array(0.0, np.float32)).output(0),
                  thr.output(0), ov.op.Constant(np.zeros((0,), np.float32)).output(0)]
        outs_s.append(ops.native_node_factory().create("SCAPFullyConnected", inputs, {"schema_version": 1}).output(0))
    dense = ov.Model(outs_d, xs_d, "dense")
    scap = ov.Model(outs_s, xs_s + [thr], "scap")
    return dense, scap


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------

def measure_ceiling(core, threads: int, mib: int = 512, reps: int = 7) -> float:
    """Read bandwidth: OpenVINO ReduceSum (rows of 4096) over a `mib` MiB f32 input (zero-copy), same threads."""
    import openvino.opset13 as opset
    n = mib * MIB // 4
    data = np.ones((n // 4096, 4096), np.float32)
    p = ov.op.Parameter(ov.Type.f32, ov.PartialShape(list(data.shape)))
    r = opset.reduce_sum(p, ov.op.Constant(np.array([1], np.int64)), False)
    cm = core.compile_model(ov.Model([r], [p]), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    req = cm.create_infer_request()
    req.set_input_tensor(0, ov.Tensor(data, shared_memory=True))
    req.infer()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        req.infer()
        ts.append(time.perf_counter() - t0)
    best = min(ts)
    del req, cm, data
    return n * 4 / best / 1e9


def measure_dynamic_overhead(core, cfg, k: int = 64, reps: int = 300) -> float:
    """Extra time per call of a tiny SCAP op when x has a dynamic token dimension (the CPU plugin re-runs
    shape inference through its generic fallback for extension ops), min over reps, static vs dynamic."""
    rng = np.random.default_rng(1)
    p = packing.pack_float(rng.standard_normal((k, k), dtype=np.float32))
    x = rng.standard_normal((1, k), dtype=np.float32)
    best = {}
    for name, shape in (("static", [1, k]), ("dynamic", [-1, k])):
        xp = ov.op.Parameter(ov.Type.f32, ov.PartialShape(shape))
        y = ops.make_scap_fc(xp.output(0), p, 0.0, 0.5, None, native=True)
        req = core.compile_model(ov.Model([y], [xp]), "CPU", cfg).create_infer_request()
        req.set_input_tensor(0, ov.Tensor(x))
        for _ in range(10):
            req.infer()
        best[name] = min(timed(req) for _ in range(reps))
    return (best["dynamic"] - best["static"]) * 1e6


def timed(req) -> float:
    t0 = time.perf_counter()
    req.infer()
    return time.perf_counter() - t0


def bench_pair(req_d, req_s, reps: int, warmup: int = 2, stat=statistics.median):
    """Interleaved timings of the dense and the SCAP request; returns stat() of each (median by default)."""
    for _ in range(warmup):
        req_d.infer()
        req_s.infer()
    td, ts = [], []
    for i in range(reps):
        if i % 2:
            td.append(timed(req_d))
            ts.append(timed(req_s))
        else:
            ts.append(timed(req_s))
            td.append(timed(req_d))
    bench_pair.last = (td, ts)
    return stat(td), stat(ts)


def run(args) -> dict:
    core = ov.Core()
    core.add_extension(extension_path())
    threads = args.threads
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
           "NUM_STREAMS": 1}
    t_start = time.time()
    ceiling = measure_ceiling(core, threads)
    dyn_overhead = measure_dynamic_overhead(core, cfg)
    print(f"dynamic-shape overhead per SCAP call: {dyn_overhead:.1f} us", flush=True)
    print(f"read-bandwidth ceiling ({threads} threads): {ceiling:.1f} GB/s", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    dyn_q = None
    formats = args.formats or FORMATS
    shapes = args.shapes or SHAPES
    for fmt in formats:
        for (k, n) in shapes:
            probe = LayerWeights(rng, fmt, k, n)
            per_layer = probe.weight_bytes
            n_layers = max(2, math.ceil(args.working_set_mib * MIB / per_layer))
            layers = [probe] + [LayerWeights(rng, fmt, k, n) for _ in range(n_layers - 1)]
            m_list = args.m or ([1] if args.quick and (k, n) != (4096, 4096) else [1, 128])
            for m in m_list:
                # static token count per model: the kernel benchmark excludes the CPU plugin's per-call
                # dynamic-shape fallback (measured separately, see meta.dynamic_shape_overhead_us)
                dense, scap = build_models(core, layers, k, m)
                cd = core.compile_model(dense, "CPU", cfg)
                cs = core.compile_model(scap, "CPU", cfg)
                if dyn_q is None:
                    try:
                        dyn_q = int(cd.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
                    except Exception:  # noqa: BLE001 - property missing on some builds
                        dyn_q = None
                req_d, req_s = cd.create_infer_request(), cs.create_infer_request()
                x = rng.standard_normal((m, k), dtype=np.float32)
                xt = ov.Tensor(x)
                for i in range(n_layers):
                    req_d.set_input_tensor(i, xt)
                    req_s.set_input_tensor(i, xt)
                sp_list = args.sparsities
                if m == 128:
                    sp_list = [0.5] if args.quick else [0.0, 0.5]
                for sp in sp_list:
                    tau = np.float32(np.quantile(np.abs(x), sp)) if sp > 0 else np.float32(0.0)
                    req_s.set_input_tensor(n_layers, ov.Tensor(np.array(tau, np.float32)))
                    kept = float((np.abs(x) > tau).mean())
                    reps = args.reps if m == 1 else max(3, args.reps // 5)
                    td, ts = bench_pair(req_d, req_s, reps)
                    td_all, ts_all = bench_pair.last
                    td /= n_layers
                    ts /= n_layers
                    td_min, ts_min = min(td_all) / n_layers, min(ts_all) / n_layers
                    row_frac = kept if m == 1 else 1.0  # the prefill path reads every row once
                    touched = row_frac * probe.weight_bytes + probe.aux_bytes
                    row = dict(format=fmt, K=k, N=n, M=m, sparsity=sp, measured_keep=round(kept, 4),
                               t_scap_us=round(ts * 1e6, 2), t_dense_us=round(td * 1e6, 2),
                               ratio=round(ts / td, 4), t_scap_min_us=round(ts_min * 1e6, 2),
                               t_dense_min_us=round(td_min * 1e6, 2), ratio_min=round(ts_min / td_min, 4),
                               touched_bytes=int(touched),
                               touched_gbps=round(touched / ts / 1e9, 2), ceiling_gbps=round(ceiling, 2),
                               layers=n_layers)
                    rows.append(row)
                    print(f"{fmt:15s} {k:5d}->{n:5d} M={m:3d} s={sp:.2f}  scap {row['t_scap_us']:9.1f} us  "
                          f"dense {row['t_dense_us']:9.1f} us  ratio {row['ratio']:.3f} (min-based {row['ratio_min']:.3f})  "
                          f"{row['touched_gbps']:.1f}/{ceiling:.1f} GB/s", flush=True)
                del cd, cs, req_d, req_s, dense, scap
            del layers, probe
    return dict(
        meta=dict(openvino=ov.get_version(), threads=threads, quick=args.quick, machine=platform.processor() or platform.machine(),
                  cpu=cpu_name(), isa=os.environ.get("SCAP_OV_ISA", "auto"),
                  dense_config=dict(cfg, DYNAMIC_QUANTIZATION_GROUP_SIZE=dyn_q,
                                    note="OpenVINO defaults for compressed weights (dynamic quantization as reported)"),
                  working_set_mib=args.working_set_mib, dynamic_shape_overhead_us=round(dyn_overhead, 1), elapsed_s=round(time.time() - t_start, 1),
                  ceiling_method="OpenVINO ReduceSum(axis=1) over a [32768, 4096] f32 input (512 MiB), same threads, best of 7"),
        rows=rows,
    )


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    shapes = sorted({(r["K"], r["N"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes) + 1, figsize=(5 * (len(shapes) + 1), 4), squeeze=False)
    for ax, (k, n) in zip(axes[0], shapes):
        for fmt in FORMATS:
            pts = sorted((r["sparsity"], r["ratio"]) for r in rows if r["format"] == fmt and r["K"] == k and r["N"] == n and r["M"] == 1)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fmt)
        ax.plot([0, 0.9], [1.0, 0.1], "k:", lw=1, label="ideal (1 - s)")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(f"M=1, {k}->{n}")
        ax.set_xlabel("input sparsity")
        ax.set_ylabel("t_scap / t_dense")
    axes[0][0].legend(fontsize=7)
    ax = axes[0][-1]
    pre = [r for r in rows if r["M"] > 1]
    labels = [f"{r['format']}\n{r['K']}->{r['N']} s={r['sparsity']}" for r in pre]
    ax.bar(range(len(pre)), [r["ratio"] for r in pre])
    ax.axhline(1.3, color="r", lw=0.8, ls="--")
    ax.set_xticks(range(len(pre)))
    ax.set_xticklabels(labels, rotation=90, fontsize=5)
    ax.set_title("M=128 (prefill) ratio")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is ICxOC, e.g. 576x1536; got {text!r}") from None
    if k < 1 or n < 1:
        raise argparse.ArgumentTypeError(f"shape dimensions must be >= 1, got {text!r}")
    return k, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, type=Path, help="output JSON (a PNG plot is written next to it)")
    ap.add_argument("--quick", action="store_true", help="M=1 at 0/50/70%% for every format and shape, M=128 on 4096x4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", nargs="*", default=None, choices=FORMATS + EXTRA_FORMATS)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--working-set-mib", type=int, default=None)
    ap.add_argument("--shapes", nargs="*", type=shape, default=None,
                    help="IC x OC shapes instead of Llama-2-7B's, e.g. 576x576 1536x576 (SmolLM2's)")
    ap.add_argument("--sparsities", nargs="*", type=float, default=None, help="M=1 input sparsities")
    ap.add_argument("--m", nargs="*", type=int, choices=(1, 128), default=None, help="token counts")
    args = ap.parse_args(argv)
    args.sparsities = args.sparsities or ([0.0, 0.5, 0.7] if args.quick else SPARSITIES)
    args.reps = args.reps or (7 if args.quick else 25)
    args.working_set_mib = args.working_set_mib or (64 if args.quick else 160)
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    try:
        plot(result, args.json.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the measurements
        print(f"plot failed: {exc}", file=sys.stderr)
    print(f"wrote {args.json} ({len(result['rows'])} rows, {result['meta']['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
