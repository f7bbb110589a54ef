// SPDX-License-Identifier: MIT
// Every method of SonaEngine: @ruvector/sona 0.1.8's surface, then libsona's additions.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const sona = require('..');
const { SonaEngine } = sona;
const { SynthTask, rng } = require('../support/synth_task.js');

const H = 16;

function vec(seed, n = H) {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r.normal());
}

// An engine without the background thread, so that the test decides when loop B runs.
function quietEngine(extra = {}) {
  return SonaEngine.withConfig({ hiddenDim: H, background_thread: false, ...extra });
}

test('the module exports SonaEngine, version, defaultConfig, stateConfig', () => {
  assert.equal(typeof SonaEngine, 'function');
  assert.match(sona.version, /^\d+\.\d+\.\d+$/);
  assert.equal(typeof sona.addonPath, 'string');
  const cfg = sona.defaultConfig(64);
  assert.equal(cfg.hidden, 64);
  assert.equal(cfg.micro_rank, 4);
  assert.equal(sona.defaultConfig(64, 'edge').background_thread, 0);
});

test('new SonaEngine(hiddenDim) gives the default preset', () => {
  const e = new SonaEngine(H);
  assert.equal(e.hiddenDim, H);
  const cfg = e.getConfig();
  assert.deepEqual(cfg, sona.defaultConfig(H));
  assert.equal(e.isEnabled(), true);
  e.close();
});

test('withConfig maps @ruvector/sona fields to libsona fields', () => {
  const e = SonaEngine.withConfig({
    hiddenDim: H, embeddingDim: H, microLoraRank: 1, baseLoraRank: 4, microLoraLr: 0.3,
    baseLoraLr: 0.05, ewcLambda: 0.5, patternClusters: 10, trajectoryCapacity: 500,
    backgroundIntervalMs: 1000, qualityThreshold: 0.4, enableSimd: false,
  });
  const c = e.getConfig();
  assert.equal(c.hidden, H);
  assert.equal(c.micro_rank, 1);
  assert.equal(c.micro_alpha, 2, 'alpha follows the rank as in the presets');
  assert.equal(c.base_rank, 4);
  assert.equal(c.base_alpha, 8);
  assert.ok(Math.abs(c.micro_learning_rate - 0.3) < 1e-6);
  assert.ok(Math.abs(c.base_learning_rate - 0.05) < 1e-6);
  assert.ok(Math.abs(c.ewc_lambda - 0.5) < 1e-6);
  assert.equal(c.clusters_per_cycle, 10);
  assert.equal(c.buffer_capacity, 500);
  assert.equal(c.loop_b_interval_ms, 1000);
  e.close();
});

test('withConfig also takes libsona fields by C name and a preset', () => {
  const e = SonaEngine.withConfig({ hiddenDim: H, preset: 'max_quality', seed: 9, background_thread: false,
                                    micro_alpha: 3, microLoraRank: 1, microLoraLr: undefined });
  const c = e.getConfig();
  assert.equal(c.base_rank, 16, 'the max_quality preset');
  assert.equal(c.seed, 9);
  assert.equal(c.background_thread, 0);
  assert.equal(c.micro_alpha, 3, 'an explicit alpha is kept');
  assert.ok(Math.abs(c.micro_learning_rate - 0.1) < 1e-6, 'undefined means not given');
  e.close();
});

test('a trajectory: begin, steps, route, context, end', () => {
  const e = quietEngine();
  const a = e.beginTrajectory(vec(1));
  const b = e.beginTrajectory(Array.from(vec(2)));
  assert.equal(a, 0, 'ids start at 0 as in @ruvector/sona');
  assert.equal(b, 1);
  assert.equal(e.stats().openTrajectories, 2);
  e.addTrajectoryStep(a, vec(3), new Float32Array([0.5, 0.5]), 0.2);
  e.addTrajectoryStep(a, Array.from(vec(4)), [], 0.9);
  e.addTrajectoryStep(a, vec(5), null, 0.5, 7); // an explicit layer
  e.setTrajectoryRoute(a, 'gpt-small');
  e.addTrajectoryContext(a, 'ctx-1');
  e.endTrajectory(a, 0.8);
  e.abandonTrajectory(b);
  const s = e.stats();
  assert.equal(s.openTrajectories, 0);
  assert.equal(s.trajectoriesRecorded, 1, 'the abandoned one is not recorded');
  assert.equal(s.signalsAccepted, 1);
  assert.throws(() => e.endTrajectory(a, 0.5), { code: 'SONA_E_NOT_FOUND' });
  e.close();
});

