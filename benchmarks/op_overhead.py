"""Per-call overhead of the SCAPFullyConnected extension op in the CPU plugin, static vs dynamic token dim.

Builds chains of N small layers (IC = OC = 64 by default, so the kernel itself costs about a microsecond)
and reports the per-layer time as the slope between an N-layer and a 1-layer chain, for

  scap    SCAPFullyConnected (f32 weights, no bias)  -> the CPU plugin's generic "Reference" node
  matmul  OpenVINO's own MatMul on an f32 Constant   -> the CPU plugin's FullyConnected node

each with a static x ([1, IC] / [1, 1, IC]) and with a dynamic token dimension ([?, IC] / [?, ?, IC], the
shape every optimum-intel LLM IR has). "dynamic - static" is the cost the plugin adds per op call when
shapes are dynamic. For an extension op that is the plugin's shape-inference fallback (ShapeInferFallback,
FULL_PORT_MASK): on every inference, even with unchanged input shapes, all 7 inputs are wrapped in
Constants, the op is cloned and validated twice, and the node is a synchronisation point of the graph.

--schema 1,2 compares the seven-input op (schema_version 1) with the compact form (schema_version 2, only the
inputs that carry data: an f32 FC with a scalar threshold has 2 inputs), which is what export writes.
--clock thread times each inference in CPU time of the calling thread (run with --threads 1 so the whole
inference runs in that thread): on a machine shared with other jobs it is far less noisy than wall time.

Several builds of the extension can be compared in one process (--ext a.so,b.so): every request of every
variant is run round-robin (interleaved, order reversed on alternate rounds) and the median (and the
10th percentile) over many rounds is reported, so a machine that is loaded by something else biases every variant alike.

--per-channel gives every op a threshold vector [IC] (validated on every dynamic call); --threshold 100
prunes every activation (x ~ N(0, 1)), which leaves almost only the per-call overhead even for a large IC.

usage: python benchmarks/op_overhead.py [--n 64] [--reps 400] [--rank 2|3] [--ic 64] [--per-channel]
                                        [--threshold 0.01] [--ext a.so,b.so] [--kinds scap,matmul]
                                        [--schema 2] [--threads 0] [--clock wall|thread] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as opset
from openvino.utils.node_factory import NodeFactory

try:
    from scap_ov import ops, packing
    from scap_ov.extension import check_compatible, extension_path
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scap_ov import ops, packing
    from scap_ov.extension import check_compatible, extension_path


def build(kind: str, n: int, shape: list[int], ic: int, rng, factory: NodeFactory | None = None,
          per_channel: bool = False, threshold: float = 0.01, schema: int = ops.COMPACT_SCHEMA_VERSION) -> ov.Model:
    """A chain of n layers [ic -> ic] on a Parameter of the given (partial) shape."""
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape(shape))
    y = x.output(0)
    for i in range(n):
        w = (rng.standard_normal((ic, ic), dtype=np.float32) / np.sqrt(ic)).astype(np.float32)
        if kind == "scap":
            thr = np.full(ic, threshold, np.float32) if per_channel else threshold
            ops._FACTORY = factory  # make_scap_fc(native=True) creates the op through this library
            y = ops.make_scap_fc(y, packing.pack_float(w), 0.0, thr, None, schema_version=schema, native=True,
                                 name=f"fc{i}")
        else:
            y = opset.matmul(y, ov.op.Constant(np.ascontiguousarray(w)), False, True).output(0)
    return ov.Model([y], [x], f"{kind}_{n}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="layers in the long chain (default 64)")
    ap.add_argument("--reps", type=int, default=400, help="timed rounds (default 400)")
    ap.add_argument("--rank", type=int, default=2, choices=(2, 3), help="rank of x (default 2)")
    ap.add_argument("--ic", type=int, default=64, help="IC = OC of every layer (default 64)")
    ap.add_argument("--per-channel", action="store_true", help="per-input-channel threshold vector [IC]")
    ap.add_argument("--threshold", type=float, default=0.01,
                    help="SCAP threshold (x ~ N(0, 1); 100 prunes everything, leaving only the overhead)")
    ap.add_argument("--ext", default="",
                    help="comma-separated extension libraries to compare in one process (default: the one "
                         "scap_ov.extension finds, $SCAP_OV_EXTENSION_PATH first)")
    ap.add_argument("--kinds", default="scap,matmul", help="comma-separated subset of scap,matmul")
    ap.add_argument("--schema", default=str(ops.COMPACT_SCHEMA_VERSION),
                    help="comma-separated op schema versions to compare: 1 (seven inputs), 2 (compact; default)")
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS (0 = plugin default)")
    ap.add_argument("--clock", default="wall", choices=("wall", "thread"),
                    help="wall time, or CPU time of the calling thread (use with --threads 1)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    core = ov.Core()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if args.threads:
        cfg["INFERENCE_NUM_THREADS"] = str(args.threads)
    rng = np.random.default_rng(0)
    ic = args.ic
    shapes = {"static": [1] * (args.rank - 1) + [ic], "dynamic": [-1] * (args.rank - 1) + [ic]}
    x = rng.standard_normal(shapes["static"], dtype=np.float32)

    libs = [p for p in args.ext.split(",") if p] or [extension_path()]
    schemas = [int(v) for v in args.schema.split(",")]
    variants = []  # (name, library or None, schema)
    for kind in args.kinds.split(","):
        if kind == "scap":
            for schema in schemas:
                tag = "" if len(schemas) == 1 else f"/s{schema}"
                variants += [(("scap" if len(libs) == 1 else f"scap[{i}]") + tag, lib, schema)
                             for i, lib in enumerate(libs)]
        else:
            variants.append((kind, None, None))

    reqs = {}
    factories = []  # every factory (and so its library) stays loaded while its ops exist
    for name, lib, schema in variants:
        factory = None
        if lib is not None:
            check_compatible(lib)
            factory = next((f for known, f in factories if known == lib), None)
            if factory is None:
                factory = NodeFactory()
                factory.add_extension(lib)
                factories.append((lib, factory))
        for dyn, shape in shapes.items():
            for n in (1, args.n):
                model = build(name.split("[")[0].split("/")[0], n, shape, ic, rng, factory, args.per_channel,
                              args.threshold, schema or ops.COMPACT_SCHEMA_VERSION)
                req = core.compile_model(model, "CPU", cfg).create_infer_request()
                req.set_input_tensor(0, ov.Tensor(x))
                reqs[(name, dyn, n)] = req

    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    keys = list(reqs)
    times = {key: [] for key in keys}
    for _ in range(20):
        for key in keys:
            reqs[key].infer()
    for r in range(args.reps):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            t0 = clock()
            reqs[key].infer()
            times[key].append(clock() - t0)
    stats = {"median": lambda v: statistics.median(v),
             "p10": lambda v: statistics.quantiles(v, n=10)[0]}  # p10: less sensitive to a loaded machine

    result = {"openvino": ov.get_version(), "libs": {name: lib for name, lib, _ in variants if lib},
              "schemas": {name: schema for name, _, schema in variants if schema}, "clock": args.clock,
              "n": args.n, "reps": args.reps, "rank": args.rank, "ic": ic, "threads": args.threads,
              "per_channel_threshold": args.per_channel, "threshold": args.threshold,
              "per_op_us": {}, "infer_us": {}, "per_op_us_p10": {}}
    print(f"OpenVINO {ov.get_version()}")
    for name, lib, schema in variants:
        if lib:
            print(f"  {name}: {lib} (schema_version {schema})")
    print(f"x rank {args.rank}, chain N={args.n}, IC=OC={ic}, threshold {args.threshold} "
          f"{'[IC]' if args.per_channel else 'scalar'}, {args.reps} interleaved rounds, {args.clock} clock")
    print(f"{'variant':<18}{'1-layer infer us':>18}{f'{args.n}-layer infer us':>18}{'per-op us':>12}"
          f"{'per-op p10':>12}")
    for name, _, _ in variants:
        for dyn in shapes:
            t1, tn = (stats["median"](times[(name, dyn, n)]) * 1e6 for n in (1, args.n))
            per = (tn - t1) / (args.n - 1)
            p1, pn = (stats["p10"](times[(name, dyn, n)]) * 1e6 for n in (1, args.n))
            per10 = (pn - p1) / (args.n - 1)
            result["per_op_us"][f"{name}_{dyn}"] = round(per, 3)
            result["per_op_us_p10"][f"{name}_{dyn}"] = round(per10, 3)
            result["infer_us"][f"{name}_{dyn}"] = {"1": round(t1, 2), str(args.n): round(tn, 2)}
            print(f"{name + ' ' + dyn:<18}{t1:>18.1f}{tn:>18.1f}{per:>12.2f}{per10:>12.2f}")
    for name, _, _ in variants:
        for key in ("per_op_us", "per_op_us_p10"):
            d = result[key][f"{name}_dynamic"] - result[key][f"{name}_static"]
            result[key][f"{name}_dynamic_minus_static"] = round(d, 3)
        print(f"{name}: dynamic - static = {result['per_op_us'][f'{name}_dynamic_minus_static']:.2f} us per op "
              f"(p10: {result['per_op_us_p10'][f'{name}_dynamic_minus_static']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
