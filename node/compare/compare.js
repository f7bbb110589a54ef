// SPDX-License-Identifier: MIT
// Side by side: the same synthetic traffic (support/synth_task.js, the C tests' task) through
// @ruvector/sona 0.1.8 and this addon, each at its defaults (new SonaEngine(hiddenDim)). Prints
// each one's learning curve (score on held-out queries every 100 trajectories: 0.5 is chance, 1
// every answer on target) and per-call times. Installs @ruvector/sona@0.1.8 into
// node/compare/node_modules with npm on first use (network needed then). A script, not a test:
//   node node/compare/compare.js [hiddenDim] [trajectories]
// Timings: on a shared machine run it under the benchmark lock (flock /tmp/sona-bench.lock).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { SynthTask, rng } = require('../support/synth_task.js');

const HIDDEN = Number(process.argv[2] || 256);
const TRAJECTORIES = Number(process.argv[3] || 1000);
const EVERY = 100;

function loadRuvector() {
  const dir = path.join(__dirname, 'node_modules', '@ruvector', 'sona');
  if (!fs.existsSync(path.join(dir, 'package.json'))) {
    console.log('installing @ruvector/sona@0.1.8 into node/compare/node_modules ...');
    execFileSync('npm', ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund',
                         '--prefix', __dirname, '@ruvector/sona@0.1.8'], { stdio: 'inherit' });
  }
  const version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  return { SonaEngine: require(dir).SonaEngine, version };
}

function median(ns) {
  const s = Float64Array.from(ns).sort();
  return s[s.length >> 1] / 1000;
}

function timeCalls(n, fn) {
  const ns = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    fn(i);
    ns.push(Number(process.hrtime.bigint() - t0));
  }
  return median(ns);
}

// One engine through the traffic: learning curve and timings. toInput converts the task's
// Float32Arrays into what the engine takes.
function run(name, engine, toInput) {
  const task = new SynthTask(HIDDEN, { seed: 42 });
  const held = task.queries(200, rng(43));
  const apply = (x) => engine.applyMicroLora(toInput(x));
  const curve = [task.score(apply, held)];
  const traffic = rng(44);
  for (let done = 0; done < TRAJECTORIES; done += EVERY) {
    task.run(engine, EVERY, traffic, toInput);
    curve.push(task.score(apply, held));
  }
  engine.forceLearn();
  const afterLoopB = task.score(apply, held);
  const x = toInput(held[0].x);
  const steps = [1, 2, 3, 4].map((k) => toInput(held[k].x));
  const none = toInput(new Float32Array(0));
  const times = {
    apply: timeCalls(2000, () => engine.applyMicroLora(x)),
    trajectory: timeCalls(1000, () => {
      const id = engine.beginTrajectory(x);
      for (const s of steps) engine.addTrajectoryStep(id, s, none, 0.5);
      engine.endTrajectory(id, 0.5);
    }),
    baseApply: timeCalls(2000, () => engine.applyBaseLora(0, x)),
  };
  return { name, curve, afterLoopB, times };
}

function main() {
  const ours = require('..');
  const results = [];
  let ruv = null;
  try {
    ruv = loadRuvector();
  } catch (err) {
    console.log(`@ruvector/sona could not be installed or loaded (${err.message}); libsona only`);
  }
  if (ruv) results.push(run(`@ruvector/sona ${ruv.version}`, new ruv.SonaEngine(HIDDEN), (v) => Array.from(v)));
  results.push(run(`sona ${ours.version} (plain Arrays)`, new ours.SonaEngine(HIDDEN), (v) => Array.from(v)));
  results.push(run(`sona ${ours.version} (Float32Array)`, new ours.SonaEngine(HIDDEN), (v) => v));

  console.log(`\nwidth ${HIDDEN}, ${TRAJECTORIES} trajectories of 4 steps (per-step rewards), 3 clusters; ` +
              `score = mean (1 + cos(applyMicroLora(x), target)) / 2 on 200 held-out queries`);
  const header = ['trajectories', ...results.map((r) => r.name)];
  console.log(header.map((h, i) => (i ? h.padStart(34) : h.padEnd(12))).join(''));
  for (let i = 0; i < results[0].curve.length; i++)
    console.log([String(i * EVERY).padEnd(12), ...results.map((r) => r.curve[i].toFixed(3).padStart(34))].join(''));
  console.log(['+forceLearn'.padEnd(12), ...results.map((r) => r.afterLoopB.toFixed(3).padStart(34))].join(''));
  console.log('\nmedian per call (us)');
  for (const key of ['apply', 'trajectory', 'baseApply']) {
    const label = { apply: 'applyMicroLora', trajectory: 'trajectory (begin, 4 steps, end)', baseApply: 'applyBaseLora(0)' }[key];
    console.log([label.padEnd(34), ...results.map((r) => r.times[key].toFixed(2).padStart(34))].join(''));
  }
}

main();
