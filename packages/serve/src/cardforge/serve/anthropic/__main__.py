"""Run as: python -m cardforge.serve.anthropic --backend http://127.0.0.1:8080 [--port 8082] [--api-key KEY]

Then point an Anthropic client at it, e.g. `ANTHROPIC_BASE_URL=http://127.0.0.1:8082`.
"""

from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m cardforge.serve.anthropic",
        description="Anthropic Messages API (/v1/messages, streaming, tools, thinking) in front of an "
                    "OpenAI chat-completions backend (llama-server, vLLM, SGLang).")
    p.add_argument("--backend", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=8082, help="port (default 8082)")
    p.add_argument("--api-key", default=os.environ.get("CARDFORGE_BRIDGE_API_KEY"),
                   help="require this key as x-api-key or Bearer (default: $CARDFORGE_BRIDGE_API_KEY; unset: open)")
    p.add_argument("--backend-api-key", default=os.environ.get("CARDFORGE_BACKEND_API_KEY"),
                   help="Bearer key for the backend (default: $CARDFORGE_BACKEND_API_KEY)")
    p.add_argument("--model", default=None,
                   help="model name sent to the backend instead of the client's (vLLM/SGLang check it)")
    p.add_argument("--timeout", type=float, default=1800.0, help="backend request timeout, seconds")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from cardforge.serve.anthropic.app import create_app

    args = parse_args(argv)
    app = create_app(args.backend, api_key=args.api_key, backend_api_key=args.backend_api_key,
                     model=args.model, timeout_s=args.timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
