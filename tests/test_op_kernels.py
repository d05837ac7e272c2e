"""SCAPFullyConnected numerics: compiled CPU results vs a numpy oracle and vs the scalar reference kernel.

Every example builds a tiny model with the C++ op, compiles it on CPU (f32 inference precision, 1 or 2
threads) and runs it under each kernel ISA the machine has. The ISA is selected through ``SCAP_OV_ISA``,
which the extension reads on every evaluate() call, so one process can compare the scalar reference
(the oracle kernel) with the SIMD paths without a subprocess per example.

``SCAP_OV_FUZZ_EXAMPLES`` raises the number of hypothesis examples per weight format (default 12).
``SCAP_OV_FUZZ_REPORT=path.json`` turns the random-case property test into a fuzz campaign (``scripts/fuzz.sh``):
a mismatching case is recorded (with the numpy seed that rebuilds it) instead of stopping hypothesis, every
generated case runs, and at the end of the module the JSON report (cases, mismatches, duration, seed, ISAs) is
written and the run fails if any case mismatched.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scap_ov import ops, packing
from scap_ov.extension import extension_path
from scap_ov.machine import ISAS, cpu_description, dynamic_quantization_chunk, has_vnni, kernel_isa

FUZZ_EXAMPLES = int(os.environ.get("SCAP_OV_FUZZ_EXAMPLES", "12"))
WEIGHT_TYPES = ("f32", "f16", "bf16", "i8", "u8", "i4", "u4")
FUZZ_REPORT = os.environ.get("SCAP_OV_FUZZ_REPORT")


@pytest.fixture(scope="module")
def core() -> ov.Core:
    c = ov.Core()
    c.add_extension(extension_path())
    return c


@pytest.fixture(autouse=True)
def quantized_prefill(monkeypatch):
    """The extension's default (conftest.py turns it off for model-level tests): prefill on compressed weights
    with activations quantized in chunks of 32, checked against quantized_oracle."""
    monkeypatch.setenv("SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE", "32")


@contextmanager
def env_var(key: str, value: str | None):
    """Set (or, with None, unset) an environment variable the extension reads per call, then restore it."""
    old = os.environ.get(key)
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def isa(name: str | None):
    return env_var("SCAP_OV_ISA", name)


def dq_chunk(value: str | None):
    return env_var("SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE", value)


# --------------------------------------------------------------------------------------------------------
# case generation: weights in the NNCF / OpenVINO layout, packed by scap_ov.packing
# --------------------------------------------------------------------------------------------------------

class Case:
    """One FC: the oracle's view (dense float64 [OC, IC] and magnitude bound) and the packed weights."""

    def __init__(self, rng: np.random.Generator, wtype: str, ic: int, oc: int, group: int | None,
                 scale_f16: bool = True):
        self.wtype, self.ic, self.oc = wtype, ic, oc
        if wtype in packing.FLOAT_TYPES:
            w = rng.standard_normal((oc, ic)).astype(np.float32)
            if wtype == "f16":
                w = w.astype(np.float16).astype(np.float32)
            elif wtype == "bf16":
                w = packing.bf16_bits_to_f32(packing.f32_to_bf16_bits(w))
            self.packed = packing.pack_float(w, wtype)
            self.wdeq = w.astype(np.float64)
            self.wmag = np.abs(self.wdeq)
            return
        lo, hi = {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15)}[wtype]
        g = ic if group is None else group
        ng = ic // g
        wq = rng.integers(lo, hi + 1, size=(oc, ng, g))
        sdt = np.float16 if scale_f16 else np.float32
        scale = (rng.uniform(0.001, 0.1, size=(oc, ng, 1)) * rng.choice([-1, 1], size=(oc, ng, 1))).astype(sdt)
        zp = rng.integers(lo, hi + 1, size=(oc, ng, 1)) if wtype in ("u8", "u4") else None
        if group is None:  # per-output-channel: NNCF keeps [OC, IC] and [OC, 1]
            self.packed = packing.pack_compressed(wq.reshape(oc, ic), scale.reshape(oc, 1),
                                                  None if zp is None else zp.reshape(oc, 1), wtype, sdt)
        else:
            self.packed = packing.pack_compressed(wq, scale, zp, wtype, sdt)
        s64 = scale.astype(np.float64)
        wz = wq - (0 if zp is None else zp)
        self.wdeq = (wz * s64).reshape(oc, ic)
        self.wmag = ((np.abs(wq) + (0 if zp is None else np.abs(zp))) * np.abs(s64)).reshape(oc, ic)


