// SPDX-License-Identifier: MIT
// One engine used from worker threads at once: share() on the main thread, attach(token) in
// each worker; trajectories and applies run in parallel (libsona's calls are thread-safe) and
// every trajectory is accounted for.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const { SonaEngine } = require('..');
const { SynthTask, rng } = require('../support/synth_task.js');

const H = 32;
const root = path.join(__dirname, '..');

// Each worker attaches, records `count` trajectories on its own tenant or tenant 0, applies,
// tries a few bad calls, and reports what it did.
const workerSource = `
const { workerData, parentPort } = require('node:worker_threads');
const { SonaEngine } = require(workerData.root);
const { SynthTask, rng } = require(workerData.root + '/support/synth_task.js');
const e = SonaEngine.attach(workerData.token);
const task = new SynthTask(e.hiddenDim, { seed: 1 });
const r = rng(100 + workerData.index);
let applied = 0, refused = 0;
for (let i = 0; i < workerData.count; i++) {
  task.lastQuery = task.query(r);
  const y = e.applyMicroLora(task.lastQuery.x, workerData.tenant);
  applied++;
  const { x, steps, rewards, quality } = task.request(y, r);
  const id = e.beginTrajectory(x, workerData.tenant);
  steps.forEach((s, k) => e.addTrajectoryStep(id, s, null, rewards[k]));
  try { e.addTrajectoryStep(id, new Float32Array(3), null, 0.5); } catch (err) { refused++; }
  e.endTrajectory(id, quality);
  e.applyBaseLora(i % 12, x);
}
const ids = [];
for (let i = 0; i < 5; i++) ids.push(e.beginTrajectory(task.centers[0], workerData.tenant));
parentPort.postMessage({ applied, refused, leftOpen: ids });
e.close();
`;

function runWorker(token, index, tenant, count) {
  return new Promise((resolve, reject) => {
    const w = new Worker(workerSource, { eval: true, workerData: { root, token, index, tenant, count } });
    let result;
    w.on('message', (m) => { result = m; });
    w.on('error', reject);
    w.on('exit', (code) => (code === 0 ? resolve(result) : reject(new Error(`worker exit ${code}`))));
  });
}

test('four workers record and apply on one shared engine at once', async () => {
  const e = new SonaEngine(H); // the default: loop B in the engine's thread meanwhile
  const token = e.share();
  assert.equal(e.share(), token, 'one token per engine');
  const tenants = [0, e.createTenant(), e.createTenant(), 0];
  const count = 300;
  const results = await Promise.all(tenants.map((t, i) => runWorker(token, i, t, count)));
  // The main thread kept the event loop and the engine: it can still use both.
  const task = new SynthTask(H, { seed: 1 });
  assert.equal(e.applyMicroLora(task.centers[0]).length, H);
  for (const r of results) {
    assert.equal(r.applied, count);
    assert.equal(r.refused, count, 'every bad step was refused in its worker');
  }
  const s = e.stats();
  assert.equal(s.signalsAccepted + s.signalsRejected, 4 * count);
  assert.equal(s.signalsRejected, 0);
  assert.equal(s.trajectoriesRecorded + s.trajectoriesDropped, 4 * count);
  // The trajectories the workers left open are the engine's, visible and endable from here.
  assert.equal(s.openTrajectories, 20);
  const ids = results.flatMap((r) => r.leftOpen);
  assert.equal(new Set(ids).size, 20, 'ids are unique across threads');
  for (const id of ids) e.abandonTrajectory(id);
  assert.equal(e.stats().openTrajectories, 0);
  // Every tenant learned from its own traffic.
  const x = task.centers[0];
  for (const t of new Set(tenants)) assert.ok(e.applyMicroLora(x, t).some((v, i) => v !== x[i]), `tenant ${t}`);
  e.close();
});

test('the engine lives while any thread holds it', async () => {
  const e = new SonaEngine(H);
  const token = e.share();
  const other = SonaEngine.attach(token); // as a worker would
  e.close();
  const result = await runWorker(token, 9, 0, 20);
  assert.equal(result.applied, 20);
  assert.equal(other.stats().trajectoriesRecorded + other.stats().trajectoriesDropped, 20);
  other.close();
  assert.throws(() => SonaEngine.attach(token), { code: 'SONA_E_NOT_FOUND' });
});

test('one trajectory stepped from two threads is refused, not raced', async () => {
  // A worker steps trajectory id in a tight loop while the main thread ends it: either the end
  // wins (the worker then gets SONA_E_NOT_FOUND) or it meets a busy trajectory (SONA_E_STATE).
  const e = SonaEngine.withConfig({ hiddenDim: H, background_thread: false, max_steps: 4 });
  const id = e.beginTrajectory(new Float32Array(H).fill(0.1));
  const source = `
    const { workerData, parentPort } = require('node:worker_threads');
    const { SonaEngine } = require(workerData.root);
    const e = SonaEngine.attach(workerData.token);
    const a = new Float32Array(e.hiddenDim).fill(0.2);
    parentPort.postMessage('ready');
    let code = null;
    for (let i = 0; i < 1e6 && code === null; i++) {
      try { e.addTrajectoryStep(workerData.id, a, null, 0.5); } catch (err) { code = err.code; }
    }
    parentPort.postMessage(code);
    e.close();`;
  const w = new Worker(source, { eval: true, workerData: { root, token: e.share(), id } });
  const codes = [];
  const done = new Promise((resolve, reject) => {
    w.on('message', (m) => {
      if (m === 'ready') {
        for (;;) {
          try { e.endTrajectory(id, 0.5); break; } catch (err) { codes.push(err.code); }
        }
      } else {
        resolve(m);
      }
    });
    w.on('error', reject);
  });
  const workerCode = await done;
  assert.equal(workerCode, 'SONA_E_NOT_FOUND', 'after the end, the id is gone for the worker');
  assert.ok(codes.every((c) => c === 'SONA_E_STATE'), `main thread saw ${[...new Set(codes)]}`);
  assert.equal(e.stats().trajectoriesRecorded, 1);
  e.close();
});
