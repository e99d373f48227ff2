"""Train stage: LoRA distillation of `cfg.model` on the data stage's accepted trajectories.

Run as: python -m cardforge.train [hydra overrides]      (make train EXP=tiny ARGS="lora.r=16")

Reads  <outputs>/data/trajectories.jsonl (run `make data` first)
Writes <outputs>/train/adapter/ (standard PEFT directory), loss_curve.png, train_result.json;
       <outputs>/train/checkpoints/<hash>/last.ckpt while running (an interrupted run resumes from it when its
       `data_key` stamp matches the samples; removed when the run finishes). A Hydra multirun job writes under <outputs>/train/runs/<hash>/ instead, so
       sweep jobs never overwrite each other.
MLflow: the stage's nested run (loss, lr, tokens/s, trained-token fraction per step through Lightning's
       MLFlowLogger; the loss-curve PNG; the adapter under `adapter/`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.core.errors import UserError
from cardforge.core import tracking
from cardforge.core.artifacts import Outputs, TrainOutputs

log = logging.getLogger("cardforge.train")
TRAIN_SECTIONS = ("model", "data", "lora", "trainer")  # what decides the trained weights (and the ckpt dir)


class MissingInputError(UserError, FileNotFoundError):
    """The stage's input does not exist (the message names the command that makes it)."""


@dataclass
class TrainResult:
    adapter_dir: str
    run_id: str | None
    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step (mean over the ranks)
    grad_norms: list[float] = field(default_factory=list)  # LoRA gradients' global L2 norm per step (this process's fit)
    lora_targets: dict[str, int] = field(default_factory=dict)  # target -> modules matched
    optimizer: str = ""
    resumed_from_step: int = 0
    tokens_per_s: float = 0.0
    trained_token_fraction: float = 0.0
    wall_s: float = 0.0
    peak_cuda_mem_gib: float = 0.0  # torch.cuda.max_memory_allocated over the fit (0 off CUDA)
    data: dict = field(default_factory=dict)  # load_samples' LoadStats: samples, skipped per reason, truncations
    chat_template: dict = field(default_factory=dict)  # which template rendered the samples, and its sha256


def data_path(cfg: DictConfig) -> Path:
    """trainer.data_file, else the data stage's accepted set."""
    if f := cfg.trainer.data_file:
        return Path(str(f)).expanduser()
    return Outputs(cfg).data.trajectories