def oracle(x: np.ndarray, case: Case, mode, thr, bias):
    """float64 oracle: y = where(|x - m| > tau, x - m, 0) @ Wdeq^T + bias, plus an error bound."""
    # centring and the keep decision in float32, exactly as the op does them; the product in float64
    with np.errstate(invalid="ignore"):
        d = x.reshape(-1, case.ic).astype(np.float32) - np.asarray(mode, np.float32)
        keep = np.abs(d) > np.asarray(thr, np.float32)
    dd = np.where(keep, d, 0.0).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        y = dd @ case.wdeq.T
        bound = np.abs(dd) @ case.wmag.T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.reshape(*x.shape[:-1], case.oc), bound.reshape(*x.shape[:-1], case.oc), keep


def quantized_oracle(x: np.ndarray, case: Case, mode, thr, bias, chunk: int):
    """float64 oracle of the dense path with dynamically quantized activations (kernel.hpp, QuantActs): each
    token's masked, centred activations are cut into chunks of `chunk` channels inside each weight group and
    quantized to int8 (q = round half to even(d * (127 / max|d|)), scale max|d| / 127, both in float32); the
    product with the dequantized weights is exact in float64. Tokens with a non-finite kept activation take the
    f32 path (the plain oracle)."""
    exact, bound, keep = oracle(x, case, mode, thr, bias)
    with np.errstate(invalid="ignore"):
        d = x.reshape(-1, case.ic).astype(np.float32) - np.asarray(mode, np.float32)
    d = np.where(keep.reshape(d.shape), d, np.float32(0))
    gs = case.packed.group_size if case.packed.group_size else case.ic
    deq = np.zeros(d.shape, np.float64)
    bad = np.zeros(d.shape[0], bool)
    for g0 in range(0, case.ic, gs):
        for j0 in range(g0, g0 + gs, chunk):
            j1 = min(g0 + gs, j0 + chunk)
            blk = d[:, j0:j1]
            amax = np.abs(blk).max(axis=1)
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                inv = np.float32(127) / amax
                q = np.clip(np.rint(blk * inv[:, None]), -127, 127)
            ok = np.isfinite(inv) & np.isfinite(amax)
            bad |= ~np.isfinite(amax)
            sa = np.where(ok, amax / np.float32(127), np.float32(0)).astype(np.float64)
            deq[:, j0:j1] = np.where(ok[:, None], q, 0).astype(np.float64) * sa[:, None]
    y = deq @ case.wdeq.T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    y = y.reshape(exact.shape)
    flat_bad = bad.reshape(exact.shape[:-1])
    y[flat_bad] = exact[flat_bad]
    return y, bound


def takes_quantized_path(isa_name: str, case: Case, tokens: int) -> bool:
    """Whether the extension runs this call with dynamically quantized activations (kernels/dispatch.cpp): one
    token (the decode) or more than 8 (the dense path); 2..8 tokens (the union decode) stay exact."""
    gs = case.packed.group_size if case.packed.group_size else case.ic
    if case.wtype in packing.FLOAT_TYPES or 1 < tokens <= 8 or gs % 4 or not dynamic_quantization_chunk():
        return False
    effective = effective_isas()[isa_name]
    return effective == "scalar" or (effective == "avx512" and has_vnni())


def assert_close(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str, rtol=1e-4):
    fin = np.isfinite(want) & np.isfinite(bound)
    assert got.shape == want.shape, what
    # where the exact result is Inf / NaN (an Inf activation was kept) the kernel must not be finite either
    assert not np.isfinite(got[~fin]).any(), f"{what}: finite output where the oracle is not"
    err = np.abs(got[fin].astype(np.float64) - want[fin])
    tol = rtol * bound[fin] + 1e-5
    bad = err > tol
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} outputs off; max err {err.max():.3g}, "
                           f"worst at err {err[bad][0]:.3g} tol {tol[bad][0]:.3g}")


def build_model(case: Case, x_shape, mode, thr, bias) -> ov.Model:
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape(x_shape))
    y = ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias, native=True)
    return ov.Model([y], [x], "scap_fc")


def compile_model(core, model, threads: int):
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})


