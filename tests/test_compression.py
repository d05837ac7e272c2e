"""Weight formats for export: validation before any work, group-size resolution, NNCF compression."""
import json

import pytest

from conftest import tiny_block_model
from scap_ov.compression import WeightFormat, config_fc_channels
from scap_ov.errors import ScapError
from scap_ov.pipeline import compress_weights, stored_weight_format


@pytest.mark.parametrize("fmt, message", [
    (WeightFormat("int2"), "unsupported weight format 'int2' (choose from fp32, fp16, int8, int4)"),
    (WeightFormat("fp16", sym=True), "--sym applies to int8 and int4 weights, not fp16"),
    (WeightFormat("int8", group_size=64), "--group-size applies to int4 weights only"),
    (WeightFormat("int4", group_size=0), "--group-size must be -1 (per output channel) or >= 2, got 0"),
    (WeightFormat("int4", group_size=1), "--group-size must be -1 (per output channel) or >= 2, got 1"),
])
def test_invalid_weight_formats_are_refused(fmt, message):
    with pytest.raises(ScapError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fmt.validate()


@pytest.mark.parametrize("channels, group_size", [([576, 1536], 64), ([4096, 11008], 128), ([96, 64], 32),
                                                  ([100, 60], -1)])
def test_default_int4_group_size_is_the_largest_that_divides_every_fc(channels, group_size):
    assert WeightFormat("int4").check_channels(channels).group_size == group_size


def test_explicit_group_size_must_divide_the_channels():
    with pytest.raises(ScapError, match="--group-size 128 does not divide the FC input channels 576; 64 divides"):
        WeightFormat("int4", 128).check_channels([576, 1536])
    assert WeightFormat("int4", -1).check_channels([576]).group_size == -1
    assert WeightFormat("int8").check_channels([576]).group_size is None


def test_fc_channels_from_a_transformers_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9}))
    assert sorted(config_fc_channels(tmp_path)) == [576, 576, 1536]
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 640, "head_dim": 256,
                                                                       "num_attention_heads": 4}}))
    assert sorted(config_fc_channels(tmp_path)) == [640, 1024]
    assert config_fc_channels(tmp_path / "missing") == []


@pytest.mark.parametrize("fmt, stored", [
    (None, "fp32"), (WeightFormat("fp32"), "fp32"), (WeightFormat("fp16"), "fp16"),
    (WeightFormat("int8"), "int8_asym"), (WeightFormat("int8", sym=True), "int8_sym"),
    (WeightFormat("int4"), "int4_asym_g32"), (WeightFormat("int4", 16, sym=True), "int4_sym_g16"),
    (WeightFormat("int4", -1, sym=True), "int4_sym"),
])
def test_compression_stores_the_requested_format(fmt, stored):
    model, name = compress_weights(tiny_block_model(), fmt)
    assert name == stored == stored_weight_format(model)


def test_an_already_compressed_model_is_not_compressed_again():
    model, stored = compress_weights(tiny_block_model(), WeightFormat("int4", 32))
    kept, name = compress_weights(model, None)
    assert kept is model and name == stored
    with pytest.raises(ScapError, match="FC weights are already int4_asym_g32; export it without --weight-format"):
        compress_weights(model, WeightFormat("int8"))
