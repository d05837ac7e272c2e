import json

import numpy as np
import pytest

from scap_ov.dataset import load_texts, model_inputs, token_windows
from scap_ov.errors import ScapError


class WordTokenizer:
    """Stands in for a HF tokenizer: one token per word."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}


def test_text_file_and_json_list(tmp_path):
    (tmp_path / "a.txt").write_text("one two three")
    (tmp_path / "b.json").write_text(json.dumps(["first text", "second text"]))
    assert load_texts(str(tmp_path / "a.txt"), ()) == ["one two three"]
    assert load_texts(str(tmp_path / "b.json"), ()) == ["first text", "second text"]


@pytest.mark.parametrize("content, message", [("{", "is not valid JSON"), ('{"a": 1}', "JSON list of strings"),
                                              ("[1, 2]", "JSON list of strings")])
def test_bad_json_texts(tmp_path, content, message):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(ScapError, match=message):
        load_texts(str(tmp_path / "t.json"), ())


def test_missing_text_file_is_not_mistaken_for_a_dataset(tmp_path, monkeypatch):
    with pytest.raises(ScapError, match="does not exist"):
        load_texts(str(tmp_path / "gone.txt"), ())
    with pytest.raises(ScapError, match="does not exist"):
        load_texts(str(tmp_path / "folder" / "notes"), ())
    asked = []
    monkeypatch.setattr("scap_ov.dataset._hf_dataset_texts", lambda name: asked.append(name) or ["hub text"])
    assert load_texts("allenai/c4", ()) == ["hub text"] and asked == ["allenai/c4"]


def test_windows_are_non_overlapping_and_capped():
    windows = token_windows(WordTokenizer(), ["a bb ccc dddd " * 10], 8, 3, "calibration")
    assert windows.shape == (3, 8) and windows.dtype == np.int64
    assert windows.ravel().tolist() == ([1, 2, 3, 4] * 6)
    with pytest.raises(ScapError, match="fewer than one window of 100"):
        token_windows(WordTokenizer(), ["a b c"], 100, None, "evaluation")


def test_model_inputs_start_a_fresh_sequence():
    inputs = model_inputs(np.arange(5))
    assert inputs["input_ids"].shape == (1, 5)
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 3, 4]]
    assert inputs["attention_mask"].sum() == 5 and inputs["beam_idx"].tolist() == [0]


class BosWordTokenizer(WordTokenizer):
    """Like Gemma's tokenizer: <bos> (id 99) before any text when special tokens are on."""

    def __call__(self, text, add_special_tokens=False):
        ids = super().__call__(text)["input_ids"]
        return {"input_ids": ([99] if add_special_tokens else []) + ids}


def test_windows_start_with_the_tokenizers_start_tokens():
    windows = token_windows(BosWordTokenizer(), ["a bb ccc dddd " * 10], 8, 3, "calibration")
    assert windows.shape == (3, 8) and windows[:, 0].tolist() == [99, 99, 99]
    assert windows[:, 1:].ravel().tolist() == ([1, 2, 3, 4] * 6)[:21]  # text continues across windows
