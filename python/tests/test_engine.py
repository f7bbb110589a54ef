"""Engine through Python: apply and apply_batch agree, arrays are used in place where documented,
requests as context managers, persistence, patterns, export, errors, threads."""
import json
import os
import struct
import threading

import numpy as np
import pytest

import sona
from helpers import SynthTask

H = 32


def learned_engine(tenants=1, n=120, **kw):
    """An engine whose adapters have learned (tenant 0 and tenants-1 more), no background thread."""
    kw.setdefault("background_thread", False)
    e = sona.Engine(H, **kw)
    task = SynthTask(H, seed=1)
    rng = np.random.default_rng(2)
    ids = [0] + [e.create_tenant() for _ in range(tenants - 1)]
    for t in ids:
        task.run(e, n, rng, tenant=t)
    return e, ids


@pytest.fixture
def engine():
    e, _ = learned_engine(tenants=3)
    yield e
    e.close()


def rows(n, seed=5):
    return np.random.default_rng(seed).standard_normal((n, H)).astype(np.float32)


# ---- apply --------------------------------------------------------------------------------------

def test_apply_equals_apply_batch(engine):
    x = rows(64)
    tenants = np.array([i % 3 for i in range(64)], dtype=np.int32)
    tenants[5] = -1
    batch = engine.apply_batch(x, tenants)
    for i in range(64):
        np.testing.assert_array_equal(engine.apply(x[i], int(tenants[i])), batch[i])
    np.testing.assert_array_equal(batch[5], x[5])  # tenant -1: y = x
    assert not np.array_equal(batch[0], x[0])  # tenant 0 has learned
    # one tenant for every row, and an apply of many rows
    np.testing.assert_array_equal(engine.apply_batch(x, 1), engine.apply(x, 1))
    np.testing.assert_array_equal(engine.apply(x.reshape(4, 16, H), 2).reshape(64, H),
                                  engine.apply_batch(x, 2))


def test_apply_in_place_and_out(engine):
    x = rows(8)
    want = engine.apply_batch(x, 0)
    buf = x.copy()
    assert engine.apply_batch(buf, 0, out=buf) is buf  # in place: the array passed is written
    np.testing.assert_array_equal(buf, want)
    one = x[3].copy()
    assert engine.apply(one, 0, out=one) is one
    np.testing.assert_array_equal(one, want[3])
    out = np.full((8, H), -7, np.float32)
    assert engine.apply_batch(x, 0, out=out) is out
    np.testing.assert_array_equal(out, want)
    with pytest.raises(sona.InvalidArgumentError, match="out"):
        engine.apply_batch(x, 0, out=np.empty((8, H), np.float64))
    with pytest.raises(sona.SizeError):
        engine.apply_batch(x, 0, out=np.empty((7, H), np.float32))


def test_float32_c_contiguous_is_not_copied_other_layouts_are_converted(engine):
    from sona.engine import _f32
    x = rows(4)
    assert _f32(x, "x") is x
    assert _f32(x[1], "x") is x[1] or np.shares_memory(_f32(x[1], "x"), x)
    wide = np.random.default_rng(1).standard_normal((4, 2 * H)).astype(np.float32)
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(engine.apply_batch(strided, 0),
                                  engine.apply_batch(np.ascontiguousarray(strided), 0))
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(engine.apply_batch(x64, 0), engine.apply_batch(x, 0))
    np.testing.assert_array_equal(engine.apply(x[0].tolist(), 0), engine.apply(x[0], 0))


def test_torch_cpu_tensors_through_the_array_protocol(engine):
    torch = pytest.importorskip("torch", reason="python3-torch is not installed")
    t = torch.from_numpy(rows(4))
    np.testing.assert_array_equal(engine.apply_batch(np.asarray(t), 0), engine.apply_batch(t.numpy(), 0))


# ---- errors ---------------------------------------------------------------------------------------