def run_all_isas(compiled, x: np.ndarray) -> dict[str, np.ndarray]:
    req = compiled.create_infer_request()
    out = {}
    for name in ISAS:
        with isa(name):
            out[name] = req.infer([x])[0].copy()
    return out


def threshold_for(rng, d_abs: np.ndarray, sparsity: float, vector: bool, ic: int):
    flat = d_abs[np.isfinite(d_abs)]
    if flat.size == 0:
        return np.float32(0.0)
    if vector:
        qs = np.clip(sparsity + rng.uniform(-0.1, 0.1, size=ic), 0.0, 1.0)
        return np.quantile(flat, qs).astype(np.float32)
    return np.float32(np.quantile(flat, sparsity))


def check_case(core, rng, wtype, ic, oc, group, m_tokens, sparsity, vec_mode, vec_thr, nonfinite,
               threads, with_bias, scale_f16=True, dynamic=True, lead=()):
    case = Case(rng, wtype, ic, oc, group, scale_f16)
    x = rng.standard_normal((*lead, m_tokens, ic)).astype(np.float32)
    if nonfinite and x.size >= 3:
        flat = x.reshape(-1)
        pos = rng.choice(flat.size, size=3, replace=False)
        flat[pos] = [np.nan, np.inf, -np.inf]
    mode = (rng.standard_normal(ic) * 0.1).astype(np.float32) if vec_mode else np.float32(rng.standard_normal() * 0.1)
    thr = threshold_for(rng, np.abs(x.reshape(-1, ic) - mode), sparsity, vec_thr, ic)
    if sparsity <= 0.0:  # nothing pruned (x is continuous: no exact zeros after centring)
        thr = np.zeros(ic, np.float32) if vec_thr else np.float32(0.0)
    if sparsity >= 1.0:  # everything pruned
        big = np.finfo(np.float32).max
        thr = np.full(ic, big, np.float32) if vec_thr else np.float32(big)
    bias = rng.standard_normal(oc).astype(np.float32) if with_bias else None
    x_shape = [-1] * (x.ndim - 1) + [ic] if dynamic else list(x.shape)
    compiled = compile_model(core, build_model(case, x_shape, mode, thr, bias), threads)
    want, bound, keep = oracle(x, case, mode, thr, bias)
    tokens = int(np.prod(x.shape[:-1]))
    want_q = None
    if any(takes_quantized_path(name, case, tokens) for name in ISAS):
        want_q, _ = quantized_oracle(x, case, mode, thr, bias, dynamic_quantization_chunk())
    outs = run_all_isas(compiled, x)
    tag = f"{wtype} IC={ic} OC={oc} g={group} M={m_tokens} s={sparsity:.2f} thr={threads}"
    for name, got in outs.items():
        assert got.shape == (*x.shape[:-1], oc)
        quantized = takes_quantized_path(name, case, tokens)
        assert_close(got, want_q if quantized else want, bound, f"{tag} [{name} vs oracle{' (dq)' if quantized else ''}]")
        if name != "scalar" and quantized == takes_quantized_path("scalar", case, tokens):
            assert_close(got, outs["scalar"].astype(np.float64), bound, f"{tag} [{name} vs scalar]")
    return keep


# --------------------------------------------------------------------------------------------------------
# property tests
# --------------------------------------------------------------------------------------------------------

IC_CHOICES = [1, 3, 17, 31, 64, 96, 100, 128, 130, 192, 256, 257, 320, 384]


