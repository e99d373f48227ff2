"""MLflow tracking: one parent run per pipeline invocation (or Hydra sweep), one nested run per stage.

Stages call `stage_run(cfg, "train")`; it nests under, in order: an active MLflow run in this process
(the pipeline), $CARDFORGE_PARENT_RUN_ID (a pipeline that started the stage as a subprocess), the
sweep's parent run (Hydra multirun, created by `MlflowSweepCallback`), else it is a top-level run.
Each run gets the resolved config as `config.yaml`, the params that identify it (the stage's own config
sections + the experiment: `STAGE_PARAMS`; long values truncated, never a crash), a name that says what it
computes (`train r=16 steps=80`), and tags for the git commit, the config hash, the experiment, the llama.cpp
release and the process that owns it (pid, host, boot id, process start time).

kill -9 leaves no one to end a run, so every `stage_run` first reaps its experiment (`reap_dead_runs`): a
RUNNING run of this host whose process is gone is marked KILLED (renamed "... [killed]"), the processes it
left behind (found by the `CARDFORGE_RUN_ID` every child inherits: an orphaned llama-quantize, a server)
are stopped, and its `.*.tmp` files under the outputs are removed unless a live run shares that folder.
The next run of the same stage and config is tagged `resumed_from` (named "... [resumed]").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
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
RUN_ENV = "CARDFORGE_RUN_ID"  # the innermost open stage run; children inherit it, so a reaper can find them
# the config sections logged as params per stage (plus `experiment` and `stage`): what identifies the run and what
# the card reads back; the whole resolved config is the run's config.yaml artifact
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "models": ("model",),
    "data": ("model", "teacher", "data"),
    "train": ("model", "teacher", "data", "lora", "trainer"),
    "merge": ("model",),
    "mtp": ("model", "mtp"),
    "quant": ("model", "quant", "format"),
    "serve": ("model", "serve"),
    "eval": ("model", "eval", "serve"),
    "card": ("model", "teacher", "data", "eval", "card"),
    "release": ("model", "release"),
    "pipeline": ("model", "force", "until"),
}
PARAM_EXCLUDE = ("card.attribution",)  # long lists of links that flood compare tables
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


# MLflow 3's UI opens an experiment on its GenAI traces page unless the experiment says it holds model-development
# runs; with this tag it opens on the runs table
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_runs_experiment(client: Any, exp: Any) -> None:
    key, value = EXPERIMENT_KIND
    if (getattr(exp, "tags", None) or {}).get(key) is None:
        with contextlib.suppress(Exception):
            client.set_experiment_tag(exp.experiment_id, key, value)


def get_or_create_experiment(name: str, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        loc = artifact_root(uri)
        try:
            client.create_experiment(name, artifact_location=f"{loc}/{name}" if loc else None,
                                     tags=dict([EXPERIMENT_KIND]))
        except Exception:  # created concurrently by a sibling sweep job
            pass
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise RuntimeError(f"MLflow experiment {name!r} could not be created in {uri}")
    mark_runs_experiment(client, exp)
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


def safe_params(cfg: DictConfig | Mapping, stage: str | None = None) -> dict[str, str]:
    """Flattened params that MLflow accepts: over-long values are truncated with a pointer to config.yaml.
    With `stage`: only its `STAGE_PARAMS` sections (an unknown stage logs every section)."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg
    data = {k: v for k, v in data.items() if k != "hydra"}
    if stage in STAGE_PARAMS:
        keep = ("experiment", "stage", *STAGE_PARAMS[stage])
        data = {k: v for k, v in data.items() if k in keep}
    max_key, max_val = _param_limits()
    marker = "...[truncated; see config.yaml]"
    params = {}
    for key, val in flatten(data).items():
        if key.startswith(PARAM_EXCLUDE):
            continue
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
        "cardforge.experiment": str(cfg.experiment),
        "cardforge.config_hash": config_hash(cfg),
    }
    tags.update(git_info())
    tags.update(llama_cpp_tags())
    if (code := os.environ.get("CARDFORGE_CODE_VERSION")) and stage != "pipeline":
        tags["cardforge.code_version"] = code  # set by the pipeline around each stage (pipeline.fingerprints)
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


def log_config(cfg: DictConfig, stage: str | None = None) -> None:
    import mlflow

    container = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True, enum_to_str=True).items() if k != "hydra"}
    mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(container)), "config.yaml")
    params = safe_params(cfg, stage)
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[i : i + 100]))


# --- run names ---


def _steps(n: Any, epochs: Any) -> str:
    return f"steps={n}" if isinstance(n, int) and n > 0 else f"epochs={epochs}"


