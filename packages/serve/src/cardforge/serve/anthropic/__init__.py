"""Anthropic Messages API in front of an OpenAI chat-completions backend (llama-server, vLLM, SGLang).

Run as: python -m cardforge.serve.anthropic --backend http://127.0.0.1:8080 [--port 8082] [--api-key KEY]
Layout: protocol.py (request models), translate.py (request/response mapping, pure), stream.py (SSE event
state machine, pure), app.py (routes, auth, errors), __main__.py (CLI).
"""