@st.composite
def fc_cases(draw, wtype):
    ic = draw(st.one_of(st.sampled_from(IC_CHOICES), st.integers(1, 300)))
    oc = draw(st.one_of(st.integers(1, 80), st.integers(100, 260)))
    if wtype in ("i4", "u4"):
        oc += oc % 2
    group = None
    if wtype not in packing.FLOAT_TYPES:
        options = [None] + [g for g in (32, 64, 128) if ic % g == 0 and g < ic]
        group = draw(st.sampled_from(options))
    return dict(
        ic=ic, oc=oc, group=group,
        m_tokens=draw(st.sampled_from([1, 2, 3, 17, 64])),
        sparsity=draw(st.one_of(st.sampled_from([0.0, 0.5, 0.7, 0.9, 1.0]), st.floats(0.0, 1.0))),
        vec_mode=draw(st.booleans()), vec_thr=draw(st.booleans()),
        nonfinite=draw(st.booleans()), threads=draw(st.sampled_from([1, 2])),
        with_bias=draw(st.booleans()), scale_f16=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def effective_isas() -> dict[str, str]:
    """SCAP_OV_ISA cap -> the kernel ISA the extension runs with it on this CPU."""
    best = kernel_isa()
    return {cap: min(cap, best, key=ISAS.index) for cap in ISAS}


class FuzzStats:
    """Counts of one fuzz campaign (SCAP_OV_FUZZ_REPORT) across the weight formats of this module."""

    def __init__(self, seed):
        self.seed = seed
        self.t0 = time.time()
        self.cases = {w: 0 for w in WEIGHT_TYPES}
        self.mismatches: list[dict] = []

    def report(self) -> dict:
        duration = time.time() - self.t0
        total = sum(self.cases.values())
        return {
            "test": "tests/test_op_kernels.py::test_random_cases_match_oracle_and_scalar",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cases": total,
            "cases_per_weight_type": self.cases,
            "mismatches": len(self.mismatches),
            "mismatch_cases": self.mismatches[:50],
            "duration_s": round(duration, 1),
            "cases_per_s": round(total / duration, 3) if duration > 0 else None,
            "hypothesis_seed": self.seed,
            "examples_per_weight_type": FUZZ_EXAMPLES,
            "isas_compared": effective_isas(),  # each case: every cap's output vs the oracle and vs scalar
            "cpu": cpu_description(),
            "extension": extension_path(),
            "sanitized": "libasan" in os.environ.get("LD_PRELOAD", ""),
        }

    def write(self, complete: bool) -> dict:
        """(Re)write the report; also done every 100 cases (complete=false) so an interrupted run leaves one."""
        rep = {"complete": complete, **self.report()}
        path = Path(FUZZ_REPORT)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(rep, indent=1) + "\n")
        tmp.replace(path)
        return rep


@pytest.fixture(scope="module")
def fuzz_stats(request):
    if not FUZZ_REPORT:
        yield None
        return
    stats = FuzzStats(request.config.getoption("hypothesis_seed", None))
    yield stats
    rep = stats.write(complete=True)
    print(f"\nfuzz: {rep['cases']} cases, {rep['mismatches']} mismatches, {rep['duration_s']} s "
          f"({rep['cases_per_s']} cases/s), seed {rep['hypothesis_seed']} -> {FUZZ_REPORT}")
    if stats.mismatches:
        pytest.fail(f"fuzz: {len(stats.mismatches)} of {rep['cases']} cases mismatched; see {FUZZ_REPORT}")


@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_cases_match_oracle_and_scalar(core, fuzz_stats, wtype, data):
    p = data.draw(fc_cases(wtype))
    seed = p.pop("seed")
    rng = np.random.default_rng(seed)
    if fuzz_stats is None:
        check_case(core, rng, wtype, **p)
        return
    fuzz_stats.cases[wtype] += 1
    try:
        check_case(core, rng, wtype, **p)
    except Exception as exc:  # record and go on: the campaign counts every mismatching case
        # rebuild with: check_case(core, np.random.default_rng(seed), wtype, **params)
        fuzz_stats.mismatches.append(dict(wtype=wtype, seed=seed, params=p, error=str(exc)[:500]))
    if sum(fuzz_stats.cases.values()) % 100 == 0:
        fuzz_stats.write(complete=False)


# --------------------------------------------------------------------------------------------------------
# deterministic edge cases
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_none_and_all_pruned(core, wtype, sparsity):
    rng = np.random.default_rng(7)
    group = 64 if wtype not in packing.FLOAT_TYPES else None
    keep = check_case(core, rng, wtype, 256, 130, group, 3, sparsity, False, False, False, 2, True)
    if sparsity == 0.0:
        assert keep.all()
    else:
        assert not keep.any()


def test_all_pruned_gives_bias(core):
    rng = np.random.default_rng(1)
    case = Case(rng, "u4", 128, 64, 32)
    bias = rng.standard_normal(64).astype(np.float32)
    compiled = compile_model(core, build_model(case, [-1, 128], 0.0, 1e30, bias), 2)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    for name, got in run_all_isas(compiled, x).items():
        np.testing.assert_array_equal(got, np.broadcast_to(bias, (5, 64)), err_msg=name)