test('applyMicroLora: Float32Array in place, plain arrays, out, tenants', () => {
  const e = quietEngine();
  const x = vec(10);
  const y = e.applyMicroLora(x);
  assert.ok(y instanceof Float32Array);
  assert.notEqual(y, x);
  assert.deepEqual(Array.from(y), Array.from(x), 'a new adapter is the identity');
  const arr = e.applyMicroLora(Array.from(x));
  assert.ok(Array.isArray(arr));
  assert.deepEqual(arr, Array.from(y), 'an Array in gives the same values as a Float32Array');
  const out = new Float32Array(H);
  assert.equal(e.applyMicroLora(x, 0, out), out);
  assert.equal(e.applyMicroLora(new Float64Array(x), -1).length, H, 'Float64Array, tenant -1 (none)');
  // Learn on tenant 1 only: tenant 0 stays the identity, tenant 1 moves.
  const t1 = e.createTenant();
  assert.equal(t1, 1);
  const task = new SynthTask(H, { seed: 3 });
  const r = rng(4);
  for (let i = 0; i < 50; i++) {
    task.lastQuery = task.query(r);
    const q = task.lastQuery.x;
    const { steps, rewards, quality } = task.request(e.applyMicroLora(q, t1), r);
    const id = e.beginTrajectory(q, t1);
    steps.forEach((s, k) => e.addTrajectoryStep(id, s, null, rewards[k]));
    e.endTrajectory(id, quality);
  }
  assert.deepEqual(Array.from(e.applyMicroLora(x, 0)), Array.from(x));
  const moved = e.applyMicroLora(x, t1);
  assert.ok(moved.some((v, i) => v !== x[i]), 'tenant 1 learned');
  assert.deepEqual(e.applyMicroLora(Array.from(x), t1), Array.from(moved), 'plain Arrays: the same values');
  const movedOut = new Float32Array(H);
  assert.equal(e.applyMicroLora(Array.from(x), t1, movedOut), movedOut, 'an Array with out fills out');
  assert.deepEqual(movedOut, moved);
  // In place: out is the input.
  const inPlace = Float32Array.from(x);
  e.applyMicroLora(inPlace, t1, inPlace);
  assert.deepEqual(Array.from(inPlace), Array.from(moved));
  e.removeTenant(t1);
  assert.throws(() => e.applyMicroLora(x, t1), { code: 'SONA_E_NOT_FOUND' });
  assert.equal(e.stats().tenants, 1);
  e.close();
});

test('applyBaseLora per layer, with out', () => {
  const e = quietEngine();
  const x = vec(11);
  const base = e.getConfig().base_layers;
  for (let l = 0; l < base; l++) assert.deepEqual(Array.from(e.applyBaseLora(l, x)), Array.from(x));
  const out = new Float32Array(H);
  assert.equal(e.applyBaseLora(0, x, out), out);
  assert.deepEqual(e.applyBaseLora(1, Array.from(x)), Array.from(e.applyBaseLora(1, x)));
  assert.throws(() => e.applyBaseLora(base, x), { name: 'RangeError', code: 'SONA_E_INVALID' });
  e.close();
});

test('tick, forceLearn, flush, deepCycle, findPatterns, getStats', () => {
  const e = quietEngine({ micro_apply_every: 4 });
  assert.equal(e.tick(), null, 'nothing due');
  const task = new SynthTask(H, { seed: 12 });
  task.run(e, 30, rng(13));
  let s = e.stats();
  assert.equal(s.signalsAccepted, 30);
  assert.equal(s.microUpdates, 7, 'applied every 4 signals: 28 of 30');
  e.flush();
  assert.equal(e.stats().microUpdates, 8, 'flush applies the pending 2');
  assert.match(e.forceLearn(), /^Forced learning: 30 trajectories -> \d+ patterns, status: completed$/);
  s = e.stats();
  assert.equal(s.trajectoriesProcessed, 30);
  assert.equal(s.loopBCycles, 1);
  assert.ok(s.patterns > 0);
  const q = task.centers[0];
  const found = e.findPatterns(q, 3);
  assert.ok(found.length > 0 && found.length <= 3);
  const p = found[0];
  for (const key of ['id', 'centroid', 'clusterSize', 'totalWeight', 'avgQuality', 'createdAt',
                     'lastAccessed', 'accessCount', 'patternType'])
    assert.ok(key in p, `pattern field ${key}`);
  assert.equal(typeof p.id, 'string');
  assert.equal(p.centroid.length, H);
  assert.ok(p.clusterSize >= 1 && p.accessCount >= 1);
  assert.ok(Math.abs(Number(p.createdAt) - Date.now() / 1000) < 600, 'Unix seconds');
  assert.ok(p.similarity > 0.5, 'the best hit is near its cluster centre');
  for (let i = 1; i < found.length; i++) assert.ok(found[i - 1].similarity >= found[i].similarity);
  assert.deepEqual(e.findPatterns(q, 0), []);
  e.deepCycle();
  assert.equal(e.stats().loopCCycles, 1);
  const json = JSON.parse(e.getStats());
  assert.equal(json.trajectories_recorded, 30);
  assert.equal(json.trajectories_buffered, 0);
  assert.equal(json.patterns_stored, e.stats().patterns);
  assert.equal(json.instant_enabled, true);
  assert.equal(json.background_enabled, false, 'no background thread in this engine');
  assert.equal(json.loop_b_cycles, 1);
  e.close();
});

test('tick runs a due cycle and says so', () => {
  const e = quietEngine({ loop_b_threshold: 20, loop_b_min_batch: 1 });
  new SynthTask(H, { seed: 14 }).run(e, 25, rng(15));
  assert.match(e.tick(), /^Learning cycle: 25 trajectories/);
  assert.equal(e.tick(), null);
  e.close();
});

test('setEnabled(false): applied, not recorded', () => {
  const e = quietEngine();
  e.setEnabled(false);
  assert.equal(e.isEnabled(), false);
  const id = e.beginTrajectory(vec(20));
  e.addTrajectoryStep(id, vec(21), [], 0.5);
  e.endTrajectory(id, 0.5);
  assert.equal(e.stats().trajectoriesRecorded, 0);
  assert.equal(JSON.parse(e.getStats()).instant_enabled, false);
  e.setEnabled(true);
  assert.equal(e.isEnabled(), true);
  e.close();
});

test('close: later calls throw, close twice is harmless', () => {
  const e = new SonaEngine(H);
  e.close();
  e.close();
  assert.throws(() => e.applyMicroLora(vec(1)), { code: 'SONA_E_STATE', message: /closed/ });
  assert.throws(() => e.stats(), { code: 'SONA_E_STATE' });
});

test('device is null or a backend name', () => {
  const e = new SonaEngine(H);
  assert.ok(e.device === null || ['cuda', 'opencl'].includes(e.device));
  e.close();
});
