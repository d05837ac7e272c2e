"""The encoder family (BERT-style, e.g. all-MiniLM-L6-v2): calibration samples and embedding quality.

A decoder is calibrated on fixed-length windows of running text; an encoder reads one sentence or paragraph
at a time, with [CLS]/[SEP] and an attention mask. Samples are therefore ragged: each is one unpadded sequence
run at batch 1 with a mask of ones, so padding never enters the activation statistics or the measured
sparsity.

Quality is what a sentence encoder is used for: the sentence embedding (mean of the last hidden states over
the sequence, L2-normalised, as sentence-transformers pools all-MiniLM-L6-v2) of the SCAP model against the
dense model's, on held-out sentences: cosine similarity, nearest-neighbour agreement (each sentence's nearest
other sentence is the same under both; or at least among the sparse 5 nearest), and cross retrieval (a sparse embedding finds its own sentence in an
index of dense embeddings). The dense reference is the evaluated IR itself with the pruning taken out again
(``strip_pruning``), so a SCAP folder is evaluated on its own.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
from tqdm.auto import tqdm

from scap_ov import assets
from scap_ov.errors import ScapError
from scap_ov.evaluation import Evaluator, weight_byte_sparsity
from scap_ov.layers import find_fcs

ENCODER_MODEL_TYPES = ("bert",)  # transformers model_type values exported and evaluated as encoders
EXPORT_TASK = "feature-extraction"  # optimum-intel task: inputs input_ids/attention_mask/token_type_ids
HIDDEN_OUTPUT = "last_hidden_state"
MIN_WORDS = 6  # shorter units (headings, "Chapter 3", one-line replies) say little about an embedding
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on sequences of at most 256 tokens
DEFAULT_SENTENCES = 512
# A sentence ends at . ! ? (closing quotes and brackets stay with it) before whitespace and a capital letter,
# unless the period closes a title such as "Mr." (Austen has thousands).
_SENTENCE_END = re.compile(r"[.!?][\"')_]*\s+(?=[\"'(_]*[A-Z])")
_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Col|Capt|Esq|Rev|Sir)\.$")


def config_value(folder: Path, key: str):
    """``key`` of a folder's config.json, or None without one."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def model_type(folder: Path) -> str | None:
    return config_value(folder, "model_type")


def is_encoder(folder: Path) -> bool:
    return model_type(folder) in ENCODER_MODEL_TYPES


def check_method(method: str, kind: str = "encoder") -> None:
    """Calibration methods that apply to an encoder or a vision model (greedy measures next-token KL, which
    neither has)."""
    if method == "greedy":
        raise ScapError(f"--method greedy allocates by the KL of next-token predictions, which a {kind} model does "
                        f"not make; use --method scap or teal for {kind} models")


# ------------------------------------------------------------------------------------------------ text


def sentences(paragraph: str) -> list[str]:
    """A paragraph split into sentences (see _SENTENCE_END)."""
    found, start = [], 0
    for m in _SENTENCE_END.finditer(paragraph):
        if not _TITLE.search(paragraph[: m.start() + 1]):
            found.append(paragraph[start : m.end()].strip())
            start = m.end()
    found.append(paragraph[start:].strip())
    return [s for s in found if s]


def text_units(texts: list[str], unit: str, min_words: int = MIN_WORDS) -> list[str]:
    """Paragraphs (``unit="paragraph"``) or sentences of ``texts`` with at least ``min_words`` words."""
    paras = [p for t in texts for p in assets.paragraphs(t)]
    units = paras if unit == "paragraph" else [s for p in paras for s in sentences(p)]
    return [u for u in units if len(u.split()) >= min_words]


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def token_samples(tokenizer, units: list[str], max_tokens: int = MAX_TOKENS) -> list[np.ndarray]:
    """Each unit as one encoder input: token ids with [CLS]/[SEP], truncated to ``max_tokens``; int64 [L]."""
    return [np.asarray(tokenizer(u, truncation=True, max_length=max_tokens)["input_ids"], dtype=np.int64)
            for u in units]


def calibration_samples(tokenizer, texts: list[str], count: int, max_tokens: int = MAX_TOKENS) -> list[np.ndarray]:
    """``count`` paragraphs spread over the calibration text, as ragged token sequences."""
    units = spread(text_units(texts, "paragraph"), count)
    if not units:
        raise ScapError(f"calibration text has no paragraph of at least {MIN_WORDS} words")
    return token_samples(tokenizer, units, max_tokens)


def evaluation_samples(tokenizer, texts: list[str], count: int, max_tokens: int = MAX_TOKENS) -> list[np.ndarray]:
    """``count`` sentences spread over the held-out text (at least 2: retrieval needs a neighbour)."""
    units = spread(text_units(texts, "sentence"), count)
    if len(units) < 2:
        raise ScapError(f"held-out text has {len(units)} sentences of at least {MIN_WORDS} words; need >= 2")
    return token_samples(tokenizer, units, max_tokens)


# ---------------------------------------------------------------------------------------------- models


