"""Evaluate a SCAP (or dense) OpenVINO model folder with lm-evaluation-harness, offline.

lm-eval's ``openvino`` model type loads a folder with optimum-intel's OVModelForCausalLM; a fused SCAP IR
needs our CPU extension registered with optimum-intel's Cores first, which is what this module adds. Tasks
come from lm-eval's own catalogue or from local task YAMLs (``--include-path``); a local task reads local data
with ``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}``. Nothing is downloaded: the Hugging Face
hub and datasets libraries run in offline mode.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scap_ov.errors import ScapError
from scap_ov.integrations import check_folder, enable_optimum_intel
from scap_ov.ops import OP_TYPE

log = logging.getLogger("scap_ov")
# f32 inference, as `scap-ov eval` measures; a CPU with bf16 would otherwise run the model in bf16.
DEFAULT_OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
INSTALL_HINT = "run the README set-up command (it installs lm-eval), or: pip install 'scap-ov[lm-eval]'"


@dataclass
class LmEvalResult:
    results: dict  # lm-eval's results dict ("results", "configs", "n-samples", ...), JSON-serialisable
    fused_ops: int  # SCAPFullyConnected ops in the compiled model lm-eval ran (0 for a dense folder)
    lm: Any  # the lm-eval model object (lm_eval.models.optimum_lm.OptimumLM)

    def metric(self, task: str, name: str) -> float:
        """``metric(task, "acc")``: lm-eval keys metrics as "acc,none" (name, filter)."""
        values = self.results["results"][task]
        for key, value in values.items():
            if key.split(",")[0] == name:
                return value
        raise KeyError(f"task {task} has no metric {name!r}; it has {sorted(values)}")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ScapError(f"lm-eval is not installed ({exc}); {INSTALL_HINT}") from exc
    return lm_eval, TaskManager


def _task_manager(TaskManager, tasks: list[str], include_path: list[Path], builtin_tasks: bool):
    """A TaskManager that knows every name in ``tasks``. Local tasks alone are indexed first: lm-eval's own
    catalogue (~15,000 YAML files) is indexed only when a requested name is not a local task."""
    paths = [str(p) for p in include_path] or None
    if not paths and not builtin_tasks:
        raise ScapError("no task source: pass --include-path, or allow lm-eval's built-in tasks")
    manager = None
    if paths:
        manager = TaskManager(include_path=paths, include_defaults=False)
        if all(t in manager.all_tasks for t in tasks):
            return manager
    if builtin_tasks:
        manager = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        sources = ([f"the task YAMLs under {', '.join(paths)}"] if paths else []) + \
                  (["lm-eval's built-in tasks"] if builtin_tasks else [])
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ScapError(f"unknown lm-eval task {unknown[0]!r}: not among {' or '.join(sources)}{hint}; a local "
                        "task is a YAML with 'task: NAME' in a folder passed with --include-path")
    return manager


def _load_tasks(manager, tasks: list[str]) -> list:
    """The requested tasks and groups, built (and their data loaded) before the model is."""
    built = []
    for name in tasks:
        try:
            loaded = manager.load(name)
        except FileNotFoundError as exc:
            raise ScapError(f"lm-eval task {name!r}: a file it needs is missing ({exc}); data_files in a task "
                            "YAML are relative to the directory you run from unless absolute") from exc
        except ConnectionError as exc:  # the datasets library, offline, for data not in its cache
            raise ScapError(f"lm-eval task {name!r}: its data is not in the local datasets cache and nothing is "
                            f"downloaded ({exc}); use a local task with data_files, or fetch the data once with "
                            "network access and HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0") from exc
        except Exception as exc:  # noqa: BLE001 - datasets and lm-eval raise many types; report one line
            raise ScapError(f"lm-eval could not load task {name!r}: {type(exc).__name__}: {exc}") from exc
        if name in loaded["groups"]:
            built.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            built.append(loaded["tasks"][name])
        else:  # a tag: its tasks
            built.extend(loaded["tasks"].values())
    return built


def compiled_fused_ops(lm) -> int:
    """SCAPFullyConnected ops in the model lm-eval compiled (the CPU plugin runs them as Reference nodes)."""
    ov_model = lm.model
    names = {op.get_friendly_name() for op in ov_model.model.get_ops() if op.get_type_name() == OP_TYPE}
    runtime = ov_model.request.get_compiled_model().get_runtime_model()
    count = 0
    for node in runtime.get_ordered_ops():
        info = node.get_rt_info()
        original = set(info["originalLayersNames"].astype(str).split(",")) if "originalLayersNames" in info else set()
        count += bool(original & names)
    return count


def run_lm_eval(folder: Path, tasks: list[str], include_path: list[Path] | None = None,
                limit: float | None = None, num_fewshot: int | None = None, batch_size: int = 1,
                ov_config: dict | None = None, builtin_tasks: bool = True) -> LmEvalResult:
    """lm-eval ``simple_evaluate`` on the OpenVINO model in ``folder`` (dense IR or SCAP export), offline.

    ``tasks``: lm-eval task, group or tag names; ``include_path``: folders (or YAML files) of local tasks;
    ``limit``: items per task (a fraction if < 1); ``ov_config``: OpenVINO compile properties (default f32).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScapError(f"model folder {folder} does not exist")
    if not tasks:
        raise ScapError("no lm-eval task given")
    include_path = [Path(p) for p in include_path or []]
    for path in include_path:
        if not path.exists():
            raise ScapError(f"task path {path} does not exist")
    if limit is not None and limit <= 0:
        raise ScapError("--limit must be > 0")
    check = check_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    lm_eval, TaskManager = _import_lm_eval()
    from lm_eval.api.registry import get_model
    from lm_eval.utils import handle_non_serializable

    manager = _task_manager(TaskManager, tasks, include_path, builtin_tasks)
    built = _load_tasks(manager, tasks)
    if check.fused_ops:
        enable_optimum_intel()
    with tempfile.TemporaryDirectory() as tmp:  # lm-eval takes the OpenVINO config as a JSON file
        config_file = Path(tmp) / "ov_config.json"
        config_file.write_text(json.dumps(DEFAULT_OV_CONFIG if ov_config is None else ov_config))
        try:
            lm = get_model("openvino").create_from_arg_obj(
                {"pretrained": str(folder.resolve()), "ov_config": str(config_file)}, {"batch_size": batch_size})
        except Exception as exc:  # noqa: BLE001 - optimum-intel raises many types; report one line
            raise ScapError(f"lm-eval could not load {folder} with optimum-intel: {type(exc).__name__}: "
                            f"{exc}") from exc
    fused = compiled_fused_ops(lm) if check.fused_ops else 0
    if check.fused_ops and not fused:
        raise ScapError(f"{folder} has {check.fused_ops} {OP_TYPE} ops but the compiled model has none")
    if limit is not None and limit >= 1:
        limit = int(limit)
    results = lm_eval.simple_evaluate(model=lm, tasks=built, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, batch_size=batch_size, log_samples=False)
    results = json.loads(json.dumps(results, default=handle_non_serializable))
    results["config"]["model"] = "openvino"
    results["config"]["model_args"] = {"pretrained": str(folder)}
    results["scap_ov"] = {"folder": str(folder), "fused_ops_in_ir": check.fused_ops, "fused_ops_compiled": fused}
    return LmEvalResult(results=results, fused_ops=fused, lm=lm)


def summary(result: LmEvalResult) -> str:
    from lm_eval.utils import make_table

    table = make_table(result.results)
    if "groups" in result.results:
        table += "\n" + make_table(result.results, "groups")
    model = result.results["scap_ov"]
    ops = (f"{result.fused_ops} {OP_TYPE} ops compiled with the scap-ov extension" if result.fused_ops
           else f"no {OP_TYPE} ops (dense or portable IR)")
    return f"{model['folder']}: {ops}\n{table}"