@pytest.mark.parametrize("m_tokens", [1, 2, 3, 4, 5, 8, 9, 17, 64])
@pytest.mark.parametrize("wtype", ["f32", "i4", "u8"])
def test_token_counts_and_leading_dims(core, wtype, m_tokens):
    rng = np.random.default_rng(m_tokens)
    group = 32 if wtype != "f32" else None
    check_case(core, rng, wtype, 192, 200, group, m_tokens, 0.5, True, True, True, 2, True, lead=(1,))
    check_case(core, rng, wtype, 192, 200, group, m_tokens, 0.5, False, False, False, 1, False,
               dynamic=False, lead=(2,))


@pytest.mark.parametrize("wtype, group", [("i8", None), ("u8", None), ("i4", 32), ("u4", 64), ("i4", 128)])
@pytest.mark.parametrize("chunk", ["0", "6", "16", "32", "512", "100000"])
def test_dynamic_quantization_chunks(core, wtype, group, chunk):
    """Prefill and one-token decode on compressed weights quantize activations per chunk
    (SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE, read per call; 0 = exact f32): every ISA matches the oracle of the
    path it takes, for chunks that are not a multiple of 4 (6 -> 4), shorter than, equal to and longer than the
    weight group, and past the 512 cap; one token on short rows (split by rows into chunk-aligned shares) and on
    rows past the row-split limit (split by columns, with a partial last line)."""
    rng = np.random.default_rng(int(chunk) % 1000 + 5)
    with dq_chunk(chunk):
        check_case(core, rng, wtype, 256, 150, group, 40, 0.4, True, True, True, 2, True)
        check_case(core, rng, wtype, 256, 150, group, 300, 0.4, False, False, False, 1, False)  # two 256-token blocks
        check_case(core, rng, wtype, 512, 150, group, 1, 0.3, True, True, False, 2, True)
        check_case(core, rng, wtype, 128, 16500 if wtype in ("i4", "u4") else 8300, group, 1, 0.5, False, False,
                   False, 2, True)


@pytest.mark.parametrize("value", ["abc", "32x", "-4", "+8", " 8", "1.5", "99999999999999999999999"])
def test_dynamic_quantization_setting_must_be_an_integer(core, value):
    """A malformed SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE fails compilation with a message naming it; set after
    compiling (where an error from evaluate() would not reach the caller) it gives the exact f32 prefill, never a
    silently wrong result."""
    rng = np.random.default_rng(2)
    case = Case(rng, "i8", 64, 32, None)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    message = "SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE='.*' is not a non-negative integer"
    static = compile_model(core, build_model(case, [16, 64], np.float32(0.0), np.float32(0.1), None), 1)
    dynamic = compile_model(core, build_model(case, [-1, 64], np.float32(0.0), np.float32(0.1), None), 1)
    exact, bound, _ = oracle(x, case, np.float32(0.0), np.float32(0.1), None)
    with dq_chunk(value):
        with pytest.raises(ValueError, match="not a non-negative integer"):
            dynamic_quantization_chunk()
        with pytest.raises(RuntimeError, match=message):
            compile_model(core, build_model(case, [16, 64], np.float32(0.0), np.float32(0.1), None), 1)
        with isa(None):
            for name, compiled in (("static", static), ("dynamic", dynamic)):
                got = compiled.create_infer_request().infer([x])[0]
                assert_close(got, exact, bound, f"{value}: {name} graph")


@pytest.mark.parametrize("wtype, group", [("i8", None), ("u4", 32)])
def test_dynamic_quantization_is_taken_and_stays_close(core, wtype, group):
    """Where the CPU has VNNI (or under the scalar kernel), prefill and one-token decode on compressed weights
    really are quantized (they differ from the exact product) and stay within the error of 8-bit activations; the
    2..8-token decode stays exact."""
    rng = np.random.default_rng(21)
    case = Case(rng, wtype, 512, 96, group)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    compiled = compile_model(core, build_model(case, [-1, 512], np.float32(0.0), np.float32(0.3), None), 2)
    exact, bound, _ = oracle(x, case, np.float32(0.0), np.float32(0.3), None)
    names = [n for n in ISAS if takes_quantized_path(n, case, 64)]
    assert "scalar" in names
    req = compiled.create_infer_request()
    for name in names:
        with isa(name):
            got = req.infer([x])[0].astype(np.float64)
            one = req.infer([x[:1]])[0].astype(np.float64)
            four = req.infer([x[:4]])[0].astype(np.float64)
        for what, y, want in (("prefill", got, exact), ("one token", one, exact[:1])):
            rel = np.abs(y - want) / bound[: len(y)]
            assert rel.max() > 1e-6, f"{name}: {what} equals the exact product: not quantized"
            assert rel.max() < 0.02 and np.median(rel) < 2e-3, f"{name}: {what} quantization error {rel.max():.3g}"
        assert_close(four, exact[:4], bound[:4], f"{name} four tokens")


