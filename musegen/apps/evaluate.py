"""evaluate.py's work: the checkpoint's own data config and test split, every metric beside its
baselines (musegen.eval.run.Evaluation), metrics.json and a table."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from musegen.apps.generate import SAMPLING_ARGUMENTS, generate_files, typed
from musegen.checkpoint import file_sha256
from musegen.data.datamodule import MuseDataModule
from musegen.eval.metrics import rtf
from musegen.eval.run import METRICS, Evaluation
from musegen.generation import Generator
from musegen.io import finite_or_none, write_json
from musegen.model_card import now, record_evaluation
from musegen.model_card_markdown import metric_rows
from musegen.vocoder.checkpoint import load_vocoder

log = logging.getLogger(__name__)

#: evaluate.py's settings besides the sampling ones: (type, whether null is allowed), checked as
#: generate.py checks its arguments (Hydra reads `settings.seconds=abc` as a string).
SETTINGS: dict[str, tuple[type, bool]] = {
    "num_prompts": (int, False), "seconds": (float, False), "max_test_clips": (int, False), "seed": (int, False),
    "write_samples": (bool, False), "max_labels": (int, True), "rtf_repeats": (int, False),
    "realism_seconds": (float, False), "long_seconds": (float, False), "fad_samples": (int, False),
}


def run_config_path(ckpt: str | Path) -> Path:
    """Where train.py left the checkpoint's run config: <run>/.hydra/config.yaml (ckpt is <run>/checkpoints/x.ckpt)."""
    return Path(ckpt).resolve().parent.parent / ".hydra" / "config.yaml"


def training_data_config(ckpt: str | Path) -> dict[str, Any] | None:
    """The data config the checkpoint was trained with, resolved, or None without a run folder.

    The test split is a function of the data source, its settings and the seed, so evaluating on
    anything else would mix training clips into the test set. A relative paths.root_dir is taken
    from the directory training ran in (.hydra/hydra.yaml), not from where evaluate.py runs.
    """

    path = run_config_path(ckpt)
    if not path.is_file():
        return None
    run = OmegaConf.load(path)
    root = Path(str(OmegaConf.select(run, "paths.root_dir", default=".")))
    if not root.is_absolute():
        hydra_yaml = path.with_name("hydra.yaml")
        cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd") if hydra_yaml.is_file() else None
        run.paths.root_dir = str((Path(cwd) if cwd else Path.cwd()) / root)
    return OmegaConf.to_container(run.data, resolve=True)


def build_datamodule(data_cfg: Mapping[str, Any], generator: Generator) -> MuseDataModule:
    """The datamodule of `data_cfg` with the checkpoint's encoder and window sizes, set up.

    The checkpoint's text encoder keeps the cache key (and so the cache) of training; its
    context/segment sizes define the windows skill is measured on.
    """

    model = generator.model
    dm = instantiate(dict(data_cfg), text_encoder=generator.encoder, context_frames=model.context_frames,
                     segment_frames=model.segment_frames, _convert_="all")
    if dm.feature_config != generator.features:
        raise ValueError(f"data features {dm.feature_config} differ from the checkpoint's {generator.features}; "
                         "pass the features the checkpoint was trained with")
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate_checkpoint(cfg: DictConfig, out_dir: str | Path, generate_cfg: DictConfig | None = None) -> dict[str, Any]:
    """Checkpoint + data config -> every metric -> <out_dir>/metrics.json; `generate_cfg` is the
    generate.py config the rtf metric times."""
    start = time.perf_counter()
    for name, (kind, nullable) in {**SAMPLING_ARGUMENTS, **SETTINGS}.items():   # before any work, as generate.py
        typed(f"settings.{name}", cfg.settings[name], kind, nullable)
    vocoder_path = typed("vocoder", cfg.vocoder, str, True)
    settings = instantiate(cfg.settings)
    generator = Generator.from_checkpoint(cfg.ckpt, device=cfg.device)
    vocoder = None if vocoder_path is None else load_vocoder(vocoder_path, generator.features)
    data_cfg, origin = _data_config(cfg)
    dm = build_datamodule(data_cfg, generator)
    synth = instantiate(cfg.synth)(generator.features)
    call = None if generate_cfg is None else (lambda: measure_rtf(generate_cfg))
    evaluation = Evaluation(generator, dm, settings, synth, instantiate(cfg.export), out_dir, call, vocoder)
    metrics = evaluation.run()
    results = finite_or_none({
        "checkpoint": str(cfg.ckpt), "checkpoint_sha256": file_sha256(cfg.ckpt),
        "vocoder": None if vocoder_path is None else {"path": vocoder_path, "sha256": file_sha256(vocoder_path)},
        "data": {"config_from": origin, "cache": str(dm.cache.path), "labels": dm.labels,
                 "train_clips": len(evaluation.train_ids), "test_clips": len(evaluation.test_ids),
                 "evaluated_test_clips": len(evaluation.eval_ids)},
        "settings": settings.__dict__, "sampling": {"guidance": evaluation.guidance, **evaluation.sampling},
        "device": str(generator.device),
        "metrics": metrics, "seconds": round(time.perf_counter() - start, 3),
        "rtf_generate_config": OmegaConf.to_container(generate_cfg, resolve=True) if generate_cfg is not None else None,
    })
    write_json(Path(out_dir) / "metrics.json", results)
    log.info("wrote %s", Path(out_dir) / "metrics.json")
    update_model_card(results, Path(out_dir) / "metrics.json")
    return results


