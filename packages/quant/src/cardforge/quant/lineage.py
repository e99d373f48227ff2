"""MTP lineage: every output must carry the head the merge (or mtp) stage wrote, unaltered.

The reference is the manifest the stage that wrote the checkpoint stored (name, shape, dtype and sha256 of
every `mtp.*` tensor): `<outputs>/merge/mtp_manifest.merged.json` for `merge/model`,
`mtp/model/mtp_manifest.retrained.json` for the mtp stage's checkpoint. The quant stage checks
- its source against it first (`check_source`): a head changed after that stage wrote it fails the stage;
- safetensors outputs (FP8, NVFP4), which keep the head bit-exact: the same tensors with the same name, shape,
  dtype and sha256, and no other `mtp.*` tensor (`check_safetensors`);
- GGUF outputs (`check_gguf`): `<arch>.nextn_predict_layers` equals the manifest's MTP layers and the nextn
  block holds exactly the manifest's tensors under the converter's names (`gguf_name`) with the converter's
  shapes (ggml order, reversed). Given the source's head tensors (checked against the manifest first), each
  nextn tensor is also dequantized and compared with them: bit-equal for BF16 matrices, within a bound per
  ggml type for the quantized tiers (llama-quantize re-quantizes the head, so no sha256 can hold there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cardforge.core.artifacts import MERGED_MANIFEST, RETRAINED_MANIFEST
from cardforge.core.errors import UserError
from cardforge.core.models.mtp import mtp_manifest

STORED_MANIFESTS = (RETRAINED_MANIFEST, MERGED_MANIFEST)


class MtpLineageError(UserError):
    pass


# --- the stored manifest and the source checkpoint ---


def stored_manifest_path(model_dir: Path) -> Path | None:
    """The manifest the producing stage stored for `model_dir`: the mtp stage's beside its weights, the merge
    stage's one level up (<outputs>/merge/ next to <outputs>/merge/model/)."""
    model_dir = Path(model_dir)
    candidates = [model_dir / RETRAINED_MANIFEST, model_dir / MERGED_MANIFEST]
    if model_dir.name == "model":
        candidates.append(model_dir.parent / MERGED_MANIFEST)
    return next((p for p in candidates if p.is_file()), None)