def strip_pruning(model: ov.Model) -> ov.Model:
    """A copy of a portable SCAP IR with every FC's pruning and folded bias bypassed: the dense model again."""
    from scap_ov.transformations.portable import CENTERED_SUFFIX

    model = model.clone()
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        if name.endswith("/scap/pruned"):  # Select(keep, x - m, 0) -> x
            centered = node.input_value(1).get_node()
            if not centered.get_friendly_name().endswith(CENTERED_SUFFIX):
                raise ScapError(f"{name} is not a portable SCAP pattern")
            node.output(0).replace(centered.input_value(0))
        elif name.endswith("/scap/folded_bias"):  # MatMul + W m -> MatMul
            node.output(0).replace(node.input_value(0))
    model.validate_nodes_and_infer_types()
    return model


def sentence_embedding(hidden: np.ndarray) -> np.ndarray:
    """Mean over tokens (every token is unmasked at batch 1, no padding), L2-normalised: [L, H] -> [H]."""
    pooled = hidden.astype(np.float64).mean(axis=0)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def embed(evaluator: Evaluator, samples: list[np.ndarray],
          progress: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Sentence embeddings [N, H] of an encoder ``Evaluator`` (output last_hidden_state) and each SCAP FC's
    realised sparsity, token-weighted over all samples."""
    embeddings, sums, tokens = [], {}, 0
    for ids in tqdm(samples, desc="Embeddings", unit="sentence", disable=not progress):
        hidden, sparsity = evaluator.forward(ids)
        embeddings.append(sentence_embedding(hidden))
        for name, value in sparsity.items():
            sums[name] = sums.get(name, 0.0) + value * len(ids)
        tokens += len(ids)
    return np.stack(embeddings), {n: s / max(tokens, 1) for n, s in sums.items()}


def encoder_evaluator(model: ov.Model, core: ov.Core | None = None) -> Evaluator:
    missing = {"input_ids", "attention_mask"} - {n for port in model.inputs for n in port.get_names()}
    if missing:
        raise ScapError(f"the IR lacks the encoder inputs {', '.join(sorted(missing))}; export it with optimum-intel's "
                        f"{EXPORT_TASK} task")
    return Evaluator(model, core, output=HIDDEN_OUTPUT)


# ------------------------------------------------------------------------------------------------ quality


@dataclass
class EmbeddingQuality:
    sentences: int
    tokens: int
    cosine_mean: float  # cosine(sparse, dense) embedding of the same sentence
    cosine_min: float
    nn_agreement: float  # each sentence's nearest other sentence is the same under sparse and dense embeddings
    nn_in_top5: float  # the dense nearest neighbour is among the sparse embedding's 5 nearest
    cross_retrieval: float  # a sparse embedding's nearest dense embedding is its own sentence's
    fc_weight_sparsity: float
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    type_sparsity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def nearest_others(embeddings: np.ndarray, k: int = 1) -> np.ndarray:
    """Indices [N, k] of each row's k most similar other rows, nearest first (cosine; rows are normalised)."""
    sim = embeddings @ embeddings.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def compare_embeddings(sparse: np.ndarray, dense: np.ndarray) -> dict[str, float]:
    """Cosine, nearest-neighbour agreement and cross retrieval of ``sparse`` against ``dense`` [N, H]."""
    cosine = (sparse * dense).sum(axis=1)
    dense_nn, sparse_top5 = nearest_others(dense)[:, 0], nearest_others(sparse, 5)
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "nn_agreement": float((sparse_top5[:, 0] == dense_nn).mean()),
            "nn_in_top5": float((sparse_top5 == dense_nn[:, None]).any(axis=1).mean()),
            "cross_retrieval": float(((sparse @ dense.T).argmax(axis=1) == np.arange(len(sparse))).mean())}


def evaluate_model(model: ov.Model, samples: list[np.ndarray], dense: np.ndarray | None = None,
                   core: ov.Core | None = None, progress: bool = False) -> EmbeddingQuality:
    """Embedding quality of ``model`` (a portable SCAP or dense IR) on ``samples`` against ``dense``
    embeddings (default: those of ``model`` with its pruning stripped)."""
    if dense is None:
        dense, _ = embed(encoder_evaluator(strip_pruning(model), core), samples)
    evaluator = encoder_evaluator(model, core)
    sparse, layer = embed(evaluator, samples, progress)
    total, by_type = weight_byte_sparsity(evaluator.fcs.values(), layer)
    return EmbeddingQuality(sentences=len(samples), tokens=int(sum(len(s) for s in samples)),
                            fc_weight_sparsity=total, layer_sparsity=layer, type_sparsity=by_type,
                            **compare_embeddings(sparse, dense))


def evaluate_encoder_folder(folder: Path, text: str | None = None, count: int = DEFAULT_SENTENCES,
                            progress: bool = True) -> EmbeddingQuality:
    """Embedding quality of the IR in an encoder SCAP folder on held-out sentences (a novel never used for
    calibration, or ``text``)."""
    from scap_ov.dataset import load_texts
    from scap_ov.pipeline import load_tokenizer, model_ir

    if count < 2:
        raise ScapError(f"--sentences must be >= 2 (retrieval needs a neighbour), got {count}")
    folder = Path(folder)
    samples = evaluation_samples(load_tokenizer(folder), load_texts(text, (assets.PERPLEXITY_NOVEL,)), count)
    return evaluate_model(ov.Core().read_model(model_ir(folder)), samples, progress=progress)

