// SPDX-License-Identifier: MIT
// Bad input throws a JS exception with libsona's message (never a crash), and changes nothing:
// every counter, every adapter's output, the open trajectories and the patterns read back the
// same after each refused call. @ruvector/sona 0.1.8 crashed Node on a wrong-length input and
// ignored unknown trajectory ids.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { SonaEngine } = require('..');
const { SynthTask, rng } = require('../support/synth_task.js');

const H = 16;

// A populated engine: learned adapters, patterns, one open trajectory with a step.
function world() {
  const e = SonaEngine.withConfig({ hiddenDim: H, background_thread: false, micro_apply_every: 1 });
  const task = new SynthTask(H, { seed: 1 });
  task.run(e, 40, rng(2));
  e.forceLearn();
  task.run(e, 10, rng(3)); // queued for the next cycle
  const open = e.beginTrajectory(task.centers[0]);
  e.addTrajectoryStep(open, task.targets[0], null, 0.7);
  const probes = task.queries(4, rng(4)).map((q) => q.x);
  return { e, open, probes, task };
}

// Everything observable, timing fields aside.
function snapshot({ e, probes, task }) {
  const stats = e.stats();
  delete stats.lastLoopBUs;
  delete stats.lastLoopCUs;
  const base = e.getConfig().base_layers;
  return {
    stats,
    micro: probes.map((x) => Array.from(e.applyMicroLora(x))),
    layers: probes.slice(0, 1).flatMap((x) => Array.from({ length: base }, (_, l) => Array.from(e.applyBaseLora(l, x)))),
    patterns: e.findPatterns(task.centers[1], 100).map((p) => [p.id, p.clusterSize, p.avgQuality, p.centroid]),
  };
}

const nan = () => { const v = new Float32Array(H).fill(0.5); v[3] = NaN; return v; };
const inf = () => { const v = new Float32Array(H).fill(0.5); v[5] = -Infinity; return v; };
const good = () => new Float32Array(H).fill(0.25);

