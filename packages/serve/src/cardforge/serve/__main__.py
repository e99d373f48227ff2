"""Run as: python -m cardforge.serve [hydra overrides]   (make serve ARGS="...")

    python -m cardforge.serve                                   # llama-server + MTP on the tiny model
    python -m cardforge.serve backend=vllm model=Qwen/Qwen3.6-27B   # prints (or runs) the vLLM command
    python -m cardforge.serve model=/path/to/model-Q4_K_M.gguf serve.mtp.n_max=2

Shorthands (rewritten before Hydra sees them): `backend=NAME` selects the serve group (`serve=NAME`, with
that engine's parsers and port); `model=VALUE` stays the model group when VALUE names one in conf/model/,
otherwise it is what to serve (`serve.model_path=VALUE`: a GGUF, an HF dir or an HF id).
"""

import sys

from cardforge.core.cli import stage_main


def rewrite_shorthands(argv: list[str]) -> list[str]:
    from cardforge.core.config.compose import group_options

    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key == "backend":
            arg = f"serve={value}"
        elif eq and key == "model" and value not in group_options("model") and "," not in value:
            arg = f"serve.model_path={value}"
        out.append(arg)
    return out


def main() -> None:
    from cardforge.serve.stage import run

    sys.argv[1:] = rewrite_shorthands(sys.argv[1:])
    stage_main("serve", run)


if __name__ == "__main__":
    main()
