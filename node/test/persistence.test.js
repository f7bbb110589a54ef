// SPDX-License-Identifier: MIT
// save/load round trip (sync and async), PEFT export, stateConfig, and the async variants
// leaving the event loop free.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const sona = require('..');
const { SonaEngine } = sona;
const { SynthTask, rng } = require('../support/synth_task.js');

const H = 24;

function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sona-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function trained(seed = 1) {
  const e = SonaEngine.withConfig({ hiddenDim: H, background_thread: false, seed: 3 });
  const task = new SynthTask(H, { seed });
  task.run(e, 80, rng(seed + 1));
  e.forceLearn();
  task.run(e, 12, rng(seed + 2)); // left queued: saved too
  return { e, task };
}

function outputs(e, task) {
  const qs = task.queries(5, rng(99)).map((q) => q.x);
  return {
    micro: qs.map((x) => Array.from(e.applyMicroLora(x))),
    base: qs.map((x) => Array.from(e.applyBaseLora(2, x))),
  };
}

function counters(e) {
  const s = e.stats();
  delete s.lastLoopBUs;
  delete s.lastLoopCUs;
  return s;
}

test('save then load into a fresh engine gives the same adapters and counters', (t) => {
  const dir = tempDir(t);
  const { e, task } = trained();
  const file = path.join(dir, 'engine.state');
  e.save(file);
  const fresh = SonaEngine.withConfig({ hiddenDim: H, background_thread: false, seed: 3 });
  assert.notDeepEqual(outputs(fresh, task), outputs(e, task), 'a fresh engine differs');
  fresh.load(file);
  assert.deepEqual(outputs(fresh, task), outputs(e, task));
  assert.deepEqual(counters(fresh), counters(e));
  assert.equal(fresh.stats().trajectoriesQueued, 12, 'the queue came back');
  // Both learn the same from here on.
  assert.equal(fresh.forceLearn(), e.forceLearn());
  assert.deepEqual(outputs(fresh, task), outputs(e, task));
  // stateConfig gives the saved configuration.
  const cfg = sona.stateConfig(file);
  assert.equal(cfg.hidden, H);
  assert.equal(cfg.seed, 3);
  e.close();
  fresh.close();
});

test('a file of another width is refused with SONA_E_SIZE', (t) => {
  const dir = tempDir(t);
  const { e } = trained();
  const file = path.join(dir, 'engine.state');
  e.save(file);
  const other = new SonaEngine(H + 1);
  assert.throws(() => other.load(file), { code: 'SONA_E_SIZE' });
  e.close();
  other.close();
});

test('saveAsync and loadAsync round trip; load refuses while a trajectory is open', async (t) => {
  const dir = tempDir(t);
  const { e, task } = trained(5);
  const file = path.join(dir, 'async.state');
  assert.equal(await e.saveAsync(file), undefined);
  const fresh = SonaEngine.withConfig({ hiddenDim: H, background_thread: false, seed: 3 });
  const id = fresh.beginTrajectory(task.centers[0]);
  assert.throws(() => fresh.loadAsync(file), { code: 'SONA_E_STATE', message: /open/ });
  fresh.abandonTrajectory(id);
  const loading = fresh.loadAsync(file);
  // Until the load's Promise settles no trajectory may begin (it would race with the load).
  assert.throws(() => fresh.beginTrajectory(task.centers[0]), { code: 'SONA_E_STATE', message: /load/ });
  assert.throws(() => fresh.load(file), { code: 'SONA_E_STATE', message: /another load/ });
  await loading;
  assert.deepEqual(outputs(fresh, task), outputs(e, task));
  await assert.rejects(fresh.loadAsync(path.join(dir, 'missing.state')), { code: 'SONA_E_IO' });
  await assert.rejects(e.saveAsync('/nonexistent-dir/x.state'), { code: 'SONA_E_IO' });
  fresh.beginTrajectory(task.centers[0]); // usable again after the loads
  e.close();
  fresh.close();
});

test('exportPeft writes a PEFT adapter directory, sync and async', async (t) => {
  const dir = tempDir(t);
  const { e } = trained(7);
  const base = path.join(dir, 'base');
  e.exportPeft(base, { baseModel: 'tiny-model' });
  const config = JSON.parse(fs.readFileSync(path.join(base, 'adapter_config.json'), 'utf8'));
  assert.equal(config.peft_type, 'LORA');
  assert.equal(config.r, e.getConfig().base_rank);
  assert.equal(config.base_model_name_or_path, 'tiny-model');
  assert.ok(fs.statSync(path.join(base, 'adapter_model.safetensors')).size > 0);
  const micro = path.join(dir, 'micro');
  await e.exportPeftAsync(micro, { tenant: 0, microLayer: 3, moduleFormat: 'model.layers.%u.mlp.down_proj' });
  const mc = JSON.parse(fs.readFileSync(path.join(micro, 'adapter_config.json'), 'utf8'));
  assert.equal(mc.r, e.getConfig().micro_rank);
  assert.deepEqual(mc.target_modules, ['down_proj']);
  await assert.rejects(e.exportPeftAsync(path.join(dir, 'm2'), { tenant: 0, modelHidden: H + 1 }), { code: 'SONA_E_SIZE' });
  e.close();
});

test('forceLearnAsync runs on the thread pool: the event loop keeps turning', async () => {
  const hidden = 256;
  const e = SonaEngine.withConfig({ hiddenDim: hidden, background_thread: false });
  new SynthTask(hidden, { seed: 11 }).run(e, 1500, rng(12));
  assert.equal(e.stats().trajectoriesQueued, 1500);
  let turns = 0;
  const spin = setInterval(() => { turns++; }, 0);
  const t0 = process.hrtime.bigint();
  const message = await e.forceLearnAsync();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  clearInterval(spin);
  assert.match(message, /^Forced learning: 1500 trajectories/);
  assert.equal(e.stats().trajectoriesProcessed, 1500);
  // The cycle took ms milliseconds off the event loop's thread; timers ran meanwhile.
  assert.ok(turns >= 1, `no timer ran during a ${ms.toFixed(1)} ms cycle`);
  if (process.env.SONA_NODE_VERBOSE) console.log(`forceLearnAsync: ${ms.toFixed(1)} ms, ${turns} timer turns`);
  e.close();
});

test('an async job keeps its engine alive past close()', async (t) => {
  const dir = tempDir(t);
  const { e } = trained(13);
  const saving = e.saveAsync(path.join(dir, 'late.state'));
  e.close();
  await saving;
  assert.ok(fs.statSync(path.join(dir, 'late.state')).size > 0);
});