// [what, call(w) that must throw, the error it must match]
const refused = [
  ['applyMicroLora: short Float32Array', (w) => w.e.applyMicroLora(new Float32Array(H - 1)), { name: 'RangeError', code: 'SONA_E_SIZE', message: /15 values.*width \(hiddenDim\) is 16/ }],
  ['applyMicroLora: long plain array', (w) => w.e.applyMicroLora(new Array(H + 1).fill(0)), { code: 'SONA_E_SIZE' }],
  ['applyMicroLora: empty array', (w) => w.e.applyMicroLora([]), { code: 'SONA_E_SIZE' }],
  ['applyMicroLora: NaN', (w) => w.e.applyMicroLora(nan()), { code: 'SONA_E_NONFINITE', message: /NaN or Inf/ }],
  ['applyMicroLora: Inf in a plain array', (w) => w.e.applyMicroLora(Array.from(inf())), { code: 'SONA_E_NONFINITE' }],
  ['applyMicroLora: a string element', (w) => w.e.applyMicroLora(Array.from({ length: H }, (_, i) => (i === 2 ? '1' : 1))), { name: 'TypeError', message: /element 2 is not a number/ }],
  ['applyMicroLora: not an array', (w) => w.e.applyMicroLora('x'), { name: 'TypeError' }],
  ['applyMicroLora: Int32Array', (w) => w.e.applyMicroLora(new Int32Array(H)), { name: 'TypeError' }],
  ['applyMicroLora: unknown tenant', (w) => w.e.applyMicroLora(good(), 5), { code: 'SONA_E_NOT_FOUND', message: /tenant/ }],
  ['applyMicroLora: fractional tenant', (w) => w.e.applyMicroLora(good(), 0.5), { name: 'RangeError' }],
  ['applyMicroLora: out of the wrong length', (w) => w.e.applyMicroLora(good(), 0, new Float32Array(3)), { code: 'SONA_E_SIZE' }],
  ['applyMicroLora: out overlapping the input', (w) => { const b = new Float32Array(2 * H); return w.e.applyMicroLora(b.subarray(0, H), 0, b.subarray(1, H + 1)); }, { code: 'SONA_E_INVALID', message: /overlaps/ }],
  ['applyBaseLora: out overlapping the input', (w) => { const b = new Float32Array(2 * H); return w.e.applyBaseLora(0, b.subarray(3, H + 3), b.subarray(0, H)); }, { code: 'SONA_E_INVALID', message: /overlaps/ }],
  ['applyMicroLora: out not a Float32Array', (w) => w.e.applyMicroLora(good(), 0, []), { name: 'TypeError' }],
  ['applyBaseLora: layer out of range', (w) => w.e.applyBaseLora(12, good()), { code: 'SONA_E_INVALID', message: /layerIdx 12/ }],
  ['applyBaseLora: negative layer', (w) => w.e.applyBaseLora(-1, good()), { name: 'RangeError' }],
  ['applyBaseLora: wrong length', (w) => w.e.applyBaseLora(0, new Float32Array(2)), { code: 'SONA_E_SIZE' }],
  ['applyBaseLora: NaN', (w) => w.e.applyBaseLora(0, nan()), { code: 'SONA_E_NONFINITE' }],
  ['beginTrajectory: wrong length', (w) => w.e.beginTrajectory([1, 2, 3]), { code: 'SONA_E_SIZE' }],
  ['beginTrajectory: NaN query', (w) => w.e.beginTrajectory(nan()), { code: 'SONA_E_NONFINITE' }],
  ['beginTrajectory: unknown tenant', (w) => w.e.beginTrajectory(good(), 9), { code: 'SONA_E_NOT_FOUND', message: /no tenant 9/ }],
  ['addTrajectoryStep: unknown id', (w) => w.e.addTrajectoryStep(12345, good(), [], 0.5), { code: 'SONA_E_NOT_FOUND', message: /no trajectory 12345/ }],
  ['addTrajectoryStep: negative id', (w) => w.e.addTrajectoryStep(-1, good(), [], 0.5), { name: 'RangeError' }],
  ['addTrajectoryStep: id not a number', (w) => w.e.addTrajectoryStep('0', good(), [], 0.5), { name: 'TypeError' }],
  ['addTrajectoryStep: wrong length', (w) => w.e.addTrajectoryStep(w.open, new Float32Array(H * 2), [], 0.5), { code: 'SONA_E_SIZE' }],
  ['addTrajectoryStep: NaN activations', (w) => w.e.addTrajectoryStep(w.open, nan(), [], 0.5), { code: 'SONA_E_NONFINITE' }],
  ['addTrajectoryStep: Inf attention', (w) => w.e.addTrajectoryStep(w.open, good(), [1, Infinity], 0.5), { code: 'SONA_E_NONFINITE', message: /attentionWeights/ }],
  ['addTrajectoryStep: NaN reward', (w) => w.e.addTrajectoryStep(w.open, good(), [], NaN), { code: 'SONA_E_NONFINITE', message: /reward/ }],
  ['addTrajectoryStep: reward not a number', (w) => w.e.addTrajectoryStep(w.open, good(), [], '0.5'), { name: 'TypeError' }],
  ['setTrajectoryRoute: unknown id', (w) => w.e.setTrajectoryRoute(777, 'r'), { code: 'SONA_E_NOT_FOUND' }],
  ['setTrajectoryRoute: route not a string', (w) => w.e.setTrajectoryRoute(w.open, 3), { name: 'TypeError' }],
  ['addTrajectoryContext: unknown id', (w) => w.e.addTrajectoryContext(777, 'c'), { code: 'SONA_E_NOT_FOUND' }],
  ['endTrajectory: unknown id', (w) => w.e.endTrajectory(4242, 0.5), { code: 'SONA_E_NOT_FOUND', message: /no trajectory 4242/ }],
  ['endTrajectory: NaN quality', (w) => w.e.endTrajectory(w.open, NaN), { code: 'SONA_E_NONFINITE', message: /quality/ }],
  ['endTrajectory: quality beyond float', (w) => w.e.endTrajectory(w.open, 1e300), { code: 'SONA_E_NONFINITE' }],
  ['abandonTrajectory: unknown id', (w) => w.e.abandonTrajectory(99), { code: 'SONA_E_NOT_FOUND' }],
  ['findPatterns: NaN query', (w) => w.e.findPatterns(nan(), 3), { code: 'SONA_E_NONFINITE' }],
  ['findPatterns: wrong length', (w) => w.e.findPatterns([1], 3), { code: 'SONA_E_SIZE' }],
  ['findPatterns: negative k', (w) => w.e.findPatterns(good(), -2), { name: 'RangeError' }],
  ['setEnabled: not a boolean', (w) => w.e.setEnabled(1), { name: 'TypeError' }],
  ['removeTenant: tenant 0', (w) => w.e.removeTenant(0), { code: 'SONA_E_INVALID' }],
  ['removeTenant: unknown', (w) => w.e.removeTenant(30), { code: 'SONA_E_NOT_FOUND' }],
  ['load: trajectories are open', (w) => w.e.load('/nonexistent/state'), { code: 'SONA_E_STATE', message: /1 trajectory\(ies\) open/ }],
  ['save: unwritable path', (w) => w.e.save('/nonexistent-dir/x.state'), { code: 'SONA_E_IO' }],
  ['exportPeft: bad module format', (w) => w.e.exportPeft('/tmp/sona-node-peft-bad', { moduleFormat: 'layers.%s' }), { code: 'SONA_E_INVALID' }],
  ['a method called on another object', (w) => SonaEngine.prototype.stats.call({}), { name: 'TypeError' }],
];