def test_bad_input_raises_the_right_error_and_changes_nothing(engine):
    x = rows(4)
    before_stats = engine.stats()
    before = engine.apply_batch(x, [0, 1, 2, 0])
    with pytest.raises(sona.SizeError, match="width"):
        engine.apply(np.ones(H + 1, np.float32))
    with pytest.raises(sona.SizeError):
        engine.apply_batch(x, [0, 1])
    with pytest.raises(sona.NotFoundError, match="tenant 9") as info:
        engine.apply(x[0], 9)
    assert info.value.status == sona.STATUS["SONA_E_NOT_FOUND"] and info.value.message
    with pytest.raises(sona.NotFoundError, match="row 2"):
        engine.apply_batch(x, [0, 1, 40, 0])
    with pytest.raises(sona.InvalidArgumentError, match="int32"):
        engine.apply(x[0], 2**32)  # not wrapped to tenant 0
    with pytest.raises(sona.InvalidArgumentError, match="int32"):
        engine.apply_batch(x, np.array([0, 0, 2**40, 0]))
    nan = x[0].copy()
    nan[3] = np.nan
    with pytest.raises(sona.NonFiniteError, match="NaN"):
        engine.request(0, nan)
    with engine.request(0, x[0]) as r:
        with pytest.raises(sona.NonFiniteError):
            r.step(0, x[1], reward=float("nan"))
        with pytest.raises(sona.NonFiniteError, match="attention"):
            r.step(0, x[1], attention=np.array([0.5, np.inf], np.float32))
        r.abandon()
    with pytest.raises(sona.InvalidArgumentError, match="tenant 0"):
        engine.remove_tenant(0)
    with pytest.raises(sona.NotFoundError):
        engine.remove_tenant(50)
    with pytest.raises(sona.InvalidArgumentError, match="layer"):
        engine.apply_layer(x, 12)
    with pytest.raises(sona.SonaIOError) as io:
        engine.load("/nonexistent-sona-dir/x.state")
    assert isinstance(io.value, OSError) and "cannot open" in str(io.value)
    np.testing.assert_array_equal(engine.apply_batch(x, [0, 1, 2, 0]), before)
    assert engine.stats() == before_stats


def test_full_and_corrupt(tmp_path):
    with sona.Engine(H, background_thread=False, max_tenants=2) as e:
        assert e.create_tenant() == 1
        with pytest.raises(sona.FullError, match="slots"):
            e.create_tenant()
        bad = tmp_path / "garbage.state"
        bad.write_bytes(b"not a state file, not even close to one: 0123456789")
        with pytest.raises(sona.CorruptError, match="magic"):
            e.load(bad)


def test_every_status_has_its_class():
    for name, code in sona.STATUS.items():
        if code == 0:
            continue
        err = sona.error_for(code, "m")
        assert isinstance(err, sona.SonaError) and err.status == code and str(err) == "m"
        assert type(err) is not sona.SonaError, name
    assert sona.error_for(99, "x").status == 99


def test_closed_engine():
    e = sona.Engine(H, background_thread=False)
    r = e.request(0, rows(1)[0])
    e.close()
    assert e.closed and not r.open  # close abandoned the open request
    e.close()  # idempotent
    for call in (lambda: e.apply(rows(1)[0]), e.stats, e.tick, e.force_learn, e.flush,
                 lambda: e.request(0, rows(1)[0]), lambda: e.save("/tmp/x")):
        with pytest.raises(sona.StateError, match="closed"):
            call()
    with pytest.raises(sona.StateError):
        r.step(0, rows(1)[0])


# ---- requests ------------------------------------------------------------------------------------

def test_request_context_manager_ends_or_abandons():
    with sona.Engine(H, background_thread=False) as e:
        x = rows(3)
        with e.request(0, x[0]) as r:
            r.step(0, x[1], reward=0.3)
            r.step(1, x[2], reward=0.9)
            r.quality = 0.8
        assert not r.open
        s = e.stats()
        assert s.trajectories_recorded == 1 and s.signals_accepted + s.signals_rejected == 1

        with pytest.raises(RuntimeError, match="boom"):
            with e.request(0, x[0]) as r:
                r.step(0, x[1], reward=0.3)
                r.quality = 0.5
                raise RuntimeError("boom")
        assert not r.open
        assert e.stats() == s  # abandoned: nothing recorded, no signal

        with pytest.raises(sona.StateError, match="quality"):
            with e.request(0, x[0]) as r:
                r.step(0, x[1], reward=0.3)
        assert not r.open and e.stats() == s

        r = e.request(0, x[0])
        r.step(0, x[1], reward=0.5)
        r.end(0.25)
        with pytest.raises(sona.StateError, match="ended"):
            r.end(0.25)
        r.abandon()  # harmless once ended
        assert e.stats().trajectories_recorded == 2

        r = e.request(0, x[0])
        with pytest.raises(sona.NonFiniteError):
            r.end(float("nan"))
        assert not r.open and e.stats().signals_rejected >= 1


def test_load_refuses_while_a_request_is_open(tmp_path):
    with sona.Engine(H, background_thread=False) as e:
        path = tmp_path / "a.state"
        e.save(path)
        r = e.request(0, rows(1)[0])
        with pytest.raises(sona.StateError, match="open"):
            e.load(path)
        r.abandon()
        e.load(path)


# ---- persistence, patterns, export -----------------------------------------------------------------

