"""Whole trained models on the Hugging Face hub: save, push, load (``fusionseg hub``).

:func:`save_pretrained` turns a training checkpoint into a folder of three files, the layout
that :mod:`fusionseg.hub_files` reads back (``--ckpt DIR``, ``--ckpt hf://ORG/NAME``,
``train.init_from``)::

    model.safetensors   the state dict of the model the checkpoint predicts with (the model
                        built from its stored config, its weights loaded strictly); no
                        optimizer state, no training-only copies (e.g. a distillation teacher)
    config.json         {"library_name": "fusionseg", "format": "fusionseg-model",
                         "format_version": 1, "fusionseg_version", "config" (the run config),
                         "classes", "palette", "conditions", "specs" (modality specs),
                         "precision" (training precision), "num_classes", "method",
                         "backbone", "modalities", "metrics", "source_checkpoint"}
    README.md           a model card (YAML front matter for the hub: library_name, license,
                        pipeline_tag, tags), written by :func:`model_card`

:func:`push_to_hub` writes that folder to a temporary directory and uploads it
(``HfApi.create_repo(exist_ok=True)`` + ``upload_folder``). :func:`from_pretrained` loads it
back, from the hub (``huggingface_hub.snapshot_download``: its cache and offline mode) or from a
local folder. Only safetensors and JSON are read: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import CheckpointError, ConfigError, RunError
from .files import atomic_path
from .hub_files import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelSource,
    config_json_from_meta,
    parse_hub_uri,
    read_model_source,
)
from .inference.loading import LoadedModel, load_checkpoint_model, model_from_contents, stored_meta
from .models.weights import read_weights_file

__all__ = ["EncoderLicence", "SavedModel", "encoder_licence", "from_pretrained",
           "load_pretrained", "model_card", "push_to_hub", "save_pretrained"]

#: the repository id the model card names before one is known (``hub save`` without
#: ``--repo-id``)
PLACEHOLDER_REPO = "ORG/NAME"


@dataclass(frozen=True)
class EncoderLicence:
    """The licence of the pretrained encoder weights a model was fine-tuned from.

    Attributes:
        hub_id: the model card's ``license`` (a Hugging Face licence identifier; ``other``
            with :attr:`name` / :attr:`link` for a licence the hub does not list).
        text: one paragraph for the card.
        name, link: ``license_name`` / ``license_link`` for ``hub_id == "other"``.
    """

    hub_id: str
    text: str
    name: str | None = None
    link: str | None = None


_NVIDIA = EncoderLicence(
    "other",
    "The encoder starts from NVIDIA's SegFormer / MiT ImageNet weights (NVlabs/SegFormer), "
    "released under the NVIDIA Source Code License for SegFormer: non-commercial use only "
    "(research or evaluation). A model fine-tuned from them carries that restriction.",
    "nvidia-source-code-license-segformer",
    "https://github.com/NVlabs/SegFormer/blob/master/LICENSE")
_APACHE = {
    "dinov2": "Meta's DINOv2 weights (facebookresearch/dinov2), released under Apache-2.0.",
    "sam2": "Meta's SAM 2 / SAM 2.1 Hiera weights (facebookresearch/sam2), released under "
            "Apache-2.0.",
    "sam_vit": "Meta's Segment Anything ViT weights (facebookresearch/segment-anything), "
               "released under Apache-2.0.",
}
_RESNET = EncoderLicence(
    "bsd-3-clause",
    "The encoder starts from torchvision's ImageNet ResNet weights (IMAGENET1K_V1, "
    "pytorch/vision; the backbone file names no other terms). torchvision is released under "
    "BSD-3-Clause; the weights were trained on ImageNet, whose terms of access restrict it to "
    "non-commercial research: check them before commercial use.")


def _family(backbone: str) -> str | None:
    name = backbone.lower()
    for prefix, family in (("mit", "mit"), ("dinov2", "dinov2"), ("sam2", "sam2"),
                           ("hiera", "sam2"), ("sam_vit", "sam_vit"), ("resnet", "resnet")):
        if name.startswith(prefix):
            return family
    return None


def encoder_licence(cfg: Mapping[str, Any], depth: int = 3) -> EncoderLicence | None:
    """The licence of the pretrained encoder of run config ``cfg`` (a ``model_dump``): from
    ``model.backbone`` when ``model.pretrained`` is set; ``None`` for a randomly initialised
    encoder.

    A run started from another model (``train.init_from``, ``pretrained`` unset) carries that
    model's encoder licence: its stored config is read (``depth`` steps of ``init_from`` at
    most); where it cannot be read the licence is returned as unknown (``other``).
    """
    model = cfg.get("model") or {}
    init_from = (cfg.get("train") or {}).get("init_from")
    if not model.get("pretrained"):
        if not init_from:
            return None
        try:
            _, contents = read_model_source(init_from, read_weights_file)
            stored = contents.get("fusionseg_config") if isinstance(contents, Mapping) else None
        except CheckpointError:
            stored = None
        if isinstance(stored, Mapping) and depth > 0:
            inherited = encoder_licence(stored, depth - 1)
            prefix = f"The weights were initialised from `{init_from}`. "
            if inherited is None:
                return EncoderLicence("none", prefix + "That model's encoder was trained from "
                                      "random initialisation: no pretrained-weights licence "
                                      "applies.")
            return EncoderLicence(inherited.hub_id, prefix + inherited.text, inherited.name,
                                  inherited.link)
        return EncoderLicence("other", f"The weights were initialised from `{init_from}`, "
                              "which could not be read here: its encoder licence applies.")
    family = _family(str(model.get("backbone") or ""))
    if family == "mit":
        return _NVIDIA
    if family in _APACHE:
        return EncoderLicence("apache-2.0", "The encoder starts from " + _APACHE[family])
    if family == "resnet":
        return _RESNET
    return EncoderLicence("other", f"The encoder starts from {model.get('pretrained')!r} "
                          f"(backbone {model.get('backbone')!r}): check the licence of that file.")


@dataclass(frozen=True)
class SavedModel:
    """What :func:`save_pretrained` wrote: ``directory`` and its three files, the number of
    tensors and their bytes, the model card text."""

    directory: Path
    files: tuple[Path, ...]
    tensors: int
    nbytes: int
    card: str


def _best_score(contents: object) -> dict[str, Any] | None:
    """``{"value", "checkpoint"}``: the best ``val/mIoU`` Lightning's ModelCheckpoint stored in
    the checkpoint (its ``best_model_score`` and the file it belongs to), or ``None``."""
    callbacks = contents.get("callbacks") if isinstance(contents, Mapping) else None
    if not isinstance(callbacks, Mapping):
        return None
    for key, state in callbacks.items():
        if not (str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping)):
            continue
        score = state.get("best_model_score")
        if state.get("monitor") == "val/mIoU" and score is not None:
            value = float(score.item() if isinstance(score, torch.Tensor) else score)
            if value == value:  # not NaN
                path = state.get("best_model_path") or ""
                return {"value": round(value, 4), "checkpoint": Path(str(path)).name or None}
    return None


def _results(source: ModelSource, split: str) -> dict[str, Any]:
    """The ``fusionseg eval`` results next to a checkpoint file: ``{"eval": {...}}`` (overall
    mIoU / OA / mAcc / mF1) and ``{"emm": {...}}`` (the whole EMM result), where the files
    ``{stem}_eval_{split}.json`` / ``{stem}_emm_{split}.json`` exist."""
    if source.hub is not None or source.is_saved_model:
        return {}
    out: dict[str, Any] = {}
    base = source.results_base
    for kind in ("eval", "emm"):
        path = base.with_name(f"{base.stem}_{kind}_{split}.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if kind == "eval" and isinstance(data.get("overall"), dict):
            out["eval"] = {"split": split, "file": path.name, **{
                k: data["overall"].get(k) for k in ("mIoU", "OA", "mAcc", "mF1")}}
        elif kind == "emm" and isinstance(data.get("subsets"), list):
            out["emm"] = {**data, "file": path.name}
    return out


def _metrics(contents: object, source: ModelSource, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` ``metrics``: a saved folder's own (re-saving keeps them), else the
    checkpoint's best val mIoU, epoch / step and the eval / EMM results found next to it."""
    stored = contents.get("fusionseg_hub") if isinstance(contents, Mapping) else None
    if isinstance(stored, Mapping) and isinstance(stored.get("metrics"), Mapping):
        return dict(stored["metrics"])
    metrics: dict[str, Any] = {}
    best = _best_score(contents)
    if best is not None:
        metrics["best_val_miou"] = best
    if isinstance(contents, Mapping):
        for key in ("epoch", "global_step"):
            if isinstance(contents.get(key), int):
                metrics[key] = contents[key]
    metrics.update(_results(source, str((cfg.get("data") or {}).get("val_split") or "val")))
    return metrics