def test_nan_pruned_inf_kept(core):
    rng = np.random.default_rng(3)
    case = Case(rng, "f32", 16, 8, None)
    compiled = compile_model(core, build_model(case, [1, 16], 0.0, 0.5, None), 1)
    x = np.zeros((1, 16), np.float32)
    x[0, 0] = np.nan
    x[0, 1] = 2.0
    for name, got in run_all_isas(compiled, x).items():
        np.testing.assert_allclose(got[0], 2.0 * case.wdeq[:, 1], rtol=1e-6, err_msg=name)
    x[0, 2] = np.inf
    for name, got in run_all_isas(compiled, x).items():
        assert not np.isfinite(got).any(), name


@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
def test_larger_layer_all_paths(core, wtype):
    """A layer big enough for full SIMD tiles, several k-blocks of the dense path and a 2-thread split."""
    rng = np.random.default_rng(11)
    group = 128 if wtype not in packing.FLOAT_TYPES else None
    for m_tokens in (1, 4, 33):
        check_case(core, rng, wtype, 640, 390, group, m_tokens, 0.6, False, True, False, 2, True)


@pytest.mark.parametrize("wtype, oc", [("f32", 2056), ("bf16", 4104), ("i8", 8200), ("u4", 16400)])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_long_rows_split_by_columns(core, wtype, oc, sparsity):
    """One-token decode with rows over 8 KiB splits the columns across threads (shorter rows split the kept
    rows, which every other case here exercises): both splits must match the oracle."""
    rng = np.random.default_rng(oc)
    group = 32 if wtype not in packing.FLOAT_TYPES else None
    check_case(core, rng, wtype, 64, oc, group, 1, sparsity, True, False, False, 2, True)


def test_twin_save_read_roundtrip(core, tmp_path):
    """Python twin -> ov.save_model -> read_model with the extension -> compile -> same numbers."""
    rng = np.random.default_rng(5)
    case = Case(rng, "u4", 256, 96, 64)
    mode = (rng.standard_normal(256) * 0.05).astype(np.float32)
    thr = np.float32(0.6)
    bias = rng.standard_normal(96).astype(np.float32)
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, -1, 256]))
    y = ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias)
    assert isinstance(y.get_node(), ops.SCAPFullyConnected)
    assert list(y.get_partial_shape()[2:]) == [ov.Dimension(96)]
    model = ov.Model([y], [x], "twin")
    path = tmp_path / "twin.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    xml = path.read_text()
    assert 'type="SCAPFullyConnected"' in xml and 'version="extension"' in xml and 'schema_version="2"' in xml
    read = core.read_model(str(path))
    fc = [n for n in read.get_ops() if n.get_type_name() == "SCAPFullyConnected"]
    assert len(fc) == 1 and not isinstance(fc[0], ops.SCAPFullyConnected)
    assert fc[0].input_value(1).get_element_type() == ov.Type.u4  # still the packed integer constant
    compiled = compile_model(core, read, 2)
    xv = rng.standard_normal((2, 3, 256)).astype(np.float32)
    got = compiled([xv])[0]
    want, bound, _ = oracle(xv, case, mode, thr, bias)
    assert_close(got, want, bound, "round trip")
    native = compile_model(core, build_model(case, [-1, -1, 256], mode, thr, bias), 2)
    np.testing.assert_allclose(got, native([xv])[0], rtol=1e-6, atol=1e-6)


