"""The MTP draft head (cardforge.train.mtp): module <-> checkpoint tensors, the offline accept statistics and
self-distillation learning what the grafted head cannot predict, on a small random Qwen3.5 in memory."""

from __future__ import annotations

import pytest
import torch

from cardforge.train.mtp import fit as F
from cardforge.train.mtp.head import MtpHead


def _small_model(vocab: int = 96):
    from transformers import AutoModelForCausalLM, Qwen3_5TextConfig

    cfg = Qwen3_5TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            full_attention_interval=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                            linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=32,
                            linear_value_head_dim=32, partial_rotary_factor=0.25,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                             "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1],
                                             "mrope_interleaved": True})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _cyclic(n_seq: int, length: int, period: int, vocab: int, seed: int) -> list[F.Sequence]:
    """Sequences that walk one fixed random cycle of tokens from different starting points: x[t+2] is a function
    of x[t+1], which the head can learn and a random head cannot know."""
    g = torch.Generator().manual_seed(seed)
    cycle = torch.randperm(vocab, generator=g)[:period].tolist()
    out = []
    for i in range(n_seq):
        start = (i * 3) % period
        ids = [cycle[(start + j) % period] for j in range(length)]
        out.append(F.Sequence(ids, prompt_len=4))
    return out


def test_head_round_trips_the_checkpoint_tensors(tiny_model_dir):
    from transformers import AutoConfig

    from cardforge.core.models.mtp import read_mtp_tensors

    tensors = read_mtp_tensors(tiny_model_dir)
    head = MtpHead(AutoConfig.from_pretrained(tiny_model_dir))
    head.load_mtp_tensors(tensors)
    back = head.mtp_tensors(torch.bfloat16)
    assert set(back) == set(tensors) and len(back) == 15
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="missing"):
        head.load_mtp_tensors({k: v for k, v in tensors.items() if "fc" not in k})


def test_accept_stats_count_the_matching_prefix_like_llama_server():
    model = _small_model()
    feats = F.trunk_features(model, _cyclic(2, 24, 12, 96, seed=1))
    head = MtpHead(model.config)
    s = F.accept_stats(head, model, feats, n_max=3)
    # every continuation position drafts n_max tokens; random head: (almost) nothing accepted
    assert s["positions"] == sum(len(f.ids) - 2 - F._valid_from(f) for f in feats)
    assert s["accept_rate"] < 0.1
    assert s["mean_accept_len"] == pytest.approx(1 + 3 * s["accept_rate"])
    # accepted drafts are a prefix: the rate can never exceed step 1's accuracy
    assert s["accept_rate"] <= s["step1_acc"] + 1e-9


@pytest.mark.slow
def test_fit_learns_the_drafts_on_held_out_sequences_and_only_the_head_moves():
    model = _small_model()
    seqs = _cyclic(10, 40, 16, 96, seed=2)
    feats = F.trunk_features(model, seqs)
    train, held = feats[:8], feats[8:]
    head = MtpHead(model.config)
    trunk_before = {k: v.clone() for k, v in model.state_dict().items()}
    before = F.accept_stats(head, model, held, n_max=3)
    losses = F.fit(head, model, train, steps=150, lr=3e-3, weight_decay=0.0, unroll=3, step_weights=[1, 0.5, 0.25],
                   warmup_ratio=0.05, seed=0, positions_per_step=16, self_targets=False)
    after = F.accept_stats(head, model, held, n_max=3)
    assert before["accept_rate"] < 0.1
    assert after["step1_acc"] > 0.9 and after["accept_rate"] > 0.8, after
    # argmax is right long before the (random, small) LM head can make the softmax confident
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert all(torch.equal(v, trunk_before[k]) for k, v in model.state_dict().items())  # trunk frozen


def test_self_targets_teach_the_drafts_greedy_decoding_accepts():
    """Labels read off the trunk (its argmax after each prefix) at every position, prompt included: on held-out
    prompts the head then drafts the model's own greedy continuation."""
    model = _small_model()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 96, (12,), generator=g).tolist() for _ in range(12)]
    seqs = F.generate(model, prompts, max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0, eos_ids=[95])
    feats = F.trunk_features(model, seqs)
    # the continuation is the trunk's own argmax: the labels self_targets reads off the hidden states
    for f in feats:
        cont = model.get_output_embeddings()(f.hidden[f.prompt_len - 1:-1]).argmax(-1)
        assert torch.equal(cont, f.ids[f.prompt_len:])
    train, held = feats[:10], feats[10:]
    head = MtpHead(model.config)
    trunk_before = {k: v.clone() for k, v in model.state_dict().items()}
    before = F.accept_stats(head, model, held, n_max=3)
    F.fit(head, model, train, steps=200, lr=3e-3, weight_decay=0.0, unroll=3, step_weights=[1, 0.5, 0.25],
          warmup_ratio=0.05, seed=0, positions_per_step=32, self_targets=True)
    after = F.accept_stats(head, model, held, n_max=3)
    assert after["accept_rate"] > before["accept_rate"] + 0.3, (before, after)
    assert all(torch.equal(v, trunk_before[k]) for k, v in model.state_dict().items())  # trunk frozen
