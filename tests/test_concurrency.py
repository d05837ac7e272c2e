"""Parallel infer requests over 2 streams give bit-identical results to one request: the op holds no
mutable shared state."""
import numpy as np
import openvino as ov

import scap_ov
from conftest import compress, tiny_block_model
from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.layers import find_fcs
from scap_ov.transformations.fuse_cpu import apply_fusion, count_fused
from scap_ov.transformations.portable import apply_portable


def test_two_streams_are_bit_identical_to_a_single_request():
    core = scap_ov.register(ov.Core())
    base = compress(tiny_block_model(hidden=128, inter=256), "INT4_ASYM", 32)
    artifact = Artifact(fcs=[FCThreshold(fc.name, fc.layer_type, 0.02, 0.25, 0.5, 0.5, "zero")
                             for fc in find_fcs(base)])
    model = apply_fusion(apply_portable(base, artifact))
    assert count_fused(model) == 14
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1, m, 128)).astype(np.float32) for m in (1, 1, 3, 17, 1, 64, 2, 1)]
    single = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
    expected = [single(x)[0].copy() for x in inputs]
    parallel = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2})
    assert parallel.get_property("NUM_STREAMS") == 2
    # Plain infer requests, no Python callback: a callback makes the stream threads take the GIL, and a compiled
    # model destroyed while one of them still waits for it deadlocks (seen once under ASan on Zen 4: the main
    # thread, holding the GIL, joined a stream thread in ~CPUStreamsExecutor).
    requests = [parallel.create_infer_request() for _ in range(4)]
    for _ in range(3):
        for start in range(0, len(inputs), len(requests)):
            batch = list(enumerate(inputs))[start:start + len(requests)]
            for request, (_, x) in zip(requests, batch):
                request.start_async({0: x})
            for request, (i, _) in zip(requests, batch):
                request.wait()
                assert np.array_equal(request.get_output_tensor(0).data, expected[i]), i