def test_ir_constants_at_unaligned_offsets(core, tmp_path):
    """The IR .bin packs constants without padding, and the CPU plugin hands evaluate() the mapped file: here
    mode / threshold / bias follow 2-byte-sized ones, so they are not 4-byte aligned (UBSan found float reads
    of such pointers; the op copies them). Results must still match the oracle on every ISA."""
    rng = np.random.default_rng(12)
    case = Case(rng, "i8", 35, 130, None)  # 35 * 130 weight bytes + 260 f16 scale bytes: not a multiple of 4
    mode = (rng.standard_normal(35) * 0.1).astype(np.float32)
    thr = np.full(35, 0.3, np.float32)
    bias = rng.standard_normal(130).astype(np.float32)
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, 35]))
    path = tmp_path / "unaligned.xml"
    ov.save_model(ov.Model([ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias)], [x]), str(path),
                  compress_to_fp16=False)
    offsets = [int(ln.split('offset="')[1].split('"')[0]) for ln in path.read_text().splitlines()
               if 'element_type="f32"' in ln and 'offset="' in ln and 'size="1"' not in ln]
    assert len(offsets) == 3 and all(o % 4 for o in offsets), offsets  # the case this test is about
    compiled = compile_model(core, core.read_model(str(path)), 2)
    for m_tokens in (1, 3, 17):
        xv = rng.standard_normal((m_tokens, 35)).astype(np.float32)
        want, bound, _ = oracle(xv, case, mode, thr, bias)
        for name, got in run_all_isas(compiled, xv).items():
            assert_close(got, want, bound, f"unaligned constants M={m_tokens} [{name}]")


@pytest.mark.parametrize("wtype", ["f16", "bf16", "i4", "u4", "u8"])
def test_compiled_model_keeps_packed_weight_types(core, wtype):
    """The CPU plugin must hand evaluate() the packed constants (no f16->f32 or u4->u8 copy of the weights)."""
    rng = np.random.default_rng(2)
    case = Case(rng, wtype, 128, 64, 32 if wtype not in packing.FLOAT_TYPES else None)
    compiled = compile_model(core, build_model(case, [-1, 128], 0.0, 0.1, None), 1)
    ref = [n for n in compiled.get_runtime_model().get_ops() if n.get_rt_info()["layerType"].astype(str) == "Reference"]
    assert len(ref) == 1
    assert ref[0].input(1).get_element_type() == case.packed.ov_type
    if case.packed.scales is not None:
        assert ref[0].input(2).get_element_type() == ov.Type.f16
    if case.packed.zero_points is not None:
        assert ref[0].input(3).get_element_type() == case.packed.ov_type


def test_long_prompt_is_processed_in_blocks(core):
    """More tokens than one dense block (256): every block must be computed and written."""
    rng = np.random.default_rng(9)
    check_case(core, rng, "u4", 96, 50, 32, 600, 0.5, True, False, False, 2, True)


def test_rank1_and_empty_token_inputs(core):
    rng = np.random.default_rng(4)
    case = Case(rng, "i8", 40, 24, None)
    compiled = compile_model(core, build_model(case, [40], 0.0, 0.3, None), 1)
    x = rng.standard_normal(40).astype(np.float32)
    if takes_quantized_path(kernel_isa(), case, 1):  # one token on int8 weights: quantized where there is VNNI
        want, bound = quantized_oracle(x[None], case, 0.0, 0.3, None, dynamic_quantization_chunk())
    else:
        want, bound, _ = oracle(x[None], case, 0.0, 0.3, None)
    got = compiled([x])[0]
    assert got.shape == (24,)
    assert_close(got[None], want, bound, "rank-1 x")
    compiled = compile_model(core, build_model(case, [-1, 40], 0.0, 0.3, None), 1)
    assert compiled([np.zeros((0, 40), np.float32)])[0].shape == (0, 24)


