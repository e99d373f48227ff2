"""FSDP2 for LoRA on a base that does not fit one rank: per-parameter sharding, every rank loads only its shards.

    model = build_sharded(model_dir, lora_cfg, mesh)   # inside an initialized process group (nccl or gloo)

1. The model is built on the meta device (no memory), LoRA is applied there (PEFT), and `fully_shard` wraps each
   decoder layer, the input embeddings, the lm_head and then the root: FSDP2 shards every parameter on dim 0
   (a DTensor per parameter, so a layer may mix the frozen bf16 base and the fp32 LoRA tensors: no flat
   parameter, no single dtype, hence no fp32 copy of the base as FSDP1 needed).
2. `to_empty` allocates only this rank's shards; each is filled from the safetensors files by reading just its
   rows (`safe_open(...).get_slice(name)[start:end]`, memory-mapped: the other ranks' rows are never read).
   No rank ever holds the full base: peak per rank ~ base / world + one tensor's slice + the runtime.
3. The mixed-precision policy is explicit (`MIXED_PRECISION`): parameters are all-gathered and computed in bf16,
   gradients reduced in fp32 into the fp32 LoRA shards; the frozen base gets no gradients.

Memory formulas: cardforge.pipeline.fsdp_memory (what `make plan` prints per GPU); the CPU test
tests/integration/test_fsdp2_memory.py measures each rank's peak RSS against them (2 gloo ranks, a 3.9 GB
random checkpoint).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def mixed_precision():
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=True)


def checkpoint_name(param_name: str) -> str:
    """The safetensors name of a (PEFT-wrapped) model parameter: no `base_model.model.`, no `.base_layer`."""
    return param_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def weight_map(model_dir: Path) -> dict[str, str]:
    """{tensor name: file} of a checkpoint (sharded with model.safetensors.index.json, or one file)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return {k: "model.safetensors" for k in f.keys()}