def _method_summary(name: str) -> tuple[str, str | None]:
    """``(summary, source)`` of registered method ``name``: the first paragraph of its
    module's docstring and the paragraph starting ``Source:`` (the published method; else the
    second paragraph), if any."""
    from .models import MODELS

    if name not in MODELS:
        return name, None
    cls = MODELS.entry(name).info.get("segmentor")
    doc = (sys.modules[cls.__module__].__doc__ if cls is not None else None) or ""
    doc = re.sub(r":\w+:`~?", "`", doc).replace("``", "`")  # reST roles and literals -> Markdown
    paragraphs = [" ".join(p.split()) for p in doc.strip().split("\n\n") if p.strip()]
    summary = paragraphs[0] if paragraphs else name
    source = next((p for p in paragraphs if p.startswith("Source:")), None)
    if source is None and len(paragraphs) > 1:  # e.g. the baselines: the design paragraph
        source = paragraphs[1]
    return summary, source


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.2f}"
    return "-" if value is None else str(value)


def _spec_row(name: str, spec: Mapping[str, Any]) -> str:
    norm = spec.get("normalize")
    if isinstance(norm, Mapping):
        norm = f"mean {norm.get('mean')}, std {norm.get('std')}"
    cells = [name, spec.get("channels"), spec.get("file_channels") or "-",
             spec.get("bit_depth"), spec.get("scale"), spec.get("offset"),
             spec.get("unit") or "-", norm]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _emm_markdown(emm: Mapping[str, Any]) -> list[str]:
    from .engine.robustness import protocol_markdown  # no Lightning: metrics and masking only

    lines = protocol_markdown(dict(emm)).strip().splitlines()
    return lines[2:] if lines and lines[0].startswith("# ") else lines  # the card has headings


