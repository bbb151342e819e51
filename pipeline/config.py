"""Configuration: ``conf/`` is the source, ``params.yaml`` its committed composition.

DVC composes ``conf/`` into ``params.yaml`` (``hydra.enabled``) for ``dvc repro`` and
``dvc exp run -S ...``; stages read ``params.yaml``. A stage run by hand accepts the same
Hydra-style overrides on its command line::

    python -m pipeline.stages.train train.epochs=1 model=mlp

``group=option`` swaps a whole config group for ``conf/<group>/<option>.yaml``;
``a.b=value`` sets an existing key; ``+a.b=value`` adds a new one. Values are parsed as
YAML, as Hydra does. Every section is then validated against a dataclass schema, so a
wrong type or an unknown key is a one-line error instead of a crash later on.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.errors import KerascopeError, choices_hint, interrupt_handler

T = TypeVar("T")

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"


def repo_root() -> Path:
    """The directory stages run in: where ``params.yaml`` lives (DVC runs from there)."""
    return Path(os.environ.get("KERASCOPE_ROOT", os.getcwd()))


def workspace_paths(params: dict) -> dict[str, Path]:
    """The ``paths`` section checked against the workspace (see :mod:`pipeline.workspace`)."""
    from pipeline.workspace import check_paths

    return check_paths(params.get("paths"), repo_root())


def config_groups(conf_dir: Path) -> dict[str, list[str]]:
    """Map each config group in ``conf_dir`` to its option names."""
    groups = {}
    for sub in sorted(p for p in conf_dir.iterdir() if p.is_dir()):
        groups[sub.name] = sorted(f.stem for f in sub.glob("*.yaml"))
    return groups


def compose(overrides: Sequence[str] = (), conf_dir: str | Path | None = None) -> dict:
    """Compose ``conf/`` with Hydra, exactly as DVC does for ``params.yaml``.

    Args:
        overrides: Hydra overrides such as ``["model=mlp", "train.epochs=1"]``.
        conf_dir: The config directory (default: ``conf/`` under the repo root).

    Returns:
        The composed configuration as plain Python containers.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf_dir = Path(conf_dir or repo_root() / CONF_DIR).resolve()
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(params: dict, overrides: Sequence[str], conf_dir: Path) -> dict:
    """Apply Hydra-style command-line overrides to a loaded ``params.yaml``.

    Args:
        params: The current composed configuration.
        overrides: ``group=option``, ``a.b=value`` or ``+a.b=value`` strings.
        conf_dir: Where group option files live.

    Returns:
        A new configuration dict.

    Raises:
        KerascopeError: Malformed override, unknown key, or unknown group option.
    """
    cfg = OmegaConf.create(params)
    groups = config_groups(conf_dir) if conf_dir.is_dir() else {}
    for override in overrides:
        if "=" not in override:
            raise KerascopeError(
                f"override '{override}' is not of the form key=value "
                "(for example train.epochs=2 or model=mlp)"
            )
        key, value = override.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        if key in groups:
            if value not in groups[key]:
                raise KerascopeError(
                    f"unknown option '{value}' for config group '{key}'; "
                    f"{choices_hint(value, groups[key])}"
                )
            cfg[key] = OmegaConf.load(conf_dir / key / f"{value}.yaml")
            continue
        if not add and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            valid = (
                [f"{parent}.{k}" if parent else k for k in node]
                if isinstance(node, DictConfig)
                else []
            )
            raise KerascopeError(
                f"unknown config key '{key}' (prefix with + to add one); "
                f"{choices_hint(key, valid + list(groups))}"
            )
        OmegaConf.update(cfg, key, _parse_value(value), force_add=True)
    return OmegaConf.to_container(cfg, resolve=False)


