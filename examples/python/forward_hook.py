# SPDX-License-Identifier: MIT
"""libsona inside a PyTorch model: a forward hook applies the tenant's Micro-LoRA to a hidden
state, and each request's trajectory is recorded with a synthetic reward, so the model's answers
improve while it serves. No weights are downloaded: the model is built here, at random.

The task: inputs come from 4 clusters, and the right answer for an input is its cluster. The
frozen model answers at chance. Per request the server explores 4 variations of the adapted
hidden state, runs the rest of the model on each, and scores it by the probability it gives the
right answer; libsona learns from those steps at its default preset. The learning curve printed
is the accuracy on held-out inputs. Exits 77 (a skip for ctest) when PyTorch is not installed.
"""
import sys

try:
    import torch
except ImportError:
    print("forward_hook.py: PyTorch (Debian python3-torch) is not installed: skipped")
    sys.exit(77)

import numpy as np

import sona

torch.manual_seed(0)
rng = np.random.default_rng(0)
IN, H, CLASSES = 32, 64, 4

model = torch.nn.Sequential(torch.nn.Linear(IN, H), torch.nn.Tanh(),
                            torch.nn.Linear(H, H),                    # the hooked layer
                            torch.nn.Tanh(), torch.nn.Linear(H, CLASSES)).eval()
head = model[3:]                                                      # the layers after the hook
centres = rng.standard_normal((CLASSES, IN)).astype(np.float32)


def inputs(n):
    labels = rng.integers(0, CLASSES, n)
    x = centres[labels] + 0.3 * rng.standard_normal((n, IN)).astype(np.float32)
    return torch.from_numpy(x), labels


engine = sona.Engine(H)                                               # the default preset
hidden = {}


def adapt(module, args, output):
    """The forward hook: the tenant's Micro-LoRA on the layer's output, kept for recording."""
    h = output.detach().numpy().astype(np.float32)
    y = engine.apply_batch(h, 0)
    hidden["query"], hidden["adapted"] = h, y
    return torch.from_numpy(y)


model[2].register_forward_hook(adapt)
test_x, test_labels = inputs(400)


def accuracy():
    with torch.no_grad():
        return float((model(test_x).argmax(1).numpy() == test_labels).mean())


def serve(x, label):
    """One request: answer, explore 4 variations of the adapted state, record how each scored."""
    with torch.no_grad():
        model(x[None])
        query, y = hidden["query"][0], hidden["adapted"][0]
        scale = 0.5 * np.linalg.norm(y) / np.sqrt(H)
        variants = y + scale * rng.standard_normal((4, H)).astype(np.float32)
        probs = torch.softmax(head(torch.from_numpy(variants)), 1)[:, label].numpy()
    with engine.request(0, query) as r:
        for a, p in zip(variants, probs):
            r.step(0, a, reward=float(p))
        r.quality = float(probs.mean())


before = accuracy()
print(f"requests     0: accuracy {before:.2f}")
train_x, train_labels = inputs(1500)
for i in range(1500):
    serve(train_x[i], train_labels[i])
    if i % 300 == 299:
        print(f"requests {i + 1:5d}: accuracy {accuracy():.2f}")
after = accuracy()
engine.close()
if after < before + 0.3:  # seeds 0-4 gained 0.61 to 0.91
    sys.exit(f"the adapter did not learn: accuracy {before:.2f} -> {after:.2f}")