def model_card(hub_config: Mapping[str, Any], repo_id: str = PLACEHOLDER_REPO,
               license: str | None = None) -> str:
    """The model card (``README.md``) of a saved model, from its ``config.json``.

    Front matter: ``library_name: fusionseg``, ``license`` (``license``, else the encoder's,
    else ``apache-2.0``), ``pipeline_tag: image-segmentation``, ``tags`` (method, backbone,
    modalities). Sections: method (and its published source), modalities and their specs,
    classes, training data and schedule, metrics, licence, usage.
    """
    cfg = hub_config.get("config") or {}
    model, data, train = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("train") or {}
    method, backbone = str(model.get("name")), str(model.get("backbone") or "-")
    modalities = [str(m) for m in model.get("modalities") or []]
    classes = list(hub_config.get("classes") or [])
    palette = list(hub_config.get("palette") or [])
    raw = hub_config.get("encoder_licence")
    enc = EncoderLicence(**raw) if isinstance(raw, Mapping) else None
    if enc is not None and enc.hub_id == "none":  # initialised from a randomly initialised model
        enc_text, enc = enc.text, None
    else:
        enc_text = enc.text if enc else ("The encoder was trained from random initialisation: "
                                         "no pretrained-weights licence applies.")
    hub_licence = license or (enc.hub_id if enc else "apache-2.0")
    tags = ["fusionseg", "semantic-segmentation", "multimodal", method, backbone, *modalities]
    front = ["---", "library_name: fusionseg", f"license: {hub_licence}"]
    if enc is not None and license is None and enc.hub_id == "other":
        front += [f"license_name: {enc.name}", f"license_link: {enc.link}"]
    front += ["pipeline_tag: image-segmentation", "tags:",
              *[f"- {t}" for t in dict.fromkeys(tags)], "---", ""]
    summary, paper = _method_summary(method)
    name = cfg.get("name") or method
    lines = [*front, f"# {name}", "",
             f"A `{method}` model (encoder `{backbone}`) for semantic segmentation from "
             f"{' + '.join(modalities)}, {len(classes) or hub_config.get('num_classes')} "
             f"classes, trained with fusionseg {hub_config.get('fusionseg_version', '')} "
             f"(saved from `{hub_config.get('source_checkpoint') or '-'}`).", "",
             "## Method", "", summary, ""]
    if paper:
        lines += [paper, ""]
    lines += ["The model section of the run config (all of it: `config.json`):", "", "```yaml",
              yaml.safe_dump({"model": model}, sort_keys=False).strip(), "```", "",
              "## Modalities", "",
              "Input order and the specs `fusionseg predict` reads each file with (stored in "
              "`config.json`):", "",
              "| modality | channels | file channels | bit depth | scale | offset | unit | "
              "normalize |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    specs = hub_config.get("specs") or {}
    lines += [_spec_row(m, specs.get(m) or {}) for m in modalities]
    lines += ["", "## Classes", "", "| index | class | colour |", "| --- | --- | --- |"]
    for i, c in enumerate(classes):
        rgb = palette[i] if i < len(palette) else None
        colour = "#" + "".join(f"{int(v):02x}" for v in rgb) if rgb else "-"
        lines.append(f"| {i} | {c} | `{colour}` |")
    crop = data.get("crop_size")
    schedule = (f"{train.get('max_epochs')} epochs" if (train.get("max_steps") or -1) < 0
                else f"{train.get('max_steps')} steps")
    loss = train.get("loss")
    loss = loss.get("name") if isinstance(loss, Mapping) else loss
    metrics = hub_config.get("metrics") or {}
    lines += ["", "## Training", "",
              f"- data: `{data.get('dataset')}` at `{data.get('root')}`, train split "
              f"`{data.get('train_split')}`, validation split `{data.get('val_split')}`"
              + (f", conditions {', '.join(hub_config['conditions'])}"
                 if hub_config.get("conditions") else ""),
              f"- crops {crop[0]}x{crop[1]} px, batch {data.get('batch_size')}, "
              f"scale range {data.get('scale_range')}" if crop else
              f"- batch {data.get('batch_size')}",
              f"- schedule: {schedule}, optimizer {train.get('optimizer')}, lr "
              f"{train.get('lr')} ({train.get('schedule')}, warmup {train.get('warmup_epochs')} "
              f"epochs), weight decay {train.get('weight_decay')}, loss {loss}",
              f"- precision {hub_config.get('precision') or train.get('precision') or 'auto'}, "
              f"seed {cfg.get('seed')}",
              f"- encoder weights: {model.get('pretrained') or 'random initialisation'}"
              + (f"; initialised from `{train.get('init_from')}`" if train.get("init_from")
                 else ""),
              ]
    if (train.get("robust") or {}).get("enabled"):
        lines.append("- robust training (missing-modality second stage) on, see `config.json`")
    if "epoch" in metrics:
        lines.append(f"- the saved weights: epoch {metrics['epoch'] + 1}, step "
                     f"{metrics.get('global_step')}")
    lines += ["", "## Metrics", ""]
    best, ev, emm = metrics.get("best_val_miou"), metrics.get("eval"), metrics.get("emm")
    if best:
        which = best.get("checkpoint")
        lines.append(f"Best validation mIoU of the training run: **{_fmt(best['value'])}**"
                     + (f" (`{which}`)" if which else "") + ".")
        lines.append("")
    if ev:
        lines += [f"`fusionseg eval` on the {ev['split']} split ({ev['file']}):", "",
                  "| mIoU | OA | mAcc | mF1 |", "| --- | --- | --- | --- |",
                  "| " + " | ".join(_fmt(ev.get(k)) for k in ("mIoU", "OA", "mAcc", "mF1"))
                  + " |", ""]
    if emm:
        lines += [f"Entire-missing modality (EMM; `fusionseg eval --protocol emm`, {emm['file']}):",
                  "", *_emm_markdown(emm), ""]
    if not (best or ev or emm):
        lines += ["No metrics were stored with the checkpoint.", ""]
    lines += ["## Licence", "",
              enc_text,
              "",
              f"The `license` of this card ({hub_licence}) was "
              + ("set by `--license`." if license else
                 "derived from the encoder weights." if enc else
                 "fusionseg's own default; choose another with `--license`."),
              "", "## Use", "", "```bash",
              f"fusionseg predict --ckpt hf://{repo_id} --input DIR --out preds/",
              f"fusionseg eval CONFIG --ckpt hf://{repo_id} --protocol emm",
              f"fusionseg export --ckpt hf://{repo_id} --out model.onnx", "```", "",
              "```python", "import fusionseg", "",
              f'model = fusionseg.from_pretrained("{repo_id}")  # eval mode',
              "# each modality a float32 [B, C, H, W] tensor, normalised as its spec says; "
              "an absent key is a missing modality",
              "logits = model({" + ", ".join(f'"{m}": {m}' for m in modalities)
              + "})  # [B, K, H, W]",
              "```", "",
              "`train.init_from: hf://" + repo_id + "` starts a new run from these weights.",
              ""]
    return "\n".join(lines)


def _licence_json(run_config: Mapping[str, Any], contents: object) -> dict[str, Any] | None:
    """``config.json["encoder_licence"]``: a saved folder's own, else :func:`encoder_licence`
    of the run config, as a JSON object (``None``: random initialisation)."""
    stored = contents.get("fusionseg_hub") if isinstance(contents, Mapping) else None
    if isinstance(stored, Mapping) and "encoder_licence" in stored:
        return stored["encoder_licence"]
    enc = encoder_licence(run_config)
    return None if enc is None else {"hub_id": enc.hub_id, "text": enc.text, "name": enc.name,
                                     "link": enc.link}


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as safetensors takes it: CPU, contiguous, no shared storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_pretrained(ckpt: str | os.PathLike, out_dir: str | os.PathLike, *,
                    config: str | os.PathLike | None = None, repo_id: str = PLACEHOLDER_REPO,
                    license: str | None = None) -> SavedModel:
    """Write a checkpoint as a saved model folder (layout: the module docstring).

    The model is built as ``fusionseg predict`` builds it
    (:func:`fusionseg.inference.loading.model_from_contents`: the stored config, the weights
    loaded strictly), and its state dict written: exactly the weights the checkpoint predicts
    with. The files are written atomically; others in ``out_dir`` are left alone.

    Args:
        ckpt: a training checkpoint (also a saved folder or ``hf://``, to re-save).
        out_dir: the folder to write (created when missing).
        config: a YAML run config replacing the stored one (a checkpoint without one).
        repo_id: the repository the model card's usage lines name.
        license: the card's ``license`` (default: the encoder weights', else ``apache-2.0``).

    Raises:
        CheckpointError: an unreadable, unsafe or mismatching checkpoint; ``out_dir`` is a file.
        ConfigError: an invalid config.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    source, contents = read_model_source(ckpt, read_weights_file)
    loaded = model_from_contents(contents, source.name, config)
    meta = stored_meta(contents) if isinstance(contents, Mapping) else {}
    run_config = loaded.cfg.model_dump(mode="json")
    meta["fusionseg_config"] = run_config
    hub_config = config_json_from_meta(
        meta, num_classes=int(getattr(loaded.model, "num_classes", 0) or len(
            meta.get("fusionseg_classes") or [])) or None,
        method=loaded.cfg.model.name, backbone=loaded.cfg.model.backbone,
        modalities=list(loaded.cfg.model.modalities),
        metrics=_metrics(contents, source, run_config),
        encoder_licence=_licence_json(run_config, contents),
        source_checkpoint=source.path.name if source.hub is None else source.name)
    weights = _state_dict(loaded.model)
    card = model_card(hub_config, repo_id, license)
    from safetensors.torch import save_file

    with atomic_path(out / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(hub_config, indent=2) + "\n", encoding="utf-8")
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "library": "fusionseg"})
        # safetensors writes through a private temporary file (mode 0600): give the weights
        # the mode a plainly written file gets (the umask's), as config.json has
        tmp.chmod((out / CONFIG_FILE).stat().st_mode & 0o777)
    with atomic_path(out / CARD_FILE) as tmp:
        tmp.write_text(card, encoding="utf-8")
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    return SavedModel(out, (out / WEIGHTS_FILE, out / CONFIG_FILE, out / CARD_FILE),
                      len(weights), nbytes, card)


def push_to_hub(ckpt: str | os.PathLike, repo_id: str, *, private: bool = False,
                revision: str | None = None, config: str | os.PathLike | None = None,
                license: str | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Save ``ckpt`` (:func:`save_pretrained`) to a temporary folder and upload it to the
    model repository ``repo_id`` (created when missing; ``revision``: a branch, created when
    missing).

    Returns:
        The URL of the commit.

    Raises:
        ConfigError: ``repo_id`` is not ``ORG/NAME``.
        RunError: the hub refused (not logged in, no write access, ...) or could not be
            reached; the message says which.
        CheckpointError, ConfigError: as :func:`save_pretrained`.
    """
    if parse_hub_uri(f"hf://{repo_id}") is None or repo_id.count("/") != 1:
        raise ConfigError(f"{repo_id!r}: a repository id is ORG/NAME")
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="fusionseg-hub-") as tmp:
        save_pretrained(ckpt, tmp, config=config, repo_id=repo_id, license=license)
        api = huggingface_hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                commit_message=commit_message or f"fusionseg hub push {Path(ckpt).name}")
        except OSError as e:  # huggingface_hub's HTTP and connection errors
            raise RunError(f"hf://{repo_id}: upload failed: {' '.join(str(e).split())} "
                           "(log in with `hf auth login` or set HF_TOKEN)") from None
    return str(getattr(info, "commit_url", info))


