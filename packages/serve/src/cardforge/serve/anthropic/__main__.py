"""Run as: python -m cardforge.serve.anthropic --backend http://127.0.0.1:8080 [--port 8082] [--api-key KEY]
(--backend: the engine whose native /v1/messages the guard fronts).

Then point an Anthropic client at it, e.g. `ANTHROPIC_BASE_URL=http://127.0.0.1:8082`.
"""

from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m cardforge.serve.anthropic",
        description="Anthropic Messages API guard in front of an engine's native /v1/messages (llama-server, "
                    "vLLM, SGLang): Anthropic's validation and error shapes, plus the measured gaps of the engine.")
    p.add_argument("--backend", required=True, help="the engine's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=8082, help="port (default 8082)")
    p.add_argument("--api-key", default=os.environ.get("CARDFORGE_BRIDGE_API_KEY"),
                   help="require this key as x-api-key or Bearer (default: $CARDFORGE_BRIDGE_API_KEY; unset: open)")
    p.add_argument("--backend-api-key", default=os.environ.get("CARDFORGE_BACKEND_API_KEY"),
                   help="Bearer key for the backend (default: $CARDFORGE_BACKEND_API_KEY)")
    p.add_argument("--model", default=None,
                   help="model name sent to the backend instead of the client's (vLLM/SGLang check it)")
    p.add_argument("--timeout", type=float, default=1800.0, help="total cap of a non-streaming request, seconds")
    p.add_argument("--idle-timeout", type=float, default=600.0,
                   help="longest silence of the engine inside one answer, seconds (streams may run longer)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from cardforge.serve.anthropic.router import create_app

    args = parse_args(argv)
    app = create_app(args.backend, api_key=args.api_key, backend_api_key=args.backend_api_key,
                     model=args.model, timeout_s=args.timeout, idle_timeout_s=args.idle_timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