def default_run_name(cfg: DictConfig, stage: str) -> str:
    """What the run computes, in a few words (`train r=16 steps=80`): runs of one stage are told apart."""
    sel = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    val = lambda x: getattr(x, "value", x)  # noqa: E731
    try:
        if stage == "train":
            return f"train r={sel('lora.r')} {_steps(sel('trainer.max_steps'), sel('trainer.max_epochs'))}"
        if stage == "data":
            return f"data n={sel('data.num_samples')} teacher={sel('teacher.model')}"
        if stage == "mtp":
            return f"mtp steps={sel('mtp.steps')} prompts={sel('mtp.num_prompts')}"
        if stage == "quant":
            return f"quant {val(sel('format')) or 'all formats'}"
        if stage == "eval":
            return "eval " + ",".join(map(str, sel("eval.suites") or [])) + (
                f" limit={sel('eval.limit')}" if sel("eval.limit") is not None else "")
        if stage == "serve":
            return f"serve {val(sel('serve.backend'))}"
        if stage == "pipeline":
            return f"pipeline:{sel('experiment')}"
        if stage in ("merge", "models"):
            return f"{stage} {sel('model.name')}"
    except Exception:  # a partial config (tests): the stage's name still says something
        pass
    return stage


# --- the process that owns a run, and the reaper for runs whose process died (kill -9, OOM killer, reboot) ---


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): a reused pid differs."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else ""


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id").strip()


def pid_namespace() -> str:
    """This process's pid namespace ("pid:[4026531836]"): pids mean something only inside one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {"cardforge.pid": str(pid), "cardforge.host": socket.gethostname(), "cardforge.boot_id": boot_id(),
            "cardforge.pidns": pid_namespace(), "cardforge.proc_start": process_start(pid)}


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that opened a run still runs: None when it ran on another host or in another pid
    namespace (another container sharing the store: cannot tell, so it is left alone)."""
    if tags.get("cardforge.host") != socket.gethostname() or "cardforge.pid" not in tags:
        return None
    if tags.get("cardforge.pidns") and tags["cardforge.pidns"] != pid_namespace():
        return None
    if tags.get("cardforge.boot_id") and tags["cardforge.boot_id"] != boot_id():
        return False  # the machine rebooted since
    try:
        pid = int(tags["cardforge.pid"])
    except ValueError:
        return None
    start = process_start(pid)
    if not start:
        return False
    return not tags.get("cardforge.proc_start") or start == tags["cardforge.proc_start"]


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        stat = _read(f"/proc/{pid}/stat")
        try:
            pid = int(stat.rpartition(")")[2].split()[1])
        except (IndexError, ValueError):
            break
    return out


def leftover_processes(run_ids: set[str]) -> list[int]:
    """Pids of live processes started inside one of these runs (their environment names it in RUN_ENV)."""
    if not run_ids:
        return []
    mine, found = _ancestors(), []
    marks = {f"{RUN_ENV}={r}".encode() for r in run_ids}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:  # gone, or another user's
            continue
        if env & marks:
            found.append(int(entry.name))
    return found