def load_pretrained(source: str | os.PathLike, revision: str | None = None) -> LoadedModel:
    """A saved model with what its ``config.json`` says: :class:`LoadedModel` ``(model, meta,
    cfg)`` (``meta``: the ``fusionseg_*`` entries: classes, palette, specs, ...).

    Args:
        source: a local folder (or checkpoint file) that exists, else a hub repository:
            ``ORG/NAME`` or ``hf://ORG/NAME[@REVISION]``.
        revision: branch, tag or commit of a hub repository.

    Raises:
        ConfigError: ``revision`` given twice, or with a local folder.
        CheckpointError: no such folder or repository (offline: not in the cache); not a
            saved fusionseg model; weights that do not fit the model.
    """
    text = os.fspath(source)
    ref = parse_hub_uri(text)
    if ref is None and Path(text).exists():
        if revision is not None:
            raise ConfigError(f"{text}: a local folder has no revision")
        return load_checkpoint_model(text)
    if ref is None:
        try:
            ref = parse_hub_uri(f"hf://{text}")
        except CheckpointError:
            raise CheckpointError(f"{text}: no such folder, and not a Hugging Face repository "
                                  "id (ORG/NAME)") from None
    if revision is not None and ref.revision is not None and revision != ref.revision:
        raise ConfigError(f"{text}: two revisions ({ref.revision!r} and {revision!r})")
    uri = ref.uri if revision is None else f"hf://{ref.repo_id}@{revision}"
    return load_checkpoint_model(uri)


def from_pretrained(source: str | os.PathLike, revision: str | None = None) -> torch.nn.Module:
    """A saved fusionseg model, in eval mode, ready to call with a batch dict
    (``{modality: float32 [B, C, H, W]}`` -> logits ``[B, K, H, W]``).

    ``source``: a folder written by ``fusionseg hub save`` (read directly), else a Hugging
    Face repository ``ORG/NAME`` or ``hf://ORG/NAME[@REVISION]`` (through
    ``huggingface_hub.snapshot_download``: its cache, ``HF_HUB_OFFLINE``). Only safetensors and
    JSON are read. Classes, palette and modality specs: :func:`load_pretrained`.

    Raises:
        ConfigError, CheckpointError: as :func:`load_pretrained`.
    """
    return load_pretrained(source, revision).model
