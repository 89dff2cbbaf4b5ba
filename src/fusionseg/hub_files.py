"""Where a trained model's files are: a checkpoint, a saved model folder or ``hf://ORG/NAME``.

``--ckpt`` of ``fusionseg predict`` / ``eval`` / ``export`` and ``train.init_from`` take

* a checkpoint file (``best.ckpt``, a plain state dict, a released file), read as before;
* a **saved model folder**, as ``fusionseg hub save`` writes it::

      DIR/model.safetensors   the model's state dict (safetensors: tensors only, no code)
      DIR/config.json         {"library_name": "fusionseg", "format": "fusionseg-model",
                               "format_version": 1, "fusionseg_version": ..., "config": run
                               config, "classes", "palette", "conditions", "specs",
                               "precision", "num_classes", "best_val_miou", ...}
      DIR/README.md           the model card (not read here)

* ``hf://ORG/NAME`` or ``hf://ORG/NAME@REVISION``: such a folder on the Hugging Face hub,
  resolved with ``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_CACHE``, and its
  offline mode, ``HF_HUB_OFFLINE=1``, both read when called). A ``pathlib.Path`` folds the
  double slash (``hf:/ORG/NAME``); that form is accepted too.

:func:`read_model_source` turns any of them into what reading a checkpoint file gives (a
mapping with ``"state_dict"`` and the ``fusionseg_*`` entries training stores), so a saved
folder goes through the same loading code as the checkpoint it was saved from. Nothing here
unpickles: a folder is JSON and safetensors only.

This module sits in the base layer (it imports nothing of fusionseg but the version and the
errors), so that both ``fusionseg.engine`` and ``fusionseg.inference`` use it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HubRef",
    "META_FIELDS",
    "ModelSource",
    "WEIGHTS_FILE",
    "config_json_from_meta",
    "parse_hub_uri",
    "read_model_source",
    "read_saved_model",
    "resolve_model_source",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: ``config.json["format"]`` of a saved fusionseg model
FORMAT = "fusionseg-model"
#: the newest ``config.json["format_version"]`` this fusionseg reads (and the one it writes)
FORMAT_VERSION = 1
#: ``config.json`` keys that hold a checkpoint's ``fusionseg_<key>`` entries
META_FIELDS = ("config", "classes", "palette", "conditions", "specs", "precision")

_URI = re.compile(r"^hf:/{1,2}(?P<repo>[^@]*)(?:@(?P<revision>.*))?$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class HubRef:
    """A model repository on the Hugging Face hub: ``repo_id`` (``ORG/NAME``) and
    ``revision`` (branch, tag or commit; ``None``: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        """``hf://ORG/NAME[@REVISION]``."""
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_hub_uri(source: str | os.PathLike) -> HubRef | None:
    """``"hf://org/name@v1"`` -> ``HubRef("org/name", "v1")``; ``None`` for anything not
    starting with ``hf:/``.

    Raises:
        CheckpointError: an ``hf://`` URI without a valid repository id or with an empty
            revision.
    """
    m = _URI.match(os.fspath(source))
    if m is None:
        return None
    repo, revision = m["repo"].strip("/"), m["revision"]
    if not _REPO.match(repo) or (revision is not None and not revision.strip()):
        raise CheckpointError(f"{os.fspath(source)}: not a Hugging Face model URI; expected "
                              "hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return HubRef(repo, revision)


@dataclass(frozen=True)
class ModelSource:
    """A model source resolved to local files.

    Attributes:
        path: the checkpoint file or the saved model folder on this machine (for ``hf://``:
            the snapshot folder in the Hugging Face cache).
        name: how messages and result files name it: the ``hf://`` URI or the path.
        hub: the hub repository, for ``hf://`` sources.
    """

    path: Path
    name: str
    hub: HubRef | None = None

    @property
    def is_saved_model(self) -> bool:
        """Whether :attr:`path` is a folder (a saved model), not a checkpoint file."""
        return self.path.is_dir()

    @property
    def results_base(self) -> Path:
        """A path whose siblings ``{stem}_eval_{split}.json`` etc. result files take: the
        checkpoint file itself; ``DIR/model`` for a saved folder (results go inside it);
        ``./ORG--NAME`` in the working directory for ``hf://`` (never into the hub cache)."""
        if self.hub is not None:
            return Path.cwd() / self.hub.repo_id.replace("/", "--")
        return self.path / "model" if self.is_saved_model else self.path


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _snapshot(ref: HubRef) -> Path:
    """The repository's files (:data:`WEIGHTS_FILE`, :data:`CONFIG_FILE`, :data:`CARD_FILE`)
    through ``huggingface_hub.snapshot_download``.

    Raises:
        CheckpointError: the repository or revision is unknown, private or gated, or, offline,
            not in the cache; the hub cannot be reached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from . import __version__

    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(
            ref.repo_id, revision=ref.revision, cache_dir=cache, local_files_only=offline,
            allow_patterns=[WEIGHTS_FILE, CONFIG_FILE, CARD_FILE], library_name="fusionseg",
            library_version=__version__))
    except RevisionNotFoundError:
        problem = f"the repository has no revision {ref.revision!r}"
    except GatedRepoError:
        problem = "a gated repository: accept its conditions on huggingface.co and log in"
    except RepositoryNotFoundError:
        problem = ("no such model repository on the Hugging Face hub (a private one needs "
                   "`hf auth login` or HF_TOKEN)")
    except LocalEntryNotFoundError:
        where = cache or "the Hugging Face cache"
        problem = (f"not in {where} and HF_HUB_OFFLINE is set; download it once online"
                   if offline else f"not in {where} and the hub could not be reached")
    except HFValidationError as e:
        problem = f"not a valid repository id ({' '.join(str(e).split())})"
    except OSError as e:  # connection and HTTP errors of huggingface_hub are OSErrors
        problem = f"could not be downloaded ({' '.join(str(e).split())})"
    raise CheckpointError(f"{ref.uri}: {problem}")


def resolve_model_source(source: str | os.PathLike) -> ModelSource:
    """``hf://ORG/NAME[@REV]`` -> its snapshot folder (downloaded or from the cache); a path
    -> itself (a file or folder; whether it exists is checked by the reader).

    Raises:
        CheckpointError: a malformed ``hf://`` URI; see :func:`_snapshot`.
    """
    ref = parse_hub_uri(source)
    if ref is None:
        path = Path(source)
        return ModelSource(path, str(path))
    return ModelSource(_snapshot(ref), ref.uri, ref)


def _config_error(config: Any) -> str | None:
    """What makes ``config`` (the parsed ``config.json``) not a fusionseg model's, or None."""
    if not isinstance(config, dict):
        return f"not a fusionseg model config (a JSON {type(config).__name__}, not an object)"
    library = config.get("library_name")
    if library != "fusionseg" or config.get("format") != FORMAT:
        hint = ""
        if "model_type" in config:
            hint = (f"; a transformers config (model_type {config['model_type']!r}): an encoder "
                    "converts with `fusionseg weights convert`")
        elif library:
            hint = f"; written for library {library!r}"
        return f"not a fusionseg model config (no library_name 'fusionseg'{hint})"
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        return f"format_version {version!r} is not a positive integer"
    if version > FORMAT_VERSION:
        return (f"written by a newer fusionseg (format_version {version}, fusionseg "
                f"{config.get('fusionseg_version', '?')}); this one reads up to {FORMAT_VERSION}")
    if not isinstance(config.get("config"), dict):
        return "holds no run config ('config' object)"
    return None


def read_saved_model(directory: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """A saved model folder as a checkpoint's contents: ``{"state_dict": {key: Tensor},
    "fusionseg_config": {...}, "fusionseg_classes": [...], ...}`` (the entries
    :data:`META_FIELDS` names that ``config.json`` holds, plus ``"fusionseg_hub"``: the whole
    ``config.json``).

    Args:
        directory: the folder (``model.safetensors`` + ``config.json``).
        name: how messages name it (default: the folder).

    Raises:
        CheckpointError: not a folder; a file missing; ``config.json`` not JSON, of another
            library, of a newer format or without a run config; ``model.safetensors`` not
            readable as safetensors.
    """
    directory = Path(directory)
    label = name or str(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{label}: not a saved fusionseg model folder")
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"{label}: not a saved fusionseg model: no {' or '.join(missing)} "
                              "(`fusionseg hub save CKPT DIR` writes one)")
    cfg_file = directory / CONFIG_FILE
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{label}/{CONFIG_FILE}: not valid JSON ({e})") from None
    problem = _config_error(config)
    if problem:
        raise CheckpointError(f"{label}/{CONFIG_FILE}: {problem}")
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{label}/{WEIGHTS_FILE}: not a readable safetensors file "
                              f"({' '.join(str(e).split())})") from None
    contents: dict[str, Any] = {"state_dict": state_dict, "fusionseg_hub": config}
    for key in META_FIELDS:
        if config.get(key) is not None:
            contents[f"fusionseg_{key}"] = config[key]
    return contents


def config_json_from_meta(meta: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``config.json`` of a saved model from a checkpoint's ``fusionseg_*`` entries
    (``meta``; see :data:`META_FIELDS`) and ``extra`` keys, with the format keys first."""
    from . import __version__

    out: dict[str, Any] = {"library_name": "fusionseg", "format": FORMAT,
                           "format_version": FORMAT_VERSION, "fusionseg_version": __version__}
    for key in META_FIELDS:
        out[key] = meta.get(f"fusionseg_{key}")
    out.update(extra)
    return out


def read_model_source(source: str | os.PathLike, read_file: Callable[[Path], object]
                      ) -> tuple[ModelSource, object]:
    """Resolve ``source`` (:func:`resolve_model_source`) and read it: a folder with
    :func:`read_saved_model`, a file with ``read_file`` (e.g.
    :func:`fusionseg.models.weights.read_weights_file`).

    Returns:
        ``(ModelSource, contents)``: contents as reading a checkpoint file gives them.

    Raises:
        CheckpointError: see :func:`resolve_model_source`, :func:`read_saved_model` and
            ``read_file``.
    """
    resolved = resolve_model_source(source)
    if resolved.is_saved_model:
        return resolved, read_saved_model(resolved.path, resolved.name)
    return resolved, read_file(resolved.path)
