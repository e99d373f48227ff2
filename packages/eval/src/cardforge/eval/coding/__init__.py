"""The coding suites' machinery: problems defined once (problems.py), rendered per language (languages.py),
compiled and run in the sandbox (runner.py), code taken from the model's answer (extract.py).

Used by benchmarks/coding.py (coding-100: 10 problems x 10 languages) and benchmarks/humaneval.py.
"""