@pytest.mark.parametrize("wtype", ["f32", "u4", "i8"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_compact_form_matches_seven_input_form(core, wtype, per_channel):
    """make_scap_fc builds the compact op (schema_version 2: only inputs that carry data); the seven-input
    form (schema_version 1) must give bit-identical results, on static and dynamic shapes."""
    rng = np.random.default_rng(11)
    case = Case(rng, wtype, 128, 64, 32)
    mode = (rng.standard_normal(128) * 0.05).astype(np.float32) if per_channel else np.float32(0.01)
    thr = (rng.uniform(0.2, 0.8, 128)).astype(np.float32) if per_channel else np.float32(0.55)
    bias = rng.standard_normal(64).astype(np.float32) if per_channel else None
    xv = rng.standard_normal((1, 3, 128)).astype(np.float32)
    for shape in ([1, 3, 128], [-1, -1, 128]):
        outs = {}
        for schema in (1, 2):
            x = ov.op.Parameter(ov.Type.f32, ov.PartialShape(shape))
            y = ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias, schema_version=schema, native=True)
            n_inputs = y.get_node().get_input_size()
            if schema == 2:
                expect = 2 + (wtype != "f32") + (wtype == "u4") + 3 * per_channel
                assert n_inputs == expect, (wtype, per_channel, n_inputs)
            else:
                assert n_inputs == 7
            outs[schema] = compile_model(core, ov.Model([y], [x]), 2)([xv])[0]
        np.testing.assert_array_equal(outs[1], outs[2])
        want, bound, _ = oracle(xv, case, mode, thr, bias)
        assert_close(outs[2], want, bound, f"{wtype} compact")


def test_compact_twin_save_read_roundtrip_keeps_threshold_bits(core, tmp_path):
    """Scalar mode / threshold become attributes of the compact op: an IR round trip must keep them exact."""
    rng = np.random.default_rng(12)
    case = Case(rng, "f32", 64, 32, None)
    thr, mode = np.float32(0.123456789), np.float32(-0.0123456789)
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, -1, 64]))
    y = ops.make_scap_fc(x.output(0), case.packed, mode, thr, None)
    assert isinstance(y.get_node(), ops.SCAPFullyConnected) and y.get_node().get_input_size() == 2
    path = tmp_path / "compact.xml"
    ov.save_model(ov.Model([y], [x]), str(path), compress_to_fp16=False)
    read = core.read_model(str(path))
    fc = [n for n in read.get_ops() if n.get_type_name() == "SCAPFullyConnected"][0]
    attrs = fc.get_attributes()
    assert np.float32(attrs["threshold_value"]) == thr and np.float32(attrs["mode_value"]) == mode
    xv = rng.standard_normal((1, 2, 64)).astype(np.float32)
    got = compile_model(core, read, 1)([xv])[0]
    want, bound, _ = oracle(xv, case, mode, thr, None)
    assert_close(got, want, bound, "compact roundtrip")


@pytest.mark.parametrize("wtype", ["f32", "i8", "u4"])
def test_multi_output_form_equals_the_single_output_op_split(core, wtype, tmp_path):
    """The multi-output op (schema_version 3) must give, per output, exactly the columns of the single-output
    op, for one token (decode), a few tokens, and a prompt whose [M, OC] rows (3000 x 96 floats) exceed the 1 MiB
    buffer a thread keeps between calls, on static and dynamic shapes, native and after an IR round trip of the
    Python twin."""
    rng = np.random.default_rng(21)
    case = Case(rng, wtype, 128, 96, 32)
    widths = [64, 16, 16]
    mode = (rng.standard_normal(128) * 0.05).astype(np.float32)
    thr = rng.uniform(0.2, 0.8, 128).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, -1, 128]))
    single = compile_model(core, ov.Model([ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias, native=True)],
                                          [x]), 2)
    multi_out = ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias, native=True, output_channels=widths)
    node = multi_out.get_node()
    assert node.get_attributes()["schema_version"] == ops.MULTI_OUTPUT_SCHEMA_VERSION
    assert [node.get_output_partial_shape(i)[2].get_length() for i in range(3)] == widths
    multi = compile_model(core, ov.Model(node.outputs(), [x]), 2)
    twin = ops.make_scap_fc(x.output(0), case.packed, mode, thr, bias, output_channels=widths).get_node()
    path = tmp_path / "multi.xml"
    ov.save_model(ov.Model(twin.outputs(), [x]), str(path), compress_to_fp16=False)
    read = compile_model(core, core.read_model(str(path)), 1)
    static_x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([1, 1, 128]))
    static_node = ops.make_scap_fc(static_x.output(0), case.packed, mode, thr, bias, native=True,
                                   output_channels=widths).get_node()
    static = compile_model(core, ov.Model(static_node.outputs(), [static_x]), 2)
    for tokens in (1, 5, 3000):
        xv = rng.standard_normal((1, tokens, 128)).astype(np.float32)
        whole = single([xv])[0]
        parts = np.split(whole, np.cumsum(widths)[:-1], axis=-1)
        for compiled in (multi, read) + ((static,) if tokens == 1 else ()):
            got = compiled([xv])
            for i, part in enumerate(parts):
                np.testing.assert_array_equal(got[i], part, err_msg=f"{wtype} tokens={tokens} output {i}")
