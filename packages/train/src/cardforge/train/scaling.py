"""Data-parallel scaling of the train stage: the same LoRA run on 1 and N devices, side by side.

    python -m cardforge.train.scaling --devices 1 2                  # FSDP2 on GPUs: Qwen3.6-27B arch, 8 layers
    python -m cardforge.train.scaling --arch tiny --layers 4 --accelerator cpu --devices 1 2 \\
        --seq 64 --steps 4                                          # the code path anywhere (FSDP2 over gloo)

For each device count the harness runs the real train stage (`python -m cardforge.train`, Lightning + PEFT,
`trainer=fsdp` (FSDP2) or `trainer=ddp`) in its own process on the same random-weight checkpoint of the chosen
architecture (written once, with the embedded tokenizer) and the same fixed-length synthetic samples, so every
rank sees the same number of tokens per step. It reads the stage's per-step `train/tokens_per_s` (rank 0; time
between micro-batches, so backward, all-reduce / all-gather and the optimizer step are inside) from the stage's
MLflow run, drops the first `--warmup` steps (loading, compilation), and reports per device count: the median
tokens/s of one rank, the global tokens/s (x devices), and the scaling efficiency global_N / (N x global_1).
Results go to stdout as a table and to --out as JSON (after every run: a later failure keeps what was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cardforge.core.artifacts import Outputs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_checkpoint(arch: str, layers: int | None, out: Path) -> Path:
    """A random-weight checkpoint of `arch` (bench.ARCHS) with the embedded model's tokenizer (same vocabulary)."""
    import torch

    from cardforge.core.models import prepare
    from cardforge.train import bench

    if (out / "config.json").is_file():
        return out
    config = bench.text_config(bench.ARCHS[arch], layers)
    model = bench.build_model(config, "cpu", torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok_dir = prepare("tiny-qwen35-mtp")
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, tmp / name)
    tmp.rename(out)
    return out


def write_samples(path: Path, n: int, seq: int, vocab: int, seed: int = 0) -> Path:
    """`n` pre-tokenized rows of exactly `seq` tokens (the first tenth a prompt: not trained)."""
    rng = random.Random(seed)
    prompt = max(1, seq // 10)
    rows = [{"input_ids": [rng.randrange(1000, vocab - 1000) for _ in range(seq)],
             "loss_mask": [0] * prompt + [1] * (seq - prompt)} for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage_command(model_dir: Path, outputs: Path, devices: int, a: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "cardforge.train", f"paths.outputs={outputs}", "model.embedded=false",
           f"model.path={model_dir}", f"model.name=scaling-{a.arch}", f"trainer={a.strategy}",
           f"trainer.devices={devices}", f"trainer.max_steps={a.steps}", f"trainer.grad_accum={a.grad_accum}",
           "trainer.batch_size=1", "trainer.ckpt_every_n_steps=100000", f"data.max_seq_len={a.seq}",
           "logger.experiment_name=cardforge-scaling"]
    if a.accelerator == "cpu":
        cmd += ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.gradient_checkpointing=false",
                "trainer.optimizer=adamw"]
    return cmd + list(a.overrides)


def steady_tokens_per_s(outputs: Path, warmup: int, tracking_uri: str) -> tuple[float, list[float]]:
    """Median per-step tokens/s of the stage run recorded in `outputs`, read from the store the stage logged to
    (named explicitly: `mlflow.MlflowClient()` would follow an earlier `mlflow.set_tracking_uri` in this process
    over $MLFLOW_TRACKING_URI, and find no such run there)."""
    import mlflow

    result = json.loads(Outputs(outputs).train.result.read_text())
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.get_run(result["run_id"])  # a clear error when the run is not in that store
    history = client.get_metric_history(result["run_id"], "train/tokens_per_s")
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    kept = values[warmup:] or values
    if not kept:
        raise RuntimeError(f"the stage logged no train/tokens_per_s in run {result['run_id']}")
    return statistics.median(kept), values


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| devices | strategy | per-rank tok/s (median) | global tok/s | efficiency | status |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        eff = f"{r['efficiency']:.0%}" if r.get("efficiency") is not None else "-"
        lines.append(f"| {r['devices']} | {r['strategy']} | {r.get('rank_tok_s', float('nan')):.0f} | "
                     f"{r.get('global_tok_s', float('nan')):.0f} | {eff} | {r['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cardforge.train import bench

    p = argparse.ArgumentParser(prog="python -m cardforge.train.scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(bench.ARCHS), default="qwen36_27b")
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the random checkpoint (0: all)")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="device counts; the first is the base")
    p.add_argument("--strategy", choices=["fsdp", "ddp"], default="fsdp")
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sample (all samples this long)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="first logged steps left out of the median")
    p.add_argument("--workdir", type=Path, default=Path("artifacts") / "scaling")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("overrides", nargs="*", help="extra train-stage overrides, e.g. trainer.compile_layers=false")
    a = p.parse_args(argv)

    a.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = build_checkpoint(a.arch, a.layers or None, (a.workdir / f"model-{a.arch}-{a.layers}").resolve())
    print(f"checkpoint {model_dir} ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    vocab = bench.ARCHS[a.arch]["vocab_size"]
    # the stage runs (children) and this process (reading their metrics) share one store
    uri = os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(a.workdir / 'mlflow.db').resolve()}")
    rows: list[dict[str, Any]] = []
    base = None
    for n in a.devices:
        outputs = (a.workdir / f"{a.strategy}-{n}").resolve()
        shutil.rmtree(outputs, ignore_errors=True)
        # every rank gets steps x grad_accum samples of the same length
        write_samples(Outputs(outputs).data.trajectories, a.steps * a.grad_accum * n, a.seq, vocab)
        cmd = stage_command(model_dir, outputs, n, a)
        row: dict[str, Any] = {"devices": n, "strategy": a.strategy, "command": " ".join(cmd), "status": "ok"}
        print(f"$ {row['command']}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
        if proc.returncode != 0:
            row["status"] = f"failed (exit {proc.returncode})"
        else:
            rank, per_step = steady_tokens_per_s(outputs, a.warmup, uri)
            row.update(rank_tok_s=rank, global_tok_s=rank * n, tokens_per_s_per_step=per_step)
            if base is None:
                base = row
            row["efficiency"] = row["global_tok_s"] / (n / base["devices"] * base["global_tok_s"])
        rows.append(row)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps({"argv": argv if argv else sys.argv[1:], "environment": bench.environment(),
                                         "arch": a.arch, "layers": a.layers, "seq": a.seq, "rows": rows,
                                         "table": table(rows)}, indent=2))
    print(table(rows))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
