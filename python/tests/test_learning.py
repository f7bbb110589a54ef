"""Learning through the Python API moves the outputs toward the rewarded direction at the default
preset (only the width and background_thread chosen, as tests/test_engine_learning.c: there, 600
trajectories of 4 per-step rewarded steps raised the score of 3 learners by 0.34 to 0.44 over 40
seeds; its bar is 0.2)."""
import numpy as np

import sona
from helpers import SynthTask

HIDDEN = 67


def test_per_step_rewards_raise_the_score_at_the_defaults():
    gains = []
    for replicate in range(3):
        task = SynthTask(HIDDEN, clusters=3, seed=100 + replicate)
        rng = np.random.default_rng(200 + replicate)
        x_eval, c_eval = task.queries(300, np.random.default_rng(300 + replicate))
        with sona.Engine(HIDDEN, background_thread=False, seed=7 + replicate) as e:
            before = task.score(e, x_eval, c_eval)
            task.run(e, 600, rng)
            after = task.score(e, x_eval, c_eval)
            s = e.stats()
            assert s.signals_accepted + s.signals_rejected == 600
            assert s.micro_updates == s.signals_accepted
            assert s.trajectories_recorded + s.trajectories_dropped == 600
        gains.append(after - before)
        print(f"learner {replicate}: score {before:.3f} -> {after:.3f}")
    assert np.mean(gains) > 0.2, gains
    assert min(gains) > 0.1, gains


def test_the_adapter_moves_toward_the_better_step():
    # tests/test_engine_learning.c's minimal case: steps e1 (reward 0.2) and e2 (0.8).
    H = 8
    x = np.array([0.3, -0.2, 0.5, 0.1, -0.4, 0.2, 0.1, -0.3], np.float32)
    e1 = np.eye(H, dtype=np.float32)[0]
    e2 = np.eye(H, dtype=np.float32)[1]
    with sona.Engine(H, background_thread=False) as e:
        for i in range(52):
            with e.request(0, x) as r:
                r.step(0, e1, reward=0.2)
                r.step(0, e2, reward=0.8)
                r.quality = 0.9 if i == 0 else 0.5
        y = e.apply(x)
    assert float(np.dot(y - x, e2 - e1)) > 0.05