def load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MtpLineageError(f"cannot read the MTP manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise MtpLineageError(f"{path} is not an MTP manifest (no `tensors` mapping)")
    return manifest


def diff(got: dict, want: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, altered, unexpected) tensor names of manifest `got` against manifest `want`."""
    g, w = got["tensors"], want["tensors"]
    missing = sorted(set(w) - set(g))
    unexpected = sorted(set(g) - set(w))
    altered = sorted(n for n in set(w) & set(g)
                     if any(g[n].get(k) != w[n].get(k) for k in ("shape", "dtype", "sha256") if k in w[n]))
    return missing, altered, unexpected


def _describe(missing: list[str], altered: list[str], unexpected: list[str]) -> str:
    parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(altered)} altered (e.g. {altered[0]})" if altered else "",
             f"{len(unexpected)} not in the manifest (e.g. {unexpected[0]})" if unexpected else ""]
    return ", ".join(p for p in parts if p)


def check_source(src: Path, stored: dict, stored_path: Path | str, actual: dict | None = None) -> dict:
    """The source's actual head (`actual`: its manifest, if already computed) must be the one its stage stored;
    returns the source's manifest."""
    actual = actual if actual is not None else mtp_manifest(src)
    missing, altered, unexpected = diff(actual, stored)
    if missing or altered or unexpected:
        raise MtpLineageError(
            f"{src}: the MTP head differs from the stored manifest {stored_path}: "
            f"{_describe(missing, altered, unexpected)}; the checkpoint changed after the stage that wrote it "
            "(re-run that stage, or point quant.source at the checkpoint the manifest describes)")
    return actual


# --- safetensors outputs ---


def check_safetensors(out_dir: Path, expected: dict) -> dict:
    got = mtp_manifest(out_dir)
    missing, altered, unexpected = diff(got, expected)
    if missing:
        raise MtpLineageError(f"{out_dir}: MTP head missing {len(missing)} tensor(s), e.g. {missing[0]}")
    if altered:
        raise MtpLineageError(f"{out_dir}: MTP tensor(s) altered vs the merge manifest, e.g. {altered[0]}")
    if unexpected:
        raise MtpLineageError(f"{out_dir}: MTP tensor(s) the manifest does not list, e.g. {unexpected[0]} "
                              "(was the head quantized?)")
    return {"mtp_tensors": len(expected["tensors"]), "mtp_check": "sha256-equal"}


# --- GGUF outputs ---

# llama.cpp's converter (conversion/qwen.py `_QwenMtpMixin.filter_tensors`, then gguf-py's tensor map) renames
# the head: `mtp.{fc, pre_fc_norm_*, norm}` -> nextn.* of the first MTP block, `mtp.layers.i.*` -> block
# num_hidden_layers + i under the ordinary layer names.
_TOP = {"fc": "nextn.eh_proj", "pre_fc_norm_embedding": "nextn.enorm", "pre_fc_norm_hidden": "nextn.hnorm",
        "norm": "nextn.shared_head_norm"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
# Qwen3-Next / Qwen3.5 store RMSNorm weights as w and compute x * (1 + w); the converter writes 1 + w for
# every norm, the renamed nextn.enorm/hnorm included (conversion/qwen.py: `name.endswith("norm.weight")`,
# tested on the renamed `model.layers.L.enorm.weight`).
PLUS_ONE_NORM_ARCHS = ("qwen3next", "qwen35", "qwen35moe")
# Relative (Frobenius) error allowed per ggml type when a nextn tensor is compared with the source's. Measured
# on the tiny model's head: Q8_0 0.005, Q6_K 0.018, Q5_K 0.036, Q4_K 0.071; the grafted and the retrained head
# of the same model are 0.69-1.0 apart. Float types hold the source's values (norms: 1 + w, rounded).
REL_TOL = {"F32": 0.01, "F16": 0.01, "BF16": 0.01, "Q8_0": 0.03, "Q6_K": 0.06, "Q5_K": 0.12, "Q5_0": 0.12,
           "Q5_1": 0.12, "Q4_K": 0.2, "Q4_0": 0.2, "Q4_1": 0.2, "IQ4_XS": 0.2, "IQ4_NL": 0.2}
REL_TOL_OTHER = 0.5  # 2-3 bit and other types: still below an unrelated head's distance


def gguf_name(hf_name: str, first_block: int) -> str | None:
    """The GGUF name the converter gives an HF `mtp.*` tensor (None: no mapping known)."""
    m = re.fullmatch(r"mtp\.(\w+)\.(weight|bias)", hf_name)
    if m and m.group(1) in _TOP:
        return f"blk.{first_block}.{_TOP[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"mtp\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
    if m and m.group(2) in _LAYER:
        return f"blk.{first_block + int(m.group(1))}.{_LAYER[m.group(2)]}.{m.group(3)}"
    return None


def mtp_layers(manifest: dict) -> int:
    idx = [int(m.group(1)) for n in manifest["tensors"] if (m := re.match(r"mtp\.layers\.(\d+)\.", n))]
    return max(idx) + 1 if idx else 1


def read_gguf_index(path: Path) -> dict:
    """Header of a GGUF file with each tensor's shape (ggml order), ggml type and absolute data offset.
    Arrays are skipped, not read (the 248k-entry vocabulary would take seconds)."""
    from cardforge.core.llama_cpp import gguf_header

    header = gguf_header(path, max_array=0)
    return {"kv": header["kv"], "tensors": header["index"]}


def _dequantize(path: Path, info: dict):
    """float32 numpy array of one tensor, in row-major (HF) order."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(info["type"])
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in info["shape"]:
        n *= d
    nbytes = n // block * type_size
    with open(path, "rb") as f:
        f.seek(info["offset"])
        raw = np.frombuffer(f.read(nbytes), dtype=np.uint8)
    row = info["shape"][0] // block * type_size
    values = dequantize(raw.reshape(-1, row), qtype)
    return np.asarray(values, dtype=np.float32).reshape(list(reversed(info["shape"]))), qtype.name


def check_gguf(path: Path, expected: dict, reference: dict | None = None) -> dict:
    """Check one GGUF's nextn block against the manifest (names, count, shapes) and, given `reference`
    (HF name -> the source's tensor, already checked against the manifest), against the values."""
    idx = read_gguf_index(path)
    kv, tensors = idx["kv"], idx["tensors"]
    want = expected.get("tensors") or {}
    arch = kv.get("general.architecture")
    n_nextn = int(kv.get(f"{arch}.nextn_predict_layers", 0) or 0)
    if not want:
        return {"mtp_tensors": 0, "mtp_check": "none"}
    n_layers = mtp_layers(expected)
    if n_nextn != n_layers:
        raise MtpLineageError(f"{path.name}: {arch}.nextn_predict_layers={n_nextn}, expected {n_layers} "
                              "(MTP head lost)")
    first = int(kv.get(f"{arch}.block_count", 0)) - n_nextn
    mapped: dict[str, str] = {}
    for name in want:
        g = gguf_name(name, first)
        if g is None:
            raise MtpLineageError(f"{path.name}: no GGUF name known for MTP tensor {name} "
                                  "(cardforge.quant.lineage.gguf_name follows the converter's renaming)")
        mapped[g] = name
    block = {n for n in tensors if any(n.startswith(f"blk.{b}.") for b in range(first, first + n_nextn))}
    missing, extra = sorted(set(mapped) - block), sorted(block - set(mapped))
    if missing:
        raise MtpLineageError(f"{path.name}: MTP head incomplete, {len(missing)} of the manifest's {len(mapped)} "
                              f"tensors absent from nextn block {first}, e.g. {missing[0]} ({mapped[missing[0]]})")
    if extra:
        raise MtpLineageError(f"{path.name}: nextn block {first} holds {len(extra)} tensor(s) the manifest does "
                              f"not list, e.g. {extra[0]}")
    for g, name in mapped.items():
        shape = want[name].get("shape")
        if shape is not None and tensors[g]["shape"] != list(reversed(shape)):
            raise MtpLineageError(f"{path.name}: {g} has shape {tensors[g]['shape']} (ggml order) but the "
                                  f"manifest's {name} is {shape}: altered MTP head")
    res = {"mtp_tensors": len(mapped), "mtp_check": "nextn-names-shapes", "nextn_block": first}
    if reference is not None:
        res.update(_check_values(path, arch, tensors, mapped, reference))
    return res


def _check_values(path: Path, arch: str, tensors: dict, mapped: dict[str, str], reference: dict) -> dict:
    import numpy as np

    worst = 0.0
    for g, name in sorted(mapped.items()):
        if name not in reference:
            raise MtpLineageError(f"{path.name}: no reference tensor for {name}")
        got, qtype = _dequantize(path, tensors[g])
        want = reference[name].float().numpy()
        if arch in PLUS_ONE_NORM_ARCHS and g.endswith("norm.weight"):  # enorm/hnorm included
            want = want + 1.0
        if qtype == "BF16" and want.ndim == 2:  # the converter copies BF16 matrices bit for bit
            if not np.array_equal(got, want):
                raise MtpLineageError(f"{path.name}: {g} differs from the manifest's {name} "
                                      f"(max |diff| {float(np.abs(got - want).max()):.3g}): altered MTP head")
            continue
        rel = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-12))
        tol = REL_TOL.get(qtype, REL_TOL_OTHER)
        if not rel <= tol:
            raise MtpLineageError(f"{path.name}: {g} ({qtype}) is {rel:.3g} away from the manifest's {name} "
                                  f"(relative error; {qtype} allows {tol}): altered MTP head")
        worst = max(worst, rel)
    return {"mtp_check": "nextn-names-shapes-values", "mtp_max_rel_err": round(worst, 5)}