for (const [what, call, expected] of refused) {
  test(`refused, engine unchanged: ${what}`, () => {
    const w = world();
    const before = snapshot(w);
    assert.throws(() => call(w), expected);
    assert.deepEqual(snapshot(w), before);
    // The open trajectory is still whole: it ends and is learned from.
    w.e.endTrajectory(w.open, 0.6);
    const s = w.e.stats();
    assert.equal(s.trajectoriesRecorded, before.stats.trajectoriesRecorded + 1);
    assert.equal(s.signalsRejected, before.stats.signalsRejected);
    w.e.close();
  });
}

test('bad configurations throw with libsona\'s message', () => {
  assert.throws(() => new SonaEngine(0), { code: 'SONA_E_INVALID' });
  assert.throws(() => new SonaEngine(-3), { name: 'RangeError' });
  assert.throws(() => new SonaEngine('64'), { name: 'TypeError' });
  assert.throws(() => SonaEngine(16), { name: 'TypeError', message: /new SonaEngine/ });
  assert.throws(() => SonaEngine.withConfig({}), { name: 'TypeError', message: /hiddenDim is required/ });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, embeddingDim: 16 }), { code: 'SONA_E_SIZE', message: /embeddingDim 16 differs/ });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, microLoraRnak: 1 }), { code: 'SONA_E_NOT_FOUND', message: /unknown option "microLoraRnak"/ });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, microLoraLr: NaN }), { code: 'SONA_E_NONFINITE' });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, microLoraRank: 0 }), { code: 'SONA_E_INVALID', message: /ranks/ });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, trajectoryCapacity: 1.5 }), { code: 'SONA_E_INVALID' });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, enableSimd: 'yes' }), { name: 'TypeError' });
  assert.throws(() => SonaEngine.withConfig({ hiddenDim: 8, preset: 'fast' }), { message: /unknown preset "fast"/ });
  assert.throws(() => SonaEngine.withConfig(null), { name: 'TypeError' });
  assert.throws(() => SonaEngine.attach(123456789), { code: 'SONA_E_NOT_FOUND' });
});

test('a refused load of a corrupt file keeps the engine', (t) => {
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sona-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const w = world();
  w.e.abandonTrajectory(w.open);
  const file = path.join(dir, 'bad.state');
  fs.writeFileSync(file, Buffer.from('not a libsona state file at all, but long enough to read'));
  const before = snapshot(w);
  assert.throws(() => w.e.load(file), { code: /SONA_E_(CORRUPT|VERSION)/ });
  assert.throws(() => w.e.load(path.join(dir, 'missing.state')), { code: 'SONA_E_IO' });
  assert.deepEqual(snapshot(w), before);
  w.e.close();
});
