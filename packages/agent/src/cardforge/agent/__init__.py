"""cardforge agent runtime: the OpenAI-compatible client, the ReAct loop and its wire, tools, the judges
(rule-based verifiers, LLM judge), the teacher and the task families; driven by the data stage (teacher
trajectories) and by the eval (bfcl, agentic, proof suites)."""
