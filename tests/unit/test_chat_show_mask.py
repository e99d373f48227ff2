"""`python -m cardforge.data.show_mask`: terminal view with trained tokens marked, HTML view, bad index."""

from __future__ import annotations

import subprocess
import sys

from cardforge.core.chat import Message, ToolCall, Trajectory, write_jsonl
from cardforge.data.show_mask import main


def sample(tmp_path):
    f = tmp_path / "d.jsonl"
    write_jsonl(f, [Trajectory("only-user", [Message("user", "x"), Message("assistant", "y")]),
                    Trajectory("t1", [Message("user", "hi <b>"), Message("assistant", "", "go", [ToolCall("f", {"x": "1"})]),
                                      Message("tool", "tool says ok", name="f"), Message("assistant", "Done.", "fine")])])
    return f


def test_terminal_and_html_views(tmp_path, capsys, tiny_model_dir):
    f, out = sample(tmp_path), tmp_path / "view.html"
    assert main([str(f), "--index", "1", "--html", str(out), "--model", str(tiny_model_dir)]) == 0
    printed = capsys.readouterr().out
    assert "task t1: 67 tokens, 35 trained (52%) in 2 assistant turns [msg 1: tokens 14-41, msg 3: tokens 60-66]" in printed
    # without a colour terminal the trained runs are bracketed: exactly the two assistant turns
    assert "⟦go\n</think>\n\n<tool_call>" in printed and "</tool_call><|im_end|>⟧" in printed
    assert "⟦fine\n</think>\n\nDone.<|im_end|>⟧" in printed
    assert printed.count("⟦") == 2 and "tool says ok" in printed.split("⟧")[1]
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<b>" not in page.split("</header>")[1]  # user text escaped
    assert page.count('<span class="t') == 35 and '<span class="t" title="#14 id 3237">go</span>' in page


def test_several_sequences_and_a_refused_record(tmp_path, capsys, tiny_model_dir):
    f = tmp_path / "d.jsonl"
    write_jsonl(f, [Trajectory("two", [Message("user", "a"), Message("assistant", "b"), Message("user", "c"),
                                       Message("assistant", "d")]),  # empty reasoning: 2 sequences
                    Trajectory("bad", [Message("user", "a"), Message("assistant", "x <|im_end|>")])])
    assert main([str(f), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "task two sequence 1/2" in out and "task two sequence 2/2" in out
    assert main([str(f), "--index", "1", "--model", str(tiny_model_dir)]) == 1
    assert "refused by the chat contract (special_token_in_text)" in capsys.readouterr().err


def test_cli_entry_and_bad_index(tmp_path, tiny_model_dir):
    f = sample(tmp_path)
    r = subprocess.run([sys.executable, "-m", "cardforge.data.show_mask", str(f), "--index", "7",
                        "--model", str(tiny_model_dir)], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "--index 7 is out of range" in r.stderr and "has 2 records" in r.stderr
    # the data stage's own entry point is the Hydra stage only
    r = subprocess.run([sys.executable, "-m", "cardforge.data", "--cfg", "job"], check=False, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "stage: data" in r.stdout
