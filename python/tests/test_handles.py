# SPDX-License-Identifier: MIT
"""The standalone handles: Lora against a numpy reference, learning that moves the output, Index
and Bank finding what they hold; bad input raises and changes nothing; closed handles refuse."""
import numpy as np
import pytest

import sona


def test_lora_forward_matches_the_weights():
    rng = np.random.default_rng(5)
    with sona.Lora(37, kind="base", rank=3, alpha=6.0, count=4) as lora:
        for adapter in range(4):
            A, B = lora.weights(adapter)
            B[:] = rng.standard_normal(B.shape).astype(np.float32)  # B starts at zero: give it values
            lora.set_weights(adapter, B=B)
        x = rng.standard_normal((9, 37)).astype(np.float32)
        ids = np.array([0, 1, 2, 3, -1, 3, 2, 1, 0], np.int32)
        y = lora.forward(x, ids)
        for i in range(9):
            if ids[i] < 0:
                want = x[i].astype(np.float64)
            else:
                A, B = lora.weights(int(ids[i]))
                want = x[i] + 2.0 * (B.astype(np.float64) @ (A.astype(np.float64) @ x[i]))
            np.testing.assert_allclose(y[i], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lora.forward(x[0], 0), y[0])


def test_lora_learns_toward_the_signal_and_refuses_bad_rows():
    rng = np.random.default_rng(6)
    with sona.Lora(64) as lora:
        x = rng.standard_normal(64).astype(np.float32)
        target = rng.standard_normal(64).astype(np.float32)
        before = lora.forward(x)
        for _ in range(50):
            y = lora.forward(x)
            lora.accumulate(x, target - y)
            lora.apply_updates()
        after = lora.forward(x)
        assert np.linalg.norm(after - target) < 0.8 * np.linalg.norm(before - target)
        bad = x.copy()
        bad[3] = np.nan
        pending = lora.pending
        with pytest.raises(sona.NonFiniteError):
            lora.accumulate(np.stack([x, bad]), np.stack([x, x]))
        assert lora.pending == pending, "a refused batch accumulated something"
        with pytest.raises(sona.SizeError):
            lora.forward(np.zeros(63, np.float32))
    with pytest.raises(sona.StateError):
        lora.forward(x)


def test_index_finds_what_it_holds():
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((300, 48)).astype(np.float32)
    with sona.Index(48, storage="f16", ef_search=64) as index:
        for i, v in enumerate(vecs):
            index.insert(1000 + i, v)
        assert len(index) == 300
        hits = index.search(vecs[42], k=5)
        assert hits[0][0] == 1042 and hits[0][1] > 0.999, hits
        assert [h[1] for h in hits] == sorted((h[1] for h in hits), reverse=True)
        np.testing.assert_allclose(index.vector(1042), vecs[42], rtol=2e-3, atol=2e-3)
        index.remove(1042)
        assert len(index) == 299 and all(h[0] != 1042 for h in index.search(vecs[42], k=5))
        with pytest.raises(sona.NotFoundError):
            index.remove(1042)
        with pytest.raises(sona.SizeError):
            index.search(np.zeros(47, np.float32))
    with pytest.raises(sona.InvalidArgumentError):
        sona.Index(8, storage="f64")


def test_bank_clusters_trajectories_into_patterns():
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((3, 32)).astype(np.float32)
    rows = np.repeat(centres, 40, axis=0) + 0.05 * rng.standard_normal((120, 32)).astype(np.float32)
    with sona.Bank(32, k_clusters=3, seed=1) as bank:
        bank.add(rows, 0.8)
        assert bank.pending == 120
        res = bank.extract()
        assert res["trajectories"] == 120 and bank.pending == 0
        assert 3 <= len(bank) <= 6, res
        for c in centres:
            (pid, sim), = bank.search(c, k=1)
            assert sim > 0.99
            p = bank.pattern(pid)
            assert p.size >= 20 and abs(p.avg_quality - 0.8) < 1e-5
            assert np.dot(p.centroid, c) / (np.linalg.norm(p.centroid) * np.linalg.norm(c)) > 0.99
        with pytest.raises(sona.SizeError):
            bank.add(np.zeros((2, 31), np.float32), 0.5)
        assert bank.pending == 0
    with pytest.raises(sona.InvalidArgumentError):
        sona.Bank(8, no_such_field=1)