def disk_need(cfg: DictConfig, model_dir: Path | str) -> int:
    """Bytes the stage writes: a checkpoint (LoRA weights + optimizer state) and its temp copy, the adapter, the
    plot; bounded by a tenth of the base checkpoint (LoRA trains ~1% of the weights), at least 64 MiB."""
    from cardforge.core.io import dir_bytes

    return max(64 << 20, dir_bytes(model_dir) // 10)


def _multirun_overrides() -> str | None:
    """This sweep job's overrides ("lora.r=8,trainer.lr=1e-4"), or None outside a Hydra multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        # where/how overrides (paths, logger, hydra) say nothing about what the job trains
        keep = [o for o in hc.overrides.task if not o.lstrip("+~").startswith(("paths.", "logger.", "hydra"))]
        return ",".join(keep) or str(hc.job.num)
    except Exception:  # not under @hydra.main (tests, the pipeline)
        return None


def _launched_rank() -> int:
    """Global rank of this process when a launcher started it (Lightning's DDP children, SLURM, torchrun)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def train_dir(cfg: DictConfig) -> Path:
    return Outputs(cfg).train.run_dir(tracking.config_hash(cfg, TRAIN_SECTIONS) if _multirun_overrides() else None)


def model_path(cfg: DictConfig) -> Path:
    if cfg.model.embedded:
        from cardforge.core.models import prepare

        return prepare(cfg.model.name)
    from cardforge.core.io import check_model_path

    return Path(check_model_path(str(cfg.model.path)))


def _devices(d: Any) -> Any:
    if isinstance(d, str) and d.strip().isdigit():
        return int(d)
    return OmegaConf.to_container(d) if OmegaConf.is_config(d) else d


def build_strategy(tcfg: DictConfig, model) -> Any:
    """Lightning strategy. `fsdp`: FSDP2 (train/fsdp2.py: per-parameter sharding, the sharding itself happens in
    DistillModule.configure_model). `fsdp1`: Lightning's FSDP1, which wraps each decoder layer and keeps original
    params (LoRA mixes frozen and trainable tensors in one layer, which flat-param FSDP cannot shard)."""
    name = str(tcfg.strategy)
    if name == "fsdp":
        from cardforge.train.fsdp2 import FSDP2Strategy

        return FSDP2Strategy()
    if name != "fsdp1":
        return name
    from lightning.pytorch.strategies import FSDPStrategy

    layer_names = set(getattr(model, "_no_split_modules", None) or [])
    layers = {type(m) for m in model.modules() if type(m).__name__ in layer_names}
    return FSDPStrategy(auto_wrap_policy=layers, activation_checkpointing_policy=layers if tcfg.gradient_checkpointing
                        else None, use_orig_params=True, state_dict_type="full", sharding_strategy="FULL_SHARD")


def configure_compile(tc, max_seq_len: int, pad_multiple: int) -> None:
    """torch.compile settings for `trainer.compile_layers`: room for one compiled graph per layer kind, padded
    length and mask/no-mask (beyond dynamo's default of 8 it would silently fall back to eager), and the
    partitioner's activation memory budget."""
    import torch._dynamo
    import torch._functorch.config

    from cardforge.train.data import padded_length

    lengths = len({padded_length(n, pad_multiple) for n in range(1, max_seq_len + 1)})
    limit = max(8, 4 * lengths + 8)
    dynamo = torch._dynamo.config
    if hasattr(dynamo, "recompile_limit"):
        dynamo.recompile_limit = max(dynamo.recompile_limit, limit)
    else:  # torch < 2.6
        dynamo.cache_size_limit = max(dynamo.cache_size_limit, limit)
    dynamo.accumulated_recompile_limit = max(getattr(dynamo, "accumulated_recompile_limit", 0), 2 * limit)
    fc = torch._functorch.config
    if tc.activation_memory_budget is not None:  # composition checked that this torch has the knob
        fc.activation_memory_budget = float(tc.activation_memory_budget)
    elif hasattr(fc, "activation_memory_budget"):  # back to torch's default (an earlier run in this process)
        fc.activation_memory_budget = 1.0


def load_base(path: Path, precision: str, gradient_checkpointing: bool, fsdp: bool):
    import torch
    from transformers import AutoModelForCausalLM

    # FSDP flattens each layer's tensors into one of a single dtype ("Must flatten tensors with uniform dtype" with a
    # bf16 base and fp32 LoRA, seen on an H200): under FSDP the base stays fp32 and FSDP's bf16-mixed precision
    # (param_dtype bf16) computes in bf16 from the fp32 shards
    dtype = torch.bfloat16 if "bf16" in precision and not fsdp else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.use_cache = False
    model.train()  # from_pretrained returns eval mode, and Lightning keeps each submodule's mode (LoRA dropout)
    if gradient_checkpointing and not fsdp:  # FSDP checkpoints activations itself (activation_checkpointing_policy)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def save_adapter(peft_model, state: dict, out: Path, adapter_name: str = "default") -> Path:
    """Write a standard PEFT adapter directory (adapter_config.json + adapter_model.safetensors) from the
    gathered training state dict.

    Not `peft_model.save_pretrained(state_dict=...)`: PEFT finds the LoRA tensors by walking the model's
    modules, and once FSDP (and activation checkpointing) has wrapped them their names no longer match, so
    it saved an empty adapter (seen on an H200, trainer=fsdp). The state dict Lightning gathers has clean
    names; the adapter's names are those minus the adapter name, exactly as PEFT writes them."""
    from safetensors.torch import save_file

    tag = f".{adapter_name}."
    lora = {k.replace(tag, "."): v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()
            if "lora_" in k and tag in k}
    if not lora:
        raise RuntimeError(f"no LoRA tensors in the gathered state dict ({len(state)} tensors, e.g. "
                           f"{sorted(state)[:2]}): nothing to save as the adapter")
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    import copy

    config = copy.deepcopy(peft_model.peft_config[adapter_name])
    config.inference_mode = True  # as PEFT writes it: the saved adapter loads for inference by default
    auto = None
    if config.task_type is None:
        base = peft_model.get_base_model()
        auto = {"base_model_class": type(base).__name__, "parent_library": type(base).__module__}
    config.save_pretrained(str(out), auto_mapping_dict=auto)
    return out


def load_training_data(cfg: DictConfig, path: Path, samples_path: Path):
    """(tokenizer, samples rendered with the model's chat template, LoadStats: kept / skipped / truncated)."""
    from transformers import AutoTokenizer

    from cardforge.train.data import LoadStats, load_samples

    tokenizer = AutoTokenizer.from_pretrained(path)
    load_stats = LoadStats()
    samples = load_samples(samples_path, tokenizer, cfg.data.max_seq_len,
                           bool(cfg.trainer.skip_bad_lines), train_format=str(cfg.data.train_format),
                           mask_tool_results=bool(cfg.data.mask_tool_results),
                           stats=load_stats)
    log.info("training data: %s", load_stats.summary())
    return tokenizer, samples, load_stats


@dataclass
class Student:
    """The base model with LoRA applied, set up for the configured kernels, checkpointing and sharding."""
    model: Any  # base + LoRA
    base: Any
    matched: dict  # LoRA target -> the modules it matched
    pad_multiple: int  # batches padded to a multiple of this (0: geometric length buckets)
    fsdp2: bool  # FSDP2: built on the meta device, each rank loads its shards in configure_model


def build_student(cfg: DictConfig, path: Path) -> Student:
    import torch

    from cardforge.train.lora import apply_lora

    tc = cfg.trainer
    fsdp = str(tc.strategy) == "fsdp1"  # FSDP1: fp32 base, its own activation checkpointing
    fsdp2 = str(tc.strategy) == "fsdp"  # FSDP2: built on the meta device, each rank loads its shards later
    if fsdp2:
        from cardforge.train import distributed

        base = distributed.meta_model(path, tc.gradient_checkpointing)
    else:
        base = load_base(path, str(tc.precision), tc.gradient_checkpointing, fsdp)
    model, matched = apply_lora(base, cfg.lora)
    # compiled layers compile once per padded length: geometric buckets (padded_length(n, 0)) unless set
    pad_multiple = tc.pad_to_multiple_of or (0 if tc.compile_layers else 1)
    if tc.kernels == "cardforge":
        from cardforge.train import fast

        pack = tc.pack_length
        offload = bool(tc.offload_checkpoints)
        if pack and pack < cfg.data.max_seq_len:
            raise UserError(f"trainer.pack_length={pack} is shorter than data.max_seq_len={cfg.data.max_seq_len}: "
                            "a packed row must hold the longest sample; raise trainer.pack_length")
        if tc.compile_layers:  # packed rows: one length
            configure_compile(tc, pack or cfg.data.max_seq_len, pack or pad_multiple)
        n_gdn = fast.enable(model, compile=tc.compile_gdn, layers=tc.compile_layers and not offload,
                            scan_op=bool(tc.compile_layers),  # compiled: the scan as one op, any length
                            core_groups=int(tc.gdn_core_groups))
        log.info("trainer.kernels=cardforge: GDN kernel on %d layers, fused LoRA forward, chunked cross-entropy%s",
                 n_gdn, "; decoder layers compiled, batches padded to " + (
                     f"a multiple of {pad_multiple}" if pad_multiple else "geometric length buckets")
                 if tc.compile_layers else "")
    if tc.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    keep = len(base.model.layers) if tc.activation_memory_budget is not None else tc.no_recompute_layers
    if tc.gradient_checkpointing and keep and not fsdp:
        layers = base.model.layers
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i < len(layers) - keep
    if tc.kernels == "cardforge" and tc.offload_checkpoints:
        from cardforge.train.fast import offload as offload_mod

        offload_mod.enable(model, compile=tc.compile_layers)
    return Student(model, base, matched, pad_multiple, fsdp2)


def build_trainer(cfg: DictConfig, strategy: Any, out_dir: Path, run_id: str | None):
    """(Lightning Trainer, its LossHistory, its AtomicLastCheckpoint)."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from cardforge.train.callbacks import AtomicLastCheckpoint, LossHistory, progress_bar

    tc = cfg.trainer
    history = LossHistory()
    ckpt = AtomicLastCheckpoint(out_dir / "checkpoints" / tracking.config_hash(cfg, TRAIN_SECTIONS),
                                tc.ckpt_every_n_steps)
    trainer = pl.Trainer(
        accelerator=tc.accelerator, devices=_devices(tc.devices), num_nodes=tc.num_nodes, strategy=strategy,
        precision=tc.precision, max_epochs=tc.max_epochs if tc.max_steps < 1 else -1, max_steps=tc.max_steps,
        accumulate_grad_batches=tc.grad_accum, log_every_n_steps=tc.log_every_n_steps,
        logger=instantiate(cfg.logger, run_id=run_id, tracking_uri=tracking.tracking_uri(cfg)) if run_id else False,
        # LossHistory first: the checkpoint taken in the same on_train_batch_end must include this step's loss
        callbacks=[progress_bar(tracking.default_run_name(cfg, "train")), history, ckpt],
        enable_checkpointing=False,  # our AtomicLastCheckpoint replaces ModelCheckpoint
        use_distributed_sampler=False,  # ResumableSampler shards by rank itself
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(out_dir), enable_model_summary=False,
    )
    return trainer, history, ckpt


def build_module(cfg: DictConfig, student: Student, path: Path, trainer, n_items: int):
    """The LightningModule; under FSDP2 it shards and loads the weights once the process group is up.
    `n_items`: the training set's items as the loader draws them (`len(datamodule.train_set)`): packed rows
    with trainer.pack_length, not samples, or the LR schedule's length is off by the samples per row."""
    from cardforge.train.module import DistillModule

    tc = cfg.trainer
    per_epoch = -(-n_items // (tc.batch_size * trainer.world_size))
    total_steps = tc.max_steps if tc.max_steps > 0 else -(-per_epoch // tc.grad_accum) * tc.max_epochs
    shard = None
    if student.fsdp2:
        from cardforge.train import fsdp2 as fsdp2_mod

        def shard(m):  # DistillModule.configure_model, on every rank once the process group is up
            return fsdp2_mod.shard_and_load(student.model, path, m.device_mesh["data_parallel"],
                                            m.trainer.strategy.root_device, tc.seed, tc.kernels == "cardforge")
    return DistillModule(student.model, tc, total_steps, shard=shard)


def samples_key(samples) -> str:
    """16 hex digits over the training samples (token ids and loss masks, in order): what a checkpoint was
    trained on, beside the config (the checkpoint folder's name)."""
    import hashlib
    from array import array

    h = hashlib.sha256()
    for s in samples:
        h.update(array("q", s.input_ids).tobytes() + b"|" + array("b", s.loss_mask).tobytes() + b"\n")
    return h.hexdigest()[:16]


def resume_point(ckpt, data_key: str | None = None) -> tuple[Path | None, int]:
    """(the last checkpoint of an interrupted run of this config, its step), or (None, 0). With `data_key`
    (samples_key of this run's samples), a checkpoint whose stamp names other samples, or none, is not resumed:
    the same config over a data file that changed since (the data stage re-run, more samples accepted) trains
    afresh instead of continuing another dataset's run at a sampler position that no longer means anything."""
    resume = ckpt.last_path if ckpt.last_path.exists() else None
    if not resume:
        return None, 0
    if data_key is not None:
        stamp = ckpt.data_key_path.read_text().strip() if ckpt.data_key_path.is_file() else None
        if stamp != data_key:
            log.warning("not resuming from %s: it was trained on other samples (data key %s, now %s); training "
                        "afresh", resume, stamp or "unknown", data_key)
            return None, 0
    from cardforge.train.fsdp2 import checkpoint_step

    resumed_from = checkpoint_step(resume)
    log.warning("resuming from %s (step %d)", resume, resumed_from)
    return resume, resumed_from


def fit(trainer, module, datamodule, resume: Path | None) -> bool:
    """trainer.fit; whether it ran on CUDA (its peak memory is measured over the fit)."""
    on_cuda = trainer.strategy.root_device.type == "cuda"
    if on_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
    with warnings.catch_warnings():
        # TrainDataModule restores the sampler position itself, so Lightning's generic warning does not apply
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    return on_cuda


def gather_lora(trainer, module, fsdp2: bool) -> dict:
    """The LoRA weights, whole: every rank takes part in gathering them (FSDP); rank 0 writes them."""
    if fsdp2:
        from cardforge.train.fsdp2 import full_lora_state

        gathered = full_lora_state(module)
    else:
        gathered = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix("model."): v for k, v in gathered.items()}


def save_outputs(cfg: DictConfig, result: TrainResult, student: Student, state: dict, history, ckpt,
                 out_dir: Path, t0: float) -> None:
    """Rank 0: the adapter, the loss curve and train_result.json; the finished run's checkpoints removed."""
    from cardforge.core.io import atomic_dir, atomic_write_json
    from cardforge.train.callbacks import plot_loss

    adapter_dir = Path(result.adapter_dir)
    with atomic_dir(adapter_dir) as tmp:
        save_adapter(student.model, state, tmp)
    log.info("rank 0 wrote the adapter (%d tensors) to %s", len(state), adapter_dir)
    plot_loss(history.history, out_dir / "loss_curve.png", f"{cfg.model.name} LoRA r={cfg.lora.r}")
    shutil.rmtree(ckpt.dirpath, ignore_errors=True)  # finished: a rerun trains afresh
    with contextlib.suppress(OSError):
        ckpt.dirpath.parent.rmdir()  # only when no other config's run is in flight
    result.wall_s = time.perf_counter() - t0
    atomic_write_json(TrainOutputs(out_dir).result, {**asdict(result), "lora_modules": student.matched})


def train(cfg: DictConfig, samples_path: Path, out_dir: Path, run_id: str | None = None) -> TrainResult:
    """Fit, save the adapter, plot the loss. `run_id`: the MLflow run Lightning's logger writes into."""
    import lightning.pytorch as pl

    from cardforge.core.chat.template import template_identity
    from cardforge.train.data import TrainDataModule

    t0 = time.perf_counter()
    tc = cfg.trainer
    pl.seed_everything(tc.seed, workers=True, verbose=False)
    path = model_path(cfg)
    tokenizer, samples, load_stats = load_training_data(cfg, path, samples_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    student = build_student(cfg, path)
    strategy = build_strategy(tc, student.base)
    datamodule = TrainDataModule(samples, pad_id, tc.batch_size, tc.seed, pad_multiple=student.pad_multiple,
                                 pack_length=tc.pack_length or 0)
    trainer, history, ckpt = build_trainer(cfg, strategy, out_dir, run_id)
    module = build_module(cfg, student, path, trainer, len(datamodule.train_set))  # packed rows, if packing
    ckpt.data_key = samples_key(samples)  # stamped beside every checkpoint; a resume needs the same samples
    resume, resumed_from = resume_point(ckpt, ckpt.data_key)
    targets = {t: len(v) for t, v in student.matched.items()}
    log.info("LoRA targets (%s): %s", cfg.lora.target_modules, targets)
    on_cuda = fit(trainer, module, datamodule, resume)
    state = gather_lora(trainer, module, student.fsdp2)
    result = TrainResult(
        adapter_dir=str(TrainOutputs(out_dir).adapter), run_id=run_id, steps=trainer.global_step,
        losses=[loss for _, loss in history.history], grad_norms=list(module.grad_norms), lora_targets=targets,
        optimizer=module.optimizer_name, resumed_from_step=resumed_from,
        tokens_per_s=module.tokens_total / max(module.train_seconds, 1e-9),
        trained_token_fraction=module.target_total / max(module.tokens_total, 1),
        data=asdict(load_stats), chat_template=template_identity(getattr(tokenizer, "chat_template", None)),
    )
    if on_cuda:
        import torch

        result.peak_cuda_mem_gib = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**30
    if trainer.is_global_zero:
        save_outputs(cfg, result, student, state, history, ckpt, out_dir, t0)
    return result


def run(cfg: DictConfig) -> TrainResult:
    import mlflow

    src = data_path(cfg)
    if not src.is_file():
        if cfg.trainer.data_file:
            raise MissingInputError(f"trainer.data_file={src}: no such file; point it at a JSONL of trajectories or "
                                    "pre-tokenized rows")
        raise MissingInputError(f"{src} does not exist: run the data stage first "
                                f"(make data EXP={cfg.experiment}, or python -m cardforge.data), or set "
                                "trainer.data_file=FILE.jsonl")
    out_dir = train_dir(cfg)
    if _launched_rank() == 0:  # before the model loads: a read-only or full disk is one line, not a lost run
        from cardforge.core.io import preflight_output

        preflight_output(out_dir, disk_need(cfg, model_path(cfg)), stage="train")
    if _launched_rank() != 0:  # a DDP/FSDP worker Lightning (or SLURM) started: rank 0 owns the MLflow run
        return train(cfg, src, out_dir, run_id=None)
    sweep_job = _multirun_overrides()  # names the sweep's runs by what differs, for side-by-side comparison
    with tracking.stage_run(cfg, "train", run_name=f"train {sweep_job}" if sweep_job else None) as run:
        result = train(cfg, src, out_dir, run_id=run.info.run_id)
        mlflow.set_tags({"train.optimizer": result.optimizer, "train.resumed_from_step": str(result.resumed_from_step),
                         "train.lora_targets": ",".join(f"{t}:{n}" for t, n in result.lora_targets.items())})
        mlflow.log_metrics({"train/wall_s": result.wall_s, "train/tokens_per_s_mean": result.tokens_per_s,
                            "train/final_loss": result.losses[-1] if result.losses else float("nan")})
        if result.peak_cuda_mem_gib:
            mlflow.log_metric("train/peak_cuda_mem_gib", result.peak_cuda_mem_gib)
        if result.data:  # samples kept, skipped per reason, truncations (load_samples)
            from cardforge.train.data import LoadStats

            mlflow.log_metrics(LoadStats(**result.data).metrics())
        mlflow.set_tags({f"train.{k}": v for k, v in result.chat_template.items()})
        mlflow.log_artifact(str(out_dir / "loss_curve.png"))
        mlflow.log_artifact(str(TrainOutputs(out_dir).result))
        mlflow.log_artifacts(result.adapter_dir, "adapter")
    return result
