"""Anthropic Messages API for Claude Code, from the engine: llama-server (pinned), vLLM and SGLang serve
`/v1/messages` and `/v1/messages/count_tokens` themselves. This package is the thin guard we ship in front
of that native endpoint, for the gaps we measured in it (docs/serving.md): Anthropic's request validation
and error shapes, `thinking: disabled`, tool_choice none/tool, is_error, stop_sequence, assistant prefill,
and a stream that breaks before message_stop reported as an error.

Run as: python -m cardforge.serve.anthropic --backend http://127.0.0.1:8080 [--port 8082] [--api-key KEY]
Layout (vLLM's entrypoints split): router.py (thin routes: auth, parse, hand over; `create_app`),
service.py (`MessagesService`: the engine's HTTP client, forwarding, streaming), protocol.py (what a request
must be, the error answer), translate.py (the gap rewrites, pure), stream.py (the SSE relay, pure),
launch.py (a managed subprocess), __main__.py (CLI).
"""
