"""MLflow tracking: one parent run per pipeline invocation (or Hydra sweep), one nested run per stage.

Stages call `stage_run(cfg, "train")`; it nests under, in order: an active MLflow run in this process
(the pipeline), $CARDFORGE_PARENT_RUN_ID (a pipeline that started the stage as a subprocess), the
sweep's parent run (Hydra multirun, created by `MlflowSweepCallback`), else it is a top-level run.
Each run gets the resolved config as `config.yaml`, flattened params (long values truncated, never a
crash), and tags for the git commit, the config hash, the experiment and the llama.cpp release.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cardforge.core import paths

PARENT_ENV = "CARDFORGE_PARENT_RUN_ID"
SWEEP_RUN_FILE = "mlflow_sweep_run_id"
# keys that say where/how a run was made, not what it computes: left out of the config hash
HASH_EXCLUDE = ("paths", "logger", "run_name", "force", "stage", "until", "plan")
_last_stage_run: dict[str, str] = {}


def last_stage_run_id(stage: str) -> str | None:
    """The id of the latest run `stage_run(cfg, stage)` opened in this process."""
    return _last_stage_run.get(stage)


def tracking_uri(cfg: DictConfig | None = None) -> str:
    uri = None
    if cfg is not None:
        uri = OmegaConf.select(cfg, "logger.tracking_uri")
    return uri or paths.default_tracking_uri()


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store sit next to its database file (never in the cwd's ./mlruns)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").resolve().as_uri()
    return None


def get_or_create_experiment(name: str, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    loc = artifact_root(uri)
    try:
        return client.create_experiment(name, artifact_location=f"{loc}/{name}" if loc else None)
    except Exception:  # created concurrently by a sibling sweep job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def config_hash(cfg: DictConfig | Mapping, sections: tuple[str, ...] | None = None) -> str:
    """sha256 over the resolved config (optionally only some sections), stable across key order."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in HASH_EXCLUDE and k != "hydra"}
    if sections is not None:
        data = {k: data.get(k) for k in sections}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
    return out


def _param_limits() -> tuple[int, int]:
    try:
        from mlflow.utils import validation

        return validation.MAX_ENTITY_KEY_LENGTH, validation.MAX_PARAM_VAL_LENGTH
    except Exception:
        return 250, 500


def safe_params(cfg: DictConfig | Mapping) -> dict[str, str]:
    """Flattened params that MLflow accepts: over-long values are truncated with a pointer to config.yaml."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg
    data = {k: v for k, v in data.items() if k != "hydra"}
    max_key, max_val = _param_limits()
    marker = "...[truncated; see config.yaml]"
    params = {}
    for key, val in flatten(data).items():
        if len(val) > max_val:
            val = val[: max_val - len(marker)] + marker
        params[key[:max_key]] = val
    return params


def git_info() -> dict[str, str]:
    root = paths.repo_root()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", "unknown"
    return {"git.commit": commit, "git.dirty": dirty}


def llama_cpp_tags() -> dict[str, str]:
    try:
        from cardforge.core import llama_cpp

        info = llama_cpp.release_info()
    except Exception:  # not built yet: runs that do not touch llama.cpp still log
        return {}
    return {f"llama_cpp.{k}": str(v) for k, v in info.items()}


def run_tags(cfg: DictConfig, stage: str) -> dict[str, str]:
    tags = {
        "cardforge.stage": stage,
        "cardforge.experiment": str(OmegaConf.select(cfg, "experiment", default="unknown")),
        "cardforge.config_hash": config_hash(cfg),
    }
    tags.update(git_info())
    tags.update(llama_cpp_tags())
    return tags


def _sweep_parent_id() -> str | None:
    """The parent run of the current Hydra multirun, if any (written by MlflowSweepCallback)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    f = Path(hc.sweep.dir) / SWEEP_RUN_FILE
    return f.read_text().strip() if f.is_file() else None


def log_config(cfg: DictConfig) -> None:
    import mlflow

    container = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True, enum_to_str=True).items() if k != "hydra"}
    mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(container)), "config.yaml")
    params = safe_params(cfg)
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[i : i + 100]))


