// SPDX-License-Identifier: MIT
// Learning at the DEFAULT settings, as a user gets them from `new SonaEngine(hiddenDim)`: no
// tuned rate, loop B in the engine's thread. The task is tests/support/synth_task.c's; there
// (tests/test_engine_learning.c) 600 trajectories raised the mean score of 3 learners by 0.43
// to 0.51 over 40 seeds, and here by 0.44 to 0.49 (3 learners, width 67). The bars are the C and
// Python tests': a mean gain above 0.2 and every learner above 0.1 (no learning: 0 +- 0.02).
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { SonaEngine } = require('..');
const { SynthTask, rng } = require('../support/synth_task.js');

const HIDDEN = 67;

test('per-step rewards raise the score at the default settings', () => {
  const gains = [];
  for (let replicate = 0; replicate < 3; replicate++) {
    const task = new SynthTask(HIDDEN, { seed: 100 + replicate });
    const held = task.queries(300, rng(300 + replicate));
    const engine = new SonaEngine(HIDDEN);
    const apply = (x) => engine.applyMicroLora(x);
    const before = task.score(apply, held);
    task.run(engine, 600, rng(200 + replicate));
    const after = task.score(apply, held);
    const s = engine.stats();
    assert.equal(s.signalsAccepted + s.signalsRejected, 600);
    assert.equal(s.microUpdates, s.signalsAccepted);
    assert.equal(s.trajectoriesRecorded + s.trajectoriesDropped, 600);
    engine.close();
    gains.push(after - before);
  }
  const mean = gains.reduce((a, b) => a + b) / gains.length;
  assert.ok(mean > 0.2, `mean gain ${mean.toFixed(3)} (${gains.map((g) => g.toFixed(3))})`);
  assert.ok(Math.min(...gains) > 0.1, `gains ${gains.map((g) => g.toFixed(3))}`);
});

// @ruvector/sona 0.1.8's applyMicroLora returned its input unchanged after 200 trajectories:
// here the adapter has moved, and toward the rewarded targets, by then.
test('applyMicroLora changes its output within 200 trajectories, plain arrays too', () => {
  const task = new SynthTask(32, { seed: 5 });
  const held = task.queries(100, rng(6));
  const engine = new SonaEngine(32);
  const asArray = (x) => engine.applyMicroLora(Array.from(x));
  const before = task.score(asArray, held);
  task.run(engine, 200, rng(7), (v) => Array.from(v));
  const x = Array.from(held[0].x);
  const y = engine.applyMicroLora(x);
  assert.ok(Array.isArray(y), 'a plain Array in gives a plain Array out');
  const moved = Math.sqrt(y.reduce((s, v, i) => s + (v - x[i]) ** 2, 0));
  assert.ok(moved > 1e-3, `|y - x| = ${moved}`);
  assert.ok(task.score(asArray, held) > before + 0.05, 'the change goes toward the targets');
  engine.close();
});

// Loop B trains Base-LoRA: after a forced cycle applyBaseLora is no longer the identity (in
// @ruvector/sona 0.1.8 it returned zeros).
test('applyBaseLora is the identity before learning and moves after a loop B cycle', () => {
  const task = new SynthTask(32, { seed: 8 });
  const engine = new SonaEngine(32);
  const x = task.queries(1, rng(9))[0].x;
  const same = engine.applyBaseLora(0, x);
  assert.deepEqual(Array.from(same), Array.from(x), 'a new Base-LoRA adds nothing');
  task.run(engine, 300, rng(10));
  engine.forceLearn();
  assert.ok(engine.stats().baseUpdates > 0);
  const y = engine.applyBaseLora(0, x);
  let moved = 0;
  for (let i = 0; i < x.length; i++) moved += (y[i] - x[i]) ** 2;
  assert.ok(Math.sqrt(moved) > 1e-4, `|y - x| = ${Math.sqrt(moved)}`);
  assert.ok(y.some((v) => v !== 0), 'not zeros');
  engine.close();
});