def read_params_file(path: Path) -> dict:
    """Read ``params.yaml``, turning broken YAML or a non-mapping into one line.

    Raises:
        KerascopeError: The file is not valid YAML, or not a mapping of sections.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise KerascopeError(
            f"'{path}' is not valid YAML ({problem}{where}); fix it, or recompose it from conf/ "
            "with `python -m pipeline.config`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KerascopeError(f"cannot read '{path}': {exc}") from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise KerascopeError(
            f"'{path}' must be a mapping of config sections, got {type(params).__name__}; "
            "recompose it from conf/ with `python -m pipeline.config`"
        )
    return params


def load_params(overrides: Sequence[str] = (), root: str | Path | None = None) -> dict:
    """Load ``params.yaml`` (or compose ``conf/`` if it is absent) and apply overrides.

    Args:
        overrides: Hydra-style overrides from the command line.
        root: Repository root (default: the current directory).

    Returns:
        The full configuration as plain containers.

    Raises:
        KerascopeError: Broken ``params.yaml``, bad override, or no configuration.
    """
    root = Path(root or repo_root())
    params_file = root / PARAMS_FILE
    if params_file.exists():
        params = read_params_file(params_file)
    elif (root / CONF_DIR).is_dir():
        params = compose(conf_dir=root / CONF_DIR)
    else:
        raise KerascopeError(
            f"no {PARAMS_FILE} or {CONF_DIR}/ in {root}; run stages from the kerascope "
            "repository root"
        )
    return apply_overrides(params, overrides, root / CONF_DIR)


def section(params: dict, name: str, schema: type[T], exclude: Sequence[str] = ()) -> T:
    """Validate one config section against a dataclass schema.

    Args:
        params: The full configuration.
        name: Top-level key, for example ``"train"``.
        schema: A dataclass whose fields are the section's keys.
        exclude: Fields of the schema the section may not set (they come from
            elsewhere, such as the top-level ``seed``).

    Returns:
        An instance of ``schema``.

    Raises:
        KerascopeError: Missing section, unknown key or wrong type, as one line.
    """
    if name not in params:
        raise KerascopeError(f"config has no '{name}' section; valid: {', '.join(params)}")
    raw = params[name]
    if not isinstance(raw, dict):
        raise KerascopeError(f"config section '{name}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.name not in exclude}
    for key in raw:
        if key not in fields:
            raise KerascopeError(
                f"unknown config key '{name}.{key}'; "
                f"{choices_hint(key, [f'{name}.{k}' for k in fields])}"
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or ""
        raise KerascopeError(f"unknown config key '{name}.{key}'") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        value = getattr(exc, "value", None)
        ftype = getattr(exc, "object_type_str", None)
        field_type = fields.get(key.split(".")[0]) if key else None
        expected = getattr(field_type, "type", ftype) if field_type else ftype
        raise KerascopeError(
            f"invalid value {value!r} for '{name}.{key}'"
            + (f"; expected {expected}" if expected else "")
        ) from None
    return obj


@dataclass
class Job(Generic[T]):
    """What a stage's ``run`` receives: everything validated, nothing loaded yet.

    Attributes:
        cfg: The stage's own config section, validated against its schema.
        paths: Every configured path, checked against the workspace.
        params: The whole configuration (recorded in every output for provenance).
        seed: The top-level seed.
        model: The ``model`` section (:class:`pipeline.models.ModelSource`), for stages
            that load the model.
    """

    stage: str
    cfg: T
    paths: dict[str, Path]
    params: dict
    seed: int = 0
    model: Any = None

    def claim(self):
        """Lock and clear this stage's outputs (see :class:`pipeline.workspace.StageOutputs`)."""
        from pipeline.workspace import STAGE_OUTPUTS, claim

        names, metrics = STAGE_OUTPUTS[self.stage]
        return claim(self.paths, *names, metrics=metrics)

    @property
    def config_yaml(self) -> str:
        """The whole configuration as YAML."""
        return to_yaml(self.params)


def make_job(
    params: dict,
    stage: str,
    schema: type[T],
    *,
    section_name: str | None = None,
    loads_model: bool = False,
    exclude: Sequence[str] = (),
) -> Job[T]:
    """Validate what a stage reads and may write, without importing TensorFlow.

    Args:
        params: The full configuration.
        stage: The stage (its outputs are :data:`pipeline.workspace.STAGE_OUTPUTS`'s
            entry, checked to be absent or kerascope's own).
        schema: Its section's dataclass; its ``check(prefix)`` method, if any, is called.
        section_name: The config section, if not named after the stage.
        loads_model: The stage loads ``paths.model`` (reads the ``model`` section).
        exclude: Schema fields the section may not set.

    Raises:
        KerascopeError: One line, for the first problem found.
    """
    from pipeline.workspace import STAGE_OUTPUTS, preflight

    name = section_name or stage
    paths = workspace_paths(params)
    cfg = section(params, name, schema, exclude)
    if hasattr(cfg, "check"):
        cfg.check(name)
    names, metrics = STAGE_OUTPUTS[stage]
    preflight(paths, *names, metrics=metrics)
    source = None
    if loads_model:
        from pipeline.models import read_model_section

        source, _ = read_model_section(params.get("model"))
    return Job(stage, cfg, paths, params, int(params.get("seed", 0) or 0), source)