class Killed(BaseException):
    """SIGTERM as an exception (see `terminate_raises`), so the open runs end KILLED instead of RUNNING."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"killed by {signal.Signals(signum).name}")


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Inside: SIGTERM raises `Killed` in the main thread, once (a second SIGTERM kills as usual). Only where
    SIGTERM has its default action: a handler someone else installed stays in charge."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Killed(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def end_run(run_id: str, status: str) -> None:
    """End run `run_id` with `status`, and any run left open inside it (the same exception ended those)."""
    import mlflow

    while (active := mlflow.active_run()) is not None:
        mine = active.info.run_id == run_id
        mlflow.end_run(status=status)
        if mine:
            return
    mlflow.MlflowClient().set_terminated(run_id, status)  # not on the fluent stack any more (ended by id)


def exit_status(exc: BaseException | None) -> str:
    """MLflow's status of a run left by `exc`: KILLED for Ctrl-C / SIGTERM, FAILED for any other exception."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (KeyboardInterrupt, Killed)) else "FAILED"


@contextlib.contextmanager
def stage_run(cfg: DictConfig, stage: str, run_name: str | None = None, parent_run_id: str | None = None
              ) -> Iterator[Any]:
    """Open the stage's MLflow run (nested where a parent exists); FAILED on an exception, KILLED on Ctrl-C or
    SIGTERM (the outermost run turns SIGTERM into `Killed`, so a killed stage does not stay RUNNING).

    The parent: the active run, else `parent_run_id` (a stage that reports on a pipeline run it is not part
    of: card, release), else $CARDFORGE_PARENT_RUN / the sweep's."""
    import mlflow

    uri = tracking_uri(cfg)
    exp_name = OmegaConf.select(cfg, "logger.experiment_name", default="cardforge")
    exp_id = get_or_create_experiment(exp_name, uri)
    active = mlflow.active_run()
    parent = active.info.run_id if active else (parent_run_id or os.environ.get(PARENT_ENV) or _sweep_parent_id())
    name = run_name or OmegaConf.select(cfg, "run_name") or stage
    kwargs: dict[str, Any] = {"experiment_id": exp_id, "run_name": name, "tags": run_tags(cfg, stage)}
    if active:
        kwargs["nested"] = True
    elif parent:
        kwargs["parent_run_id"] = parent
    with terminate_raises():
        run = mlflow.start_run(**kwargs)
        _last_stage_run[stage] = run.info.run_id
        try:
            log_config(cfg)
            yield run
        except BaseException as e:
            end_run(run.info.run_id, exit_status(e))
            raise
        else:
            end_run(run.info.run_id, "FINISHED")


@contextlib.contextmanager
def pipeline_run(cfg: DictConfig, run_name: str | None = None) -> Iterator[Any]:
    """The parent run of one pipeline invocation; stages opened inside nest under it."""
    with stage_run(cfg, "pipeline", run_name=run_name or f"pipeline:{cfg.experiment}") as run:
        os.environ[PARENT_ENV] = run.info.run_id  # for stages run as subprocesses
        try:
            yield run
        finally:
            os.environ.pop(PARENT_ENV, None)


class MlflowSweepCallback(Callback):
    """Hydra callback: a Hydra multirun gets one parent MLflow run; its jobs nest under it.

    Jobs may run in other processes (joblib launcher), so the parent's id goes to a file in the sweep dir.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(config)
        exp_id = get_or_create_experiment(OmegaConf.select(config, "logger.experiment_name", default="cardforge"), uri)
        overrides = list(config.hydra.overrides.task)
        client = mlflow.MlflowClient(uri)
        stage = OmegaConf.select(config, "stage", default="sweep")
        stage = getattr(stage, "value", stage)  # the Stage enum's name, not "Stage.train"
        run = client.create_run(
            exp_id,
            run_name=f"sweep:{stage}:{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "cardforge.stage": stage,
                "cardforge.sweep": "true",
                "cardforge.sweep.overrides": " ".join(overrides)[:5000],
                "cardforge.experiment": str(OmegaConf.select(config, "experiment", default="unknown")),
                **git_info(),
            },
        )
        with open(sweep_dir / ".mlflow.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (sweep_dir / SWEEP_RUN_FILE).write_text(run.info.run_id)
        self._run_id, self._uri = run.info.run_id, uri

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        if getattr(self, "_run_id", None):
            mlflow.MlflowClient(self._uri).set_terminated(self._run_id, "FINISHED")
