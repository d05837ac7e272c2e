"""lm-eval-harness on model folders: a tiny local multiple-choice task (JSONL + YAML built from the packaged
Austen text) run offline on a tiny random Llama, as a SCAP export (fused IR) and as a dense IR."""
from __future__ import annotations

import json
import random
import re
import shutil
import socket
import warnings
from pathlib import Path

import pytest

from scap_ov import assets
from scap_ov.cli import main
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.errors import ScapError
from scap_ov.export import dense_ir
from scap_ov.integrations import check_folder
from scap_ov.lm_eval import run_lm_eval
from scap_ov.pipeline import export_scap

TASK = "austen_cloze"
ITEMS = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_cloze_task(folder: Path, items: int = ITEMS, seed: int = 0, data_name: str | None = None) -> Path:
    """A last-word cloze task over *Northanger Abbey* (never calibration text): 4 choices, acc metric."""
    folder.mkdir(parents=True, exist_ok=True)
    ending = re.compile(r".*\b([a-z]{4,})[.!?]")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", assets.novel_text(assets.CLOZE_NOVEL))
                 if 8 <= len(s.split()) <= 30 and ending.fullmatch(s)]
    words = sorted({ending.fullmatch(s).group(1) for s in sentences})
    rng = random.Random(seed)
    rows = []
    for sentence in rng.sample(sentences, items):
        word = ending.fullmatch(sentence).group(1)
        choices = [word] + rng.sample([w for w in words if w != word], 3)
        rng.shuffle(choices)
        rows.append({"context": sentence[:sentence.rindex(word)].rstrip(), "choices": [" " + c for c in choices],
                     "label": choices.index(word)})
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # cache_dir keeps the datasets library's cache of this throw-away file out of the user's cache.
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / (data_name or data.name)}
  cache_dir: {folder / "datasets-cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return folder


@pytest.fixture(scope="module")
def tiny_dense(tmp_path_factory):
    """A dense optimum-intel IR folder of a 2-block random Llama with SmolLM2's tokenizer."""
    import torch
    from optimum.exporters.openvino import export_from_model
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("lm_eval") / "dense"
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, vocab_size=49152, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the tracer's warnings about a model we never trace again
        warnings.simplefilter("ignore")
        export_from_model(LlamaForCausalLM(config).eval(), str(out), task="text-generation-with-past")
    smollm2 = dense_ir(assets.DEFAULT_MODEL)
    for name in TOKENIZER_FILES:
        if (smollm2 / name).is_file():
            shutil.copy2(smollm2 / name, out / name)
    return out


@pytest.fixture(scope="module")
def tiny_scap(tiny_dense):
    out = tiny_dense.parent / "scap"
    export_scap(out, str(tiny_dense), CalibrationConfig(targets=parse_targets(0.4), samples=2, seq_len=32,
                                                          refine_passes=0))
    assert check_folder(out).fused_ops > 0
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open an internet connection fails and is recorded."""
    attempts = []
    original = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test_lm_eval: network access to {address} attempted")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return attempts


def test_local_task_on_a_scap_folder_runs_the_fused_ops_offline(tiny_scap, tmp_path, no_network):
    tasks = write_cloze_task(tmp_path / "tasks")
    result = run_lm_eval(tiny_scap, [TASK], [tasks], builtin_tasks=False,
                         ov_config={"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"})
    assert 0.0 <= result.metric(TASK, "acc") <= 1.0
    assert result.results["n-samples"][TASK] == {"original": ITEMS, "effective": ITEMS}
    ir_ops = check_folder(tiny_scap).fused_ops
    assert result.fused_ops == ir_ops == result.results["scap_ov"]["fused_ops_compiled"]
    # The extension's ops ran in the last inference lm-eval made (the CPU plugin runs them as Reference nodes).
    executed = [p for p in result.lm.model.request.get_profiling_info()
                if p.node_name.endswith("/scap/fused") and str(p.status) == "Status.EXECUTED"]
    assert len(executed) == ir_ops
    assert no_network == []


def test_cli_on_a_dense_folder_with_limit_and_json(tiny_dense, tmp_path, capsys, no_network):
    tasks = write_cloze_task(tmp_path / "tasks")
    out = tmp_path / "res" / "lm_eval.json"
    code = main(["lm-eval", str(tiny_dense), "--tasks", TASK, "--include-path", str(tasks), "--limit", "5",
                 "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["results"][TASK]["acc,none"] <= 1.0
    assert result["n-samples"][TASK] == {"original": ITEMS, "effective": 5}
    assert result["scap_ov"]["fused_ops_compiled"] == 0
    printed = capsys.readouterr().out
    assert "no SCAPFullyConnected ops" in printed and TASK in printed and "acc" in printed
    assert no_network == []


def test_missing_folder_and_missing_task_path(tmp_path, capsys):
    assert main(["lm-eval", str(tmp_path / "nope"), "--tasks", TASK]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    folder = tmp_path / "model"
    folder.mkdir()
    assert main(["lm-eval", str(folder), "--tasks", TASK]) == 2
    assert "holds no openvino_model.xml" in capsys.readouterr().err
    with pytest.raises(ScapError, match="task path .*missing-tasks does not exist"):
        run_lm_eval(tmp_path, [TASK], [tmp_path / "missing-tasks"])


def test_unknown_task_names_the_task_and_a_close_match(tiny_scap, tmp_path):
    tasks = write_cloze_task(tmp_path / "tasks")
    with pytest.raises(ScapError, match=r"unknown lm-eval task 'austen_cloz'.*did you mean austen_cloze"):
        run_lm_eval(tiny_scap, ["austen_cloz"], [tasks], builtin_tasks=False)


def test_missing_task_data_file_is_named(tiny_scap, tmp_path):
    tasks = write_cloze_task(tmp_path / "tasks", data_name="gone.jsonl")
    with pytest.raises(ScapError, match=rf"task '{TASK}'.*gone\.jsonl"):
        run_lm_eval(tiny_scap, [TASK], [tasks], builtin_tasks=False)


@pytest.mark.slow
def test_real_model_scap_folder_keeps_dense_accuracy_on_a_local_task(tmp_path):
    """SmolLM2 on 40 four-way cloze items: well above chance (0.25), and SCAP at 40% close to dense."""
    tasks = write_cloze_task(tmp_path / "tasks", items=40)
    scap = tmp_path / "scap40"
    export_scap(scap, config=CalibrationConfig(targets=parse_targets(0.4), samples=4, seq_len=128, refine_passes=0))
    dense = run_lm_eval(dense_ir(assets.DEFAULT_MODEL), [TASK], [tasks], builtin_tasks=False)
    sparse = run_lm_eval(scap, [TASK], [tasks], builtin_tasks=False)
    assert dense.fused_ops == 0 and sparse.fused_ops == check_folder(scap).fused_ops > 0
    assert dense.metric(TASK, "acc") >= 0.6
    assert sparse.metric(TASK, "acc") >= dense.metric(TASK, "acc") - 0.15