def rows(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of dim 0 that `rank` holds under FSDP2's Shard(0) (torch.chunk: ceil(n / world) per rank)."""
    per = -(-n // world)
    start = min(rank * per, n)
    return start, min(start + per, n)


def decoder_layers(model) -> list:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model, mesh=None, reshard_after_forward: bool = True, root=None):
    """fully_shard each decoder layer, the input embeddings and the lm_head (their own units: with the root they
    would stay gathered for the whole step), then the root (`root`: a module that calls `model`, e.g. the train
    stage's loss module, whose forward is what runs each step; default `model`)."""
    from torch.distributed.fsdp import fully_shard

    mp = mixed_precision()
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    done = {id(p) for layer in layers for p in layer.parameters()}
    for name in ("embed_tokens", "lm_head"):
        for n, m in model.named_modules():
            if n.endswith(name) and isinstance(m, (torch.nn.Embedding, torch.nn.Linear)):
                if any(id(p) in done for p in m.parameters()):
                    continue  # tied to a unit already (lm_head = embed_tokens): it stays in that unit
                fully_shard(m, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
                done.update(id(p) for p in m.parameters())
    fully_shard(root if root is not None else model, mesh=mesh, mp_policy=mp,
                reshard_after_forward=reshard_after_forward)
    return model


def load_shards(model, model_dir: Path) -> dict[str, int]:
    """Fill this rank's shard of every base parameter from the safetensors files (only its rows are read).
    Returns {"tensors": n, "bytes": bytes read}. LoRA parameters (not in the checkpoint) are left to the caller."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor

    wmap = weight_map(model_dir)
    by_file: dict[str, list[tuple[str, Any]]] = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        key = checkpoint_name(name)
        if key not in wmap and key.replace("model.", "model.language_model.", 1) in wmap:
            key = key.replace("model.", "model.language_model.", 1)  # a VL checkpoint's text weights
        if key not in wmap:
            raise KeyError(f"{key} (parameter {name}) is not in {model_dir}'s safetensors files")
        by_file.setdefault(wmap[key], []).append((key, p))
    n = read = 0
    for file, params in by_file.items():
        for key, p in params:
            # opened per tensor: the file is memory-mapped, and the pages read stay resident (and counted in this
            # process's RSS) until it is closed; per file, a rank's RSS would carry a whole shard file's worth
            with safe_open(str(model_dir / file), framework="pt") as f:
                local = p.to_local() if isinstance(p, DTensor) else p.data
                sl = f.get_slice(key)
                full = sl.get_shape()
                if isinstance(p, DTensor):
                    mesh = p.device_mesh
                    start, end = rows(full[0], mesh.size(), mesh.get_local_rank())
                else:
                    start, end = 0, full[0]
                if local.shape[0] != end - start:
                    raise RuntimeError(f"{key}: local shard has {local.shape[0]} rows, expected {end - start}")
                if end > start:
                    with torch.no_grad():
                        local.copy_(sl[start:end])
                    read += local.numel() * local.element_size()
                n += 1
    return {"tensors": n, "bytes": read}


def _reinit_buffers(model, config) -> None:
    """Non-persistent buffers (rotary inv_freq) are not in the checkpoint: recompute them after to_empty."""
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "inv_freq", None), torch.Tensor):
            fresh = type(mod)(config=getattr(mod, "config", config))
            for b, t in fresh.named_buffers(recurse=False):
                getattr(mod, b).copy_(t)


def _init_lora(model, seed: int) -> None:
    """LoRA as PEFT initializes it (A: kaiming-uniform, B: zeros), on the full tensor from one seed, each rank
    keeping its rows: the same adapter on every world size."""
    import math

    from torch.distributed.tensor import DTensor

    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "lora_" not in name:
            continue
        full = torch.zeros(p.shape, dtype=p.dtype)
        if "lora_A" in name:
            bound = 1 / math.sqrt(p.shape[1])  # kaiming_uniform_(a=sqrt(5)) on a (r, in) weight
            full.uniform_(-bound, bound, generator=gen)
        local = p.to_local() if isinstance(p, DTensor) else p.data
        if isinstance(p, DTensor):
            start, end = rows(p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank())
            full = full[start:end]
        with torch.no_grad():
            local.copy_(full)


def meta_model(model_dir: str | Path, gradient_checkpointing: bool = False):
    """The model of `model_dir` on the meta device (no memory): bf16 parameters, no cache, train mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(Path(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def materialize(model, model_dir: str | Path, mesh=None, device: str | torch.device = "cpu", seed: int = 0,
                marks: dict | None = None, root=None):
    """Shard the meta `model` (`shard`), allocate this rank's shards (`to_empty`), fill them from the safetensors
    files (only this rank's rows are read), recompute the non-persistent buffers and initialize LoRA from `seed`
    (the same adapter on every world size). `marks` (optional) gets this process's peak RSS before any weight is
    allocated (`built`) and the load's {"tensors", "bytes"} read (`load`)."""
    model_dir = Path(model_dir)
    shard(model, mesh, root=root)
    if marks is not None:
        marks["built"] = _peak_rss_bytes()
    model.to_empty(device=device)
    stats = load_shards(model, model_dir)
    if marks is not None:
        marks["load"] = stats
    config = model.config if hasattr(model, "config") else None
    _reinit_buffers(model, getattr(config, "text_config", config))
    _init_lora(model, seed)
    log.info("FSDP2: %d tensors, %.2f GB of this rank's shards read from %s", stats["tensors"], stats["bytes"] / 1e9,
             model_dir)
    model.train()
    return model


def build_sharded(model_dir: str | Path, lora_cfg: Any = None, mesh=None, device: str = "cpu", seed: int = 0,
                  marks: dict | None = None, gradient_checkpointing: bool = False):
    """The model of `model_dir` with LoRA (`lora_cfg`: a peft.LoraConfig or None), FSDP2-sharded, this rank's
    shards loaded. Needs an initialized process group (or a `mesh`). `gradient_checkpointing`: per decoder layer
    (non-reentrant), as the train stage runs by default."""
    model = meta_model(model_dir, gradient_checkpointing)
    if lora_cfg is not None:
        import peft

        model = peft.get_peft_model(model, lora_cfg)  # adapters in fp32 (PEFT's autocast_adapter_dtype)
    return materialize(model, model_dir, mesh, device, seed, marks)


def dtypes(model) -> dict[str, int]:
    """Elements per (trainable?, dtype) of this rank's local shards: what the no-fp32-base check reads."""
    from torch.distributed.tensor import DTensor

    out: dict[str, int] = {}
    for _, p in model.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        key = f"{'trainable' if p.requires_grad else 'frozen'}:{str(p.dtype).removeprefix('torch.')}"
        out[key] = out.get(key, 0) + local.numel()
    return out


# the CPU check's architecture (Qwen3.5 text, GDN + attention layers): 1.97B params, a 3.9 GB bf16 checkpoint (36
# layers of 102 MB + 262 MB of embeddings and lm_head; 16 layers, 1.9 GB, until issue 21's "several GB")
CHECK_ARCH = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=36,
                  full_attention_interval=4, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                  linear_num_key_heads=8, linear_num_value_heads=16, linear_key_head_dim=128,
                  linear_value_head_dim=128, linear_conv_kernel_dim=4, partial_rotary_factor=0.25,
                  mrope_section=[6, 5, 5], rope_theta=10_000_000.0)


def random_checkpoint(out: Path, arch: dict, shard_bytes: int = 512 << 20, seed: int = 0) -> Path:
    """A random-weight bf16 checkpoint of the Qwen3.5 text architecture `arch` (bench.ARCHS keys), written shard
    by shard (the writer holds one shard at a time) with model.safetensors.index.json and config.json."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from cardforge.train import bench

    if (out / "model.safetensors.index.json").is_file():
        return out
    config = bench.text_config(arch)
    with torch.device("meta"):
        shapes = {n: t.shape for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    wmap: dict[str, str] = {}
    part: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal part, size
        if part:
            name = f"model-{len(set(wmap.values())) + 1:05d}.safetensors"
            save_file(part, str(tmp / name), metadata={"format": "pt"})
            wmap.update({k: name for k in part})
            part, size = {}, 0

    for name, shape in shapes.items():
        t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if name.endswith("linear_attn.norm.weight"):
            t.fill_(1)  # the GDN gated norm multiplies by its weight (zeros would cut the GDN path off)
        elif name.endswith("norm.weight"):
            t.fill_(0)  # Qwen3.5's other RMSNorms scale by 1 + weight
        part[name] = t
        size += t.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": wmap}, indent=1))
    config.save_pretrained(tmp)
    tmp.rename(out)
    return out


def bounded_malloc(threshold: int = 1 << 20) -> bool:
    """Return freed large blocks to the OS at once (glibc `mallopt(M_MMAP_THRESHOLD)`). glibc raises its mmap
    threshold dynamically (up to 32 MiB) and keeps smaller freed chunks in the heap, so the gathered bf16 weights
    FSDP2 frees after each layer's forward (tens of MB per tensor) stayed resident: +1.6 GiB per rank over a
    16-layer forward on CPU, vs +0.7 GiB with the threshold fixed at 1 MiB (measured, 2 gloo ranks). False where
    this is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(-3, int(threshold)) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    """One rank of the FSDP2 check (run under torchrun): build + load this rank's shards, one LoRA training step,
    write {rank: peak RSS after import / load / step, bytes read, dtypes, loss} to --out/rank<r>.json."""
    import argparse
    import os

    import torch.distributed as dist

    p = argparse.ArgumentParser(prog="python -m cardforge.train.distributed")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing per decoder layer (the train stage's default, what "
                        "cardforge.pipeline.fsdp_memory assumes): a layer's activations live only while it is "
                        "recomputed, so the step's RSS does not grow with depth")
    p.add_argument("--grads", type=Path, default=None,
                   help="instead of training: one forward/backward on a fixed global batch of 2 samples (split over "
                        "the ranks), rank 0 writes the loss and the full LoRA gradients here (safetensors)")
    a = p.parse_args(argv)
    malloc = bounded_malloc()
    rss_import = _peak_rss_bytes()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
    import peft

    lora = peft.LoraConfig(r=a.r, lora_alpha=2 * a.r, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj",
                                                                       "in_proj_qkv", "out_proj"], lora_dropout=0.0)
    marks: dict = {}
    model = build_sharded(a.model, lora, device=device, marks=marks, gradient_checkpointing=a.checkpointing)
    rss_load = _peak_rss_bytes()
    if a.grads is not None:
        return _grads(model, a, rank, world, device)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(1 + rank)
    vocab = model.config.vocab_size if hasattr(model, "config") else 1000
    losses = []
    for _ in range(a.steps):
        ids = torch.randint(0, vocab, (1, a.seq), generator=gen).to(device)
        loss = model(input_ids=ids, labels=ids).loss
        rss_forward = _peak_rss_bytes()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    rss_step = _peak_rss_bytes()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "bounded_malloc": malloc, "checkpointing": a.checkpointing, "rss_import": rss_import, "rss_built": marks["built"], "rss_load": rss_load,
        "rss_forward": rss_forward, "rss_step": rss_step, "read_bytes": marks["load"]["bytes"], "tensors": marks["load"]["tensors"],
        "dtypes": dtypes(model), "losses": losses}, indent=1))
    dist.destroy_process_group()
    return 0


def _grads(model, a, rank: int, world: int, device: str) -> int:
    """The global batch (2 fixed samples) split over the ranks; FSDP2 averages the gradients over the ranks, so the
    LoRA gradients equal one device's on the whole batch (equal-length samples: the mean loss is the same)."""
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    gen = torch.Generator().manual_seed(123)
    batch = torch.randint(0, model.config.vocab_size, (2, a.seq), generator=gen)
    per = 2 // world
    ids = batch[rank * per:(rank + 1) * per].to(device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).float().cpu().contiguous()
             for n, p in model.named_parameters() if p.requires_grad}
    if rank == 0:
        a.grads.parent.mkdir(parents=True, exist_ok=True)
        save_file(grads, str(a.grads), metadata={"loss": str(float(total) / world)})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
