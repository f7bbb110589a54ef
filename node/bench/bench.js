// SPDX-License-Identifier: MIT
// Per-call times of the addon at width 4096 (the targets): applyMicroLora on a
// Float32Array (<= 2 us), and a recorded trajectory: begin, 4 steps of 4096, end (<= 20 us).
// Every call is timed alone (process.hrtime.bigint, whose own cost, about 0.05 us, is
// included); median and p99 over the timed calls, after a warm-up. The default engine
// (new SonaEngine(4096)), loop B in its own thread as a user has it. On a shared machine run it
// under the benchmark lock:  flock /tmp/sona-bench.lock node node/bench/bench.js
'use strict';
const { SonaEngine } = require('..');

const HIDDEN = Number(process.env.SONA_BENCH_HIDDEN || 4096);
const CALLS = Number(process.env.SONA_BENCH_CALLS || 20000);

function quantiles(ns) {
  const s = Float64Array.from(ns).sort();
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))] / 1000;
  return { median: at(0.5), p99: at(0.99), n: s.length };
}

// after(i), when given, runs after each timed call, untimed.
function timeEach(n, warm, fn, after) {
  for (let i = 0; i < warm; i++) fn(i);
  const ns = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    fn(i);
    ns[i] = Number(process.hrtime.bigint() - t0);
    if (after) after(i);
  }
  return quantiles(ns);
}

function vectors(n, seed) {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    const v = new Float32Array(HIDDEN);
    for (let i = 0; i < HIDDEN; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      v[i] = s / 4294967296 - 0.5;
    }
    return v;
  });
}

function main() {
  const engine = new SonaEngine(HIDDEN);
  const xs = vectors(16, 1);
  const out = new Float32Array(HIDDEN);
  // Learned adapters (not the identity) for the apply timings.
  for (let i = 0; i < 64; i++) {
    const id = engine.beginTrajectory(xs[i % 16]);
    for (let s = 0; s < 4; s++) engine.addTrajectoryStep(id, xs[(i + s + 1) % 16], null, (s + i) % 3 / 3);
    engine.endTrajectory(id, 0.5);
  }
  engine.flush();
  const rows = [];
  const report = (name, target, q) => {
    rows.push({ name, ...q, target });
    const verdict = target === undefined ? '' : q.median <= target ? '  meets' : '  MISSES';
    console.log(`${name.padEnd(60)} median ${q.median.toFixed(2).padStart(7)} us   p99 ${q.p99.toFixed(2).padStart(7)} us` +
                (target === undefined ? '' : `   target <= ${target} us${verdict}`));
  };
  console.log(`sona ${require('..').version}, node ${process.version}, width ${HIDDEN}, ${CALLS} timed calls each`);
  report('applyMicroLora(Float32Array) -> new Float32Array', 2,
         timeEach(CALLS, 2000, (i) => engine.applyMicroLora(xs[i & 15])));
  report('applyMicroLora(Float32Array, 0, out)', 2,
         timeEach(CALLS, 2000, (i) => engine.applyMicroLora(xs[i & 15], 0, out)));
  report('applyBaseLora(0, Float32Array, out)', undefined,
         timeEach(CALLS, 2000, (i) => engine.applyBaseLora(0, xs[i & 15], out)));
  const trajectory = (i) => {
    const id = engine.beginTrajectory(xs[i & 15]);
    engine.addTrajectoryStep(id, xs[(i + 1) & 15], null, 0.2);
    engine.addTrajectoryStep(id, xs[(i + 2) & 15], null, 0.4);
    engine.addTrajectoryStep(id, xs[(i + 3) & 15], null, 0.6);
    engine.addTrajectoryStep(id, xs[(i + 4) & 15], null, 0.8);
    engine.endTrajectory(id, 0.6);
  };
  // Back to back: loop A (about 13 us a trajectory at 4096, in libsona's loop A thread) can fall
  // behind, its queue fill and endTrajectory end inline: the worst case.
  report(`trajectory: begin, 4 steps of ${HIDDEN}, end (back to back)`, 20,
         timeEach(CALLS / 2, 1000, trajectory));
  engine.flush();
  // Paced as in serving, where a forward pass separates requests: 50 us of other work
  // (spinning) after each, not timed. Loop A then runs beside the event loop.
  const spin = (us) => { const end = process.hrtime.bigint() + BigInt(us * 1000); while (process.hrtime.bigint() < end); };
  report(`trajectory: begin, 4 steps of ${HIDDEN}, end (paced, 50 us apart)`, 20,
         timeEach(CALLS / 4, 500, trajectory, () => spin(50)));
  const plain = Array.from(xs[0]);
  report('applyMicroLora(plain Array) -> Array (compat path)', undefined,
         timeEach(2000, 200, () => engine.applyMicroLora(plain)));
  const s = engine.stats();
  console.log(`engine: ${s.trajectoriesRecorded} recorded, ${s.trajectoriesDropped} dropped, ${s.loopBCycles} loop B cycles`);
  engine.close();
  if (process.env.SONA_BENCH_JSON) require('fs').writeFileSync(process.env.SONA_BENCH_JSON, JSON.stringify(rows, null, 2));
}

main();
