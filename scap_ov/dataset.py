"""Text in, model inputs out: calibration and evaluation text, tokenised into fixed-length windows."""
from __future__ import annotations

import json
from pathlib import Path

import nncf
import numpy as np

from scap_ov import assets
from scap_ov.errors import ScapError


def load_texts(source: str | None, default_novels: tuple[str, ...]) -> list[str]:
    """Texts from: None (packaged novels), a .txt file, a .json list of strings, or a HF dataset name."""
    if source is None:
        return [assets.novel_text(*default_novels)]
    path = Path(source)
    if path.is_dir():
        raise ScapError(f"{source} is a folder: text is a .txt file, a .json list of strings or a dataset name "
                        "(a folder of images calibrates a vision model)")
    if path.is_file():
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise ScapError(f"{source} is not valid JSON ({exc})") from exc
            if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
                raise ScapError(f"{source} must hold a JSON list of strings")
            return data
        return [path.read_text(errors="replace")]
    # "owner/name" is a Hugging Face dataset; anything that looks like a file path is a missing file.
    if path.suffix in (".txt", ".json") or source.startswith(("/", ".", "~")):
        raise ScapError(f"text file {source} does not exist")
    return _hf_dataset_texts(source)


def _hf_dataset_texts(name: str) -> list[str]:
    try:
        import datasets  # optional: only for users who are online
    except ImportError as exc:
        raise ScapError(f"{name!r} is not a file; loading a Hugging Face dataset needs `pip install datasets`") from exc
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - any hub failure is the user's to see
        raise ScapError(f"cannot load dataset {name!r}: {exc}") from exc
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return [t for t in ds[column] if isinstance(t, str)]


def start_tokens(tokenizer) -> list[int]:
    """The tokens a tokenizer puts before any text (Gemma's <bos>; none for SmolLM2).

    Every window and cloze context starts with them, as the model saw in training: Gemma without <bos> has a
    perplexity in the thousands.
    """
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start]
    return []


def token_windows(tokenizer, texts: list[str], seq_len: int, count: int | None, what: str) -> np.ndarray:
    """Non-overlapping windows of ``seq_len`` tokens, [N, seq_len] int64; ``count`` caps N.

    Each window is the tokenizer's start tokens (see ``start_tokens``) followed by the next stretch of text.
    """
    prefix = start_tokens(tokenizer)
    body = seq_len - len(prefix)
    if body < 1:
        raise ScapError(f"{what} windows of {seq_len} tokens leave no room for text after {len(prefix)} start tokens")
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if count is not None and len(ids) >= count * body:
            break
    n = len(ids) // body
    if n == 0:
        raise ScapError(f"{what} text has {len(ids)} tokens, fewer than one window of {seq_len}")
    if count is not None:
        n = min(n, count)
    text_ids = np.asarray(ids[: n * body], dtype=np.int64).reshape(n, body)
    return np.concatenate([np.tile(np.asarray(prefix, dtype=np.int64), (n, 1)), text_ids], axis=1)


def model_inputs(sample, input_names=None) -> dict[str, np.ndarray]:
    """Inputs of an optimum-intel IR for one sample: token ids of one window (a fresh sequence) become a stateful
    decoder's or an encoder's inputs (input_ids, attention_mask, token_type_ids); a mapping of input name ->
    array (a vision model's pixel_values) is passed as it is. Only those in ``input_names`` when given (the
    model's inputs)."""
    if isinstance(sample, dict):
        inputs = dict(sample)
    else:
        ids = np.asarray(sample, dtype=np.int64).reshape(1, -1)
        inputs = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64).reshape(1, -1),
            "beam_idx": np.zeros(1, dtype=np.int32),
            "token_type_ids": np.zeros_like(ids),  # BERT-style encoders: one segment
        }
    return inputs if input_names is None else {k: v for k, v in inputs.items() if k in input_names}


def sample_tokens(sample) -> int:
    """Tokens in a sample of token ids; 0 for a mapping of named inputs (an image)."""
    return 0 if isinstance(sample, dict) else len(sample)


def calibration_dataset(windows: np.ndarray | list, input_names: set[str]) -> nncf.Dataset:
    return nncf.Dataset(list(windows), lambda w: model_inputs(w, input_names))