def stop_processes(pids: list[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL what is still there after `grace_s`. Returns the pids signalled."""
    sent = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            sent.append(pid)
    deadline = time.monotonic() + grace_s
    while sent and time.monotonic() < deadline and any(process_start(p) for p in sent):
        time.sleep(0.1)
    for pid in sent:
        if process_start(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return sent


def stale_temp_files(root: str | os.PathLike) -> list[Path]:
    """The `.NAME.tmp` files and folders our atomic writers leave when killed mid-write (not descended into)."""
    out: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            if name.startswith(".") and name.endswith(".tmp"):
                out.append(Path(dirpath) / name)
        dirnames[:] = [d for d in dirnames if not (d.startswith(".") and d.endswith(".tmp"))]
    return out


def reap_dead_runs(exp_id: str, uri: str, outputs: str | None = None) -> list[str]:
    """Mark this host's RUNNING runs whose process died KILLED; stop the processes they left behind; remove the
    temp files under their outputs (`outputs` too) when no live run shares that folder. Returns the reaped ids."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    try:
        running = client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000)
    except Exception:  # a store that cannot search: reaping is a courtesy, never a failure
        return []
    dead = [r for r in running if owner_alive(r.data.tags) is False]
    live_outputs = {r.data.tags.get("cardforge.outputs") for r in running if owner_alive(r.data.tags) is not False}
    if not dead:
        return []
    ids = {r.info.run_id for r in dead}
    if pids := leftover_processes(ids):
        stop_processes(pids)
        import logging

        logging.getLogger("cardforge.tracking").warning(
            "stopped %d process(es) left by killed run(s) %s: %s", len(pids), ", ".join(sorted(i[:8] for i in ids)),
            ", ".join(map(str, pids)))
    for r in dead:
        name = r.info.run_name or r.data.tags.get("mlflow.runName", "")
        with contextlib.suppress(Exception):
            if not name.endswith("[killed]"):
                client.set_tag(r.info.run_id, "mlflow.runName", f"{name} [killed]")
            client.set_tag(r.info.run_id, "cardforge.killed", f"process {r.data.tags.get('cardforge.pid')} gone; "
                                                               f"found by pid {os.getpid()}")
            client.set_terminated(r.info.run_id, "KILLED")
    roots = {r.data.tags.get("cardforge.outputs") for r in dead} | ({outputs} if outputs else set())
    for root in sorted(x for x in roots if x and x not in live_outputs):
        for tmp in stale_temp_files(root):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    return sorted(ids)


def killed_predecessor(exp_id: str, uri: str, stage: str, cfg_hash: str) -> Any:
    """The latest KILLED run of this stage and config that no later run resumed yet, or None."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    flt = (f"attributes.status = 'KILLED' and tags.`cardforge.stage` = '{stage}' and "
           f"tags.`cardforge.config_hash` = '{cfg_hash}'")
    try:
        runs = client.search_runs([exp_id], flt, order_by=["attributes.start_time DESC"], max_results=20)
    except Exception:
        return None
    return next((r for r in runs if "cardforge.resumed_by" not in r.data.tags), None)


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


@contextlib.contextmanager
def global_uri(uri: str) -> Iterator[None]:
    """Inside: MLflow's process-wide tracking URI (what the fluent API and a bare `MlflowClient()` follow) is `uri`;
    the one before is put back after."""
    import mlflow

    prev = mlflow.get_tracking_uri()
    if prev == uri:
        yield
        return
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(prev)


def end_run(run_id: str, status: str, uri: str) -> None:
    """End run `run_id` with `status`, and any run left open inside it (the same exception ended those), in the
    store `uri` the run was opened in: the process's tracking URI may point elsewhere by now (a stage that called
    `mlflow.set_tracking_uri`), and the fluent `mlflow.end_run` would write there."""
    import mlflow

    with global_uri(uri):
        while (active := mlflow.active_run()) is not None:
            mine = active.info.run_id == run_id
            mlflow.end_run(status=status)
            if mine:
                return
    mlflow.MlflowClient(uri).set_terminated(run_id, status)  # not on the fluent stack any more (ended by id)


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
    exp_name = cfg.logger.experiment_name
    exp_id = get_or_create_experiment(exp_name, uri)
    from cardforge.core.artifacts import Outputs

    # the outputs root (tagged: the reaper removes a killed run's temp files under it); none in a bare config
    outputs = str(Outputs(cfg).root.resolve()) if OmegaConf.select(cfg, "paths.outputs") else None
    reap_dead_runs(exp_id, uri, outputs)
    active = mlflow.active_run()
    parent = active.info.run_id if active else (parent_run_id or os.environ.get(PARENT_ENV) or _sweep_parent_id())
    name = run_name or OmegaConf.select(cfg, "run_name") or default_run_name(cfg, stage)
    tags = {**run_tags(cfg, stage), **owner_tags(), **({"cardforge.outputs": outputs} if outputs else {})}
    prev = killed_predecessor(exp_id, uri, stage, tags["cardforge.config_hash"])
    if prev is not None:  # a rerun after a kill: linked, and named so the two are told apart
        tags["resumed_from"] = prev.info.run_id
        name = f"{name} [resumed]"
    kwargs: dict[str, Any] = {"experiment_id": exp_id, "run_name": name, "tags": tags}
    if active:
        kwargs["nested"] = True
    elif parent:
        kwargs["parent_run_id"] = parent
    with terminate_raises():
        run = mlflow.start_run(**kwargs)
        _last_stage_run[stage] = run.info.run_id
        if prev is not None:
            with contextlib.suppress(Exception):
                mlflow.MlflowClient(uri).set_tag(prev.info.run_id, "cardforge.resumed_by", run.info.run_id)
        outer_env = os.environ.get(RUN_ENV)
        os.environ[RUN_ENV] = run.info.run_id  # every child process inherits it (see reap_dead_runs)
        try:
            log_config(cfg, stage)
            yield run
        except BaseException as e:
            end_run(run.info.run_id, exit_status(e), uri)
            raise
        else:
            end_run(run.info.run_id, "FINISHED", uri)
        finally:
            if outer_env is None:
                os.environ.pop(RUN_ENV, None)
            else:
                os.environ[RUN_ENV] = outer_env


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
        exp_id = get_or_create_experiment(config.logger.experiment_name, uri)
        overrides = list(config.hydra.overrides.task)
        client = mlflow.MlflowClient(uri)
        stage = config.stage
        stage = getattr(stage, "value", stage)  # the Stage enum's name, not "Stage.train"
        run = client.create_run(
            exp_id,
            run_name=f"sweep:{stage}:{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "cardforge.stage": stage,
                "cardforge.sweep": "true",
                "cardforge.sweep.overrides": " ".join(overrides)[:5000],
                "cardforge.experiment": str(config.experiment),
                **git_info(),
                **owner_tags(),
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