def headline(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each computed metric, in METRICS order, with its chance, target and baselines (no details); the
    baselines as [name, value] pairs, so their order survives the model card's JSON, which sorts keys."""
    return [{"name": name, "value": m["value"], "baselines": [[k, v] for k, v in m["baselines"].items()],
             "chance": m["chance"], "target": m["target"]}
            for name, m in ((n, results["metrics"][n]) for n in METRICS if n in results["metrics"])]


def update_model_card(results: Mapping[str, Any], metrics_json: Path) -> None:
    """Give the evaluated checkpoint's model card (musegen.model_card) these results' table.

    The card is a companion of metrics.json, which is written already: a card that cannot be
    written (a read-only checkpoint folder) is a warning, not a failed evaluation.
    """
    evaluation = {"checkpoint_sha256": results["checkpoint_sha256"], "vocoder": results["vocoder"],
                  "evaluated_at": now(), "metrics_json": str(metrics_json.resolve()), "device": results["device"],
                  "seconds": results["seconds"], "data": results["data"], "settings": results["settings"],
                  "metrics": headline(results)}
    try:
        record_evaluation(results["checkpoint"], evaluation)
    except OSError as err:
        log.warning("model card beside %s not updated: %s", results["checkpoint"], err)


def measure_rtf(generate_cfg: DictConfig) -> dict[str, float]:
    """Time generate.py's whole path (load, generate, write every file)."""
    start = time.perf_counter()
    generate_files(generate_cfg)
    wall = time.perf_counter() - start
    audio = float(generate_cfg.duration) * int(generate_cfg.num_samples)
    return {"rtf": rtf(audio, wall), "audio_seconds": audio, "wall_seconds": wall}


def _data_config(cfg: Any) -> tuple[dict[str, Any], str]:
    """The run's data config when data_from_run and it exists, else the one composed by evaluate.py."""

    if cfg.get("data_from_run", True):
        found = training_data_config(cfg.ckpt)
        if found is not None:
            log.info("data: using the checkpoint's training data config %s (data.* overrides here are ignored; "
                     "set data_from_run=false to use them)", run_config_path(cfg.ckpt))
            return found, str(run_config_path(cfg.ckpt))
        log.warning("data: no %s; using the data config given to evaluate.py: it must match the training run's "
                    "(same data=..., data.* and seed overrides)", run_config_path(cfg.ckpt))
    return OmegaConf.to_container(cfg.data, resolve=True), "evaluate.py config"


def table(results: Mapping[str, Any]) -> Table:
    """A rich table: each metric, its baselines, the chance level and the design's target."""
    t = Table(title=f"musegen evaluation of {results['checkpoint']}")
    for col in ("metric", "model", "baselines (same run)", "chance", "target"):
        t.add_column(col)
    for name, value, baselines, chance, target in metric_rows(headline(results)):
        t.add_row(name, value, "\n".join(baselines), chance, target)
    return t