def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    e, ids = learned_engine(tenants=2)
    e.force_learn()  # Base-LoRA and patterns too
    path = tmp_path / "engine.state"
    e.save(path)
    x = rows(16)
    want = e.apply_batch(x, [ids[i % 2] for i in range(16)])
    want_layer = e.apply_layer(x, 0)
    cfg = sona.state_config(path)
    assert cfg["hidden"] == H
    with sona.Engine(H, background_thread=False) as f:
        f.create_tenant()
        f.load(str(path))
        np.testing.assert_array_equal(f.apply_batch(x, [ids[i % 2] for i in range(16)]), want)
        np.testing.assert_array_equal(f.apply_layer(x, 0), want_layer)
        a, b = e.stats(), f.stats()
        for name in ("trajectories_recorded", "trajectories_processed", "signals_accepted",
                     "micro_updates", "base_updates", "patterns", "tenants"):
            assert getattr(a, name) == getattr(b, name), name
    with pytest.raises(sona.SizeError):
        with sona.Engine(H + 1, background_thread=False) as g:
            g.load(path)
    e.close()


def test_find_patterns_and_export_peft(tmp_path):
    e, _ = learned_engine()
    e.force_learn()
    assert e.stats().patterns > 0
    hits = e.find_patterns(rows(1)[0], k=3)
    assert 1 <= len(hits) <= 3
    assert all(isinstance(h, sona.PatternHit) and h.size >= 1 for h in hits)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    assert e.find_patterns(rows(1)[0], k=0) == []

    out = tmp_path / "adapter"
    e.export_peft(out, base_model="tiny-model")
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["base_model_name_or_path"] == "tiny-model"
    raw = (out / "adapter_model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    a = header["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"]
    assert a["dtype"] == "F32" and a["shape"] == [8, H]
    e.export_peft(tmp_path / "t0", module_format="model.layers.%u.mlp.down_proj", tenant=0,
                  micro_layer=3)
    raw = (tmp_path / "t0" / "adapter_model.safetensors").read_bytes()
    assert b"model.layers.3.mlp.down_proj.lora_B.weight" in raw
    with pytest.raises(sona.SizeError):
        e.export_peft(tmp_path / "w", model_hidden=H + 1)
    with pytest.raises(sona.NotFoundError, match="tenant 60"):
        e.export_peft(tmp_path / "w", tenant=60)
    e.close()


def test_stats_fields_and_flags():
    with sona.Engine(H, background_thread=False) as e:
        s = e.stats()
        assert s.tenants == 1 and s.trajectories_in_cycle == 0
        assert e.device is None or isinstance(e.device, str)
        e.enabled = False
        assert not e.enabled
        with e.request(0, rows(1)[0]) as r:
            r.step(0, rows(1)[0], reward=1.0)
            r.quality = 1.0
        assert e.stats().trajectories_recorded == 0  # learning off: not recorded
        e.enabled = True
        e.tick()
        e.flush()
        e.deep_cycle()


# ---- threads ------------------------------------------------------------------------------------------

def test_two_threads_apply_while_a_third_records():
    e, _ = learned_engine(tenants=2, n=20)
    x = rows(32)
    errors = []
    stop = threading.Event()

    def applier(t):
        try:
            while not stop.is_set():
                y = e.apply_batch(x, t)
                assert y.shape == x.shape and np.all(np.isfinite(y))
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    def recorder():
        try:
            SynthTask(H, seed=9).run(e, 200, np.random.default_rng(4), tenant=1)
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)
        finally:
            stop.set()

    threads = [threading.Thread(target=applier, args=(t,)) for t in (0, 1)]
    threads.append(threading.Thread(target=recorder))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert e.stats().trajectories_recorded == 40 + 200
    e.close()


def test_finalizers_abandon_and_close():
    import gc
    e = sona.Engine(H, background_thread=False)
    r = e.request(0, rows(1)[0])
    r.step(0, rows(1)[0], reward=0.5)
    del r  # dropped open: abandoned, nothing recorded
    gc.collect()
    assert e.stats().trajectories_recorded == 0
    assert len(e._requests) == 0
    e.request(0, rows(1)[0])  # left open, then the engine dropped with it
    del e
    gc.collect()
    # An engine never closed, with a request open, at interpreter exit: no crash.
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, %r); import numpy as np, sona; "
            "e = sona.Engine(8, background_thread=False); "
            "r = e.request(0, np.ones(8, np.float32)); print('ok')"
            % os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_results_and_sona_empty_are_64_byte_aligned():
    with sona.Engine(64, background_thread=False) as e:
        x = np.ones((5, 64), np.float32)
        assert e.apply_batch(x, 0).ctypes.data % 64 == 0
        assert e.apply(x[0]).ctypes.data % 64 == 0
    a = sona.empty((3, 7))
    assert a.shape == (3, 7) and a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % 64 == 0
