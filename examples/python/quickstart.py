# SPDX-License-Identifier: MIT
"""The README's Python example, run by the tests: an engine at the default preset learns, from
four explored outputs a request, to move toward the one that scored better."""
import numpy as np

import sona

rng = np.random.default_rng(7)
with sona.Engine(256) as e:                        # the default preset; any field by name
    x = rng.standard_normal(256).astype(np.float32)
    target = rng.standard_normal(256).astype(np.float32)

    def score(v):
        return float(v @ target / (np.linalg.norm(v) * np.linalg.norm(target)))

    before = score(e.apply(x))
    for _ in range(300):
        y = e.apply(x)                             # what the adapter makes of the query
        with e.request(0, x) as r:                 # ends the request, or abandons it on an exception
            for _ in range(4):                     # four explored outputs and how each scored
                a = y + 0.3 * rng.standard_normal(256).astype(np.float32)
                r.step(0, a, reward=(1 + score(a)) / 2)
            r.quality = 0.5
    after = score(e.apply(x))
    stats = e.stats()
    print(f"cos(output, target): {before:+.3f} -> {after:+.3f}; {stats.signals_accepted} signals learned")
    assert stats.signals_accepted == 300, stats
    assert after > before + 0.3, (before, after)  # seeds 0-9 gained 0.56 to 0.87