def to_yaml(params: dict) -> str:
    """Dump a configuration as YAML, for provenance attributes and reports."""
    return yaml.safe_dump(params, sort_keys=False)


def quiet_tensorflow_import() -> None:
    """Import TensorFlow with its C++ start-up log lines silenced.

    TensorFlow 2.21 prints absl log lines (oneDNN, CUDA probing) before its logging is
    initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them; they would bury the
    one-line errors kerascope promises. Set ``KERASCOPE_TF_LOGS=1`` to see them. Under
    ``TF_CONFIG`` only the import is silenced (the runtime must start later, see below).
    """
    if os.environ.get("KERASCOPE_TF_LOGS") or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow as tf

        # Listing devices starts TensorFlow's runtime, after which MultiWorkerMirrored-
        # Strategy can no longer configure its collective ops: under a TF_CONFIG (a
        # multi-worker launch) the runtime is left for the strategy to start.
        if not os.environ.get("TF_CONFIG"):
            tf.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Stage:
    """A stage's command-line entry (call it) and in-process runner (:meth:`apply`).

    Calling it reads ``params.yaml`` plus command-line overrides and calls
    ``configure``, which validates every setting and path the stage uses without
    importing TensorFlow, so a typo is reported in well under a second. Only then is
    TensorFlow imported and ``run`` called. A :class:`KerascopeError` becomes
    ``error: <stage>: <one line>`` with exit status 2, a full disk the same, and Ctrl-C
    ``interrupted`` with exit status 130. Outputs are written atomically by the stages,
    so an interrupted stage leaves its previous outputs or none.
    """

    def __init__(
        self, configure: Callable[[dict], T], run: Callable[[T], Any], tensorflow: bool = True
    ) -> None:
        self.configure, self.run, self.tensorflow = configure, run, tensorflow
        spec = run.__globals__.get("__spec__")
        self.name = (spec.name if spec else run.__module__).rsplit(".", 1)[-1]

    def apply(self, params: dict) -> None:
        """Run the stage in this process on a configuration (as tests and notebooks do)."""
        self.run(self.configure(params))

    def __call__(self) -> None:
        """Run from the command line (``python -m pipeline.stages.<name> key=value``)."""
        stage = self.name
        try:
            params = load_params(sys.argv[1:])
            job = self.configure(params)
            if self.tensorflow:
                quiet_tensorflow_import()
            signal.signal(signal.SIGINT, interrupt_handler)
            self.run(job)
        except KerascopeError as exc:
            print(f"error: {stage}: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            # Restore the default handler so a second Ctrl-C during clean-up kills at once.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            print(f"interrupted: {stage} stopped; no partial outputs were kept", file=sys.stderr)
            # Every output was already cleaned up on the way here. Skip the interpreter's
            # shutdown: TensorFlow's worker threads may still be inside an op, and
            # finalising under them can abort the process (SIGABRT) instead of exiting.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        except MemoryError:
            print(
                f"error: {stage}: out of memory; lower the batch size or the number of inputs",
                file=sys.stderr,
            )
            sys.exit(2)
        except OSError as exc:
            from pipeline.workspace import disk_full

            if not disk_full(exc):
                raise
            print(
                f"error: {stage}: no space left on the device ({exc.filename or exc}); nothing "
                "partial was kept: free some space and run the stage again",
                file=sys.stderr,
            )
            sys.exit(2)


def run_stage(
    configure: Callable[[dict], T],
    run: Callable[[T], Any],
    module: str = "",
    tensorflow: bool = True,
) -> Stage:
    """The :class:`Stage` of a module's ``configure`` and ``run``.

    Pass the module's ``__name__``: under ``python -m pipeline.stages.<name>`` (where it
    is ``"__main__"``) the stage runs at once. ``tensorflow=False`` for a stage that never
    touches a tensor (render), or imports TensorFlow itself only when needed (data): it
    skips the six-second TensorFlow import.
    """
    stage = Stage(configure, run, tensorflow)
    if module == "__main__":
        stage()
    return stage


def write_params(root: str | Path | None = None) -> Path:
    """Recompose ``conf/`` into ``params.yaml`` (what DVC does before ``dvc exp run``)."""
    root = Path(root or repo_root())
    target = root / PARAMS_FILE
    target.write_text(yaml.safe_dump(compose(conf_dir=root / CONF_DIR), sort_keys=False))
    return target


if __name__ == "__main__":
    print(f"wrote {write_params()}")
