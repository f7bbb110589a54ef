# SPDX-License-Identifier: MIT
"""Export a learned Base-LoRA as a PEFT adapter and read it back without libsona.

The engine learns a per-layer task through loop B (Base-LoRA), exports it with export_peft, and
this script reads adapter_model.safetensors with a small reader written from the format's spec
(an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
range, then the raw bytes; Debian 12 has no python3-safetensors). Applying the read weights the
way a PEFT server does, y = x + (lora_alpha / r) * B (A x), must give what the engine's own
apply_layer gives.
"""
import json
import os
import struct
import sys
import tempfile

import numpy as np

import sona


def read_safetensors(path):
    """{name: float32 array} from a safetensors file of F32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {info['dtype']}, this reader takes F32 only")
        lo, hi = info["data_offsets"]
        tensors[name] = np.frombuffer(body[lo:hi], dtype="<f4").reshape(info["shape"])
    return tensors


H, LAYER = 128, 2
rng = np.random.default_rng(11)
target = rng.standard_normal(H).astype(np.float32)
target /= np.linalg.norm(target)

with sona.Engine(H, background_thread=0) as e:     # the default preset, loop B run by hand
    for i in range(300):                             # a per-layer task: steps toward target score more
        x = rng.standard_normal(H).astype(np.float32)
        y = e.apply_layer(x, LAYER)
        with e.request(0, x) as r:
            for _ in range(4):
                a = y + 0.5 * np.linalg.norm(y) / np.sqrt(H) * rng.standard_normal(H).astype(np.float32)
                r.step(LAYER, a, reward=float((1 + a @ target / np.linalg.norm(a)) / 2))
            r.quality = 0.5
        if i % 50 == 49:
            e.force_learn()
    print(f"loop B: {e.stats().base_updates} Base-LoRA updates")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "adapter")
        e.export_peft(out, base_model="example/model")
        with open(os.path.join(out, "adapter_config.json")) as f:
            config = json.load(f)
        tensors = read_safetensors(os.path.join(out, "adapter_model.safetensors"))

    module = f"base_model.model.model.layers.{LAYER}.self_attn.o_proj"
    A = tensors[module + ".lora_A.weight"]           # [r, hidden]
    B = tensors[module + ".lora_B.weight"]           # [hidden, r]
    scale = config["lora_alpha"] / config["r"]
    print(f"{len(tensors)} tensors, r {config['r']}, lora_alpha {config['lora_alpha']}, "
          f"target_modules {config['target_modules']}")

    worst = 0.0
    for _ in range(8):
        x = rng.standard_normal(H).astype(np.float32)
        ours = e.apply_layer(x, LAYER)
        theirs = x.astype(np.float64) + scale * (B.astype(np.float64) @ (A.astype(np.float64) @ x))
        worst = max(worst, float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))))
    moved = float(np.linalg.norm(scale * (B @ (A @ x))))
    print(f"PEFT weights reproduce apply_layer to {worst:.1e} (relative); the adapter adds |{moved:.3f}|")
    if not (worst < 1e-5 and moved > 1e-3 and config["base_model_name_or_path"] == "example/model"):
        sys.exit("the exported adapter does not reproduce the engine's")
