"""A synthetic learning task like tests/support/synth_task.c: queries from a few clusters, each
with a hidden target direction; the "model" answers with the adapter's output y = apply(x) and
explores around it (4 steps, each normalize(y + 0.5 |y| g) |y|, reward (1 + cos(step, target)) /
2, quality the mean reward). An adapter's score is the mean (1 + cos(y, target)) / 2."""
import numpy as np


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class SynthTask:
    def __init__(self, hidden, clusters=3, seed=0):
        rng = np.random.default_rng(seed)
        self.hidden = hidden
        self.centers = unit(rng.standard_normal((clusters, hidden)))
        self.targets = unit(rng.standard_normal((clusters, hidden)))
        self.spread, self.explore, self.steps = 0.3, 0.5, 4

    def queries(self, n, rng):
        c = rng.integers(0, len(self.centers), n)
        x = self.centers[c] + self.spread * rng.standard_normal((n, self.hidden)) / np.sqrt(self.hidden)
        return x.astype(np.float32), c

    def score(self, engine, x, c, tenant=0):
        y = engine.apply_batch(x, tenant)
        cos = np.sum(unit(y) * self.targets[c], axis=1)
        return float(np.mean((1 + cos) / 2))

    def run(self, engine, n, rng, tenant=0):
        x, c = self.queries(n, rng)
        for i in range(n):
            y = engine.apply(x[i], tenant)
            ny = np.linalg.norm(y)
            g = rng.standard_normal((self.steps, self.hidden)) / np.sqrt(self.hidden)
            a = y + self.explore * ny * g
            a = (a / np.linalg.norm(a, axis=1, keepdims=True) * ny).astype(np.float32)
            rewards = (1 + unit(a) @ self.targets[c[i]]) / 2
            with engine.request(tenant, x[i]) as r:
                for s in range(self.steps):
                    r.step(s, a[s], reward=float(rewards[s]))
                r.quality = float(np.mean(rewards))
