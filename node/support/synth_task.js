// SPDX-License-Identifier: MIT
// The synthetic task of tests/support/synth_task.c (and python/tests/helpers.py) for the Node
// tests, benchmark and comparison: queries from a few clusters, each with a hidden target
// direction; the "model" answers with the adapter's output y = applyMicroLora(x) and explores
// around it (4 steps, each normalize(y + 0.5 |y| g) |y|, reward (1 + cos(step, target)) / 2,
// quality the mean reward). An adapter's score is the mean (1 + cos(y, target)) / 2 over
// held-out queries: 0.5 is no better than chance, 1 is every answer on its target.
'use strict';

// A small seeded generator (sfc32, 32-bit arithmetic only), so that every
// run draws the same task and traffic.
function rng(seed) {
  let a = 0x9e3779b9 ^ seed, b = 0x243f6a88 + seed * 7, c = 0xb7e15162 - seed, d = 1;
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (a + b | 0) + d | 0;
    d = d + 1 | 0;
    a = b ^ b >>> 9;
    b = c + (c << 3) | 0;
    c = (c << 21 | c >>> 11);
    c = c + t | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 16; i++) next();
  let spare = null;
  return {
    uniform: next,
    below: (n) => Math.floor(next() * n),
    normal() { // Box-Muller, both values used
      if (spare !== null) { const s = spare; spare = null; return s; }
      const u = next() || 1e-12, v = next();
      const r = Math.sqrt(-2 * Math.log(u));
      spare = r * Math.sin(2 * Math.PI * v);
      return r * Math.cos(2 * Math.PI * v);
    },
  };
}

function norm(a) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

function cosine(a, b) {
  let ab = 0;
  for (let i = 0; i < a.length; i++) ab += a[i] * b[i];
  const d = norm(a) * norm(b);
  return d > 0 ? ab / d : 0;
}

function randomUnit(r, hidden) {
  const v = new Float32Array(hidden);
  for (let i = 0; i < hidden; i++) v[i] = r.normal();
  const n = norm(v);
  for (let i = 0; i < hidden; i++) v[i] /= n;
  return v;
}

class SynthTask {
  constructor(hidden, { clusters = 3, seed = 0, steps = 4, spread = 0.3, explore = 0.5 } = {}) {
    const r = rng(seed);
    this.hidden = hidden;
    this.steps = steps;
    this.spread = spread;
    this.explore = explore;
    this.centers = Array.from({ length: clusters }, () => randomUnit(r, hidden));
    this.targets = Array.from({ length: clusters }, () => randomUnit(r, hidden));
  }

  query(r) {
    const c = r.below(this.centers.length);
    const x = new Float32Array(this.hidden);
    const k = this.spread / Math.sqrt(this.hidden);
    for (let i = 0; i < this.hidden; i++) x[i] = this.centers[c][i] + k * r.normal();
    return { x, c };
  }

  queries(n, r) {
    return Array.from({ length: n }, () => this.query(r));
  }

  // apply(x) -> output vector (any engine's applyMicroLora, with its own argument types).
  score(apply, queries) {
    let sum = 0;
    for (const { x, c } of queries) sum += (1 + cosine(apply(x), this.targets[c])) / 2;
    return sum / queries.length;
  }

  // One request's traffic: the query, the explored steps and their rewards, the quality.
  request(y, r) {
    const { x, c } = this.lastQuery;
    const ny = norm(y);
    const steps = [], rewards = [];
    let quality = 0;
    for (let s = 0; s < this.steps; s++) {
      const a = new Float32Array(this.hidden);
      const k = this.explore * ny / Math.sqrt(this.hidden);
      for (let i = 0; i < this.hidden; i++) a[i] = y[i] + k * r.normal();
      const scale = ny / norm(a);
      for (let i = 0; i < this.hidden; i++) a[i] *= scale;
      const reward = (1 + cosine(a, this.targets[c])) / 2;
      steps.push(a);
      rewards.push(reward);
      quality += reward / this.steps;
    }
    return { x, steps, rewards, quality };
  }

  // n requests through an engine with @ruvector/sona's methods. toInput converts a Float32Array
  // to what that engine takes (identity for libsona; Array.from for @ruvector/sona).
  run(engine, n, r, toInput = (v) => v) {
    for (let i = 0; i < n; i++) {
      this.lastQuery = this.query(r);
      const y = engine.applyMicroLora(toInput(this.lastQuery.x));
      const { x, steps, rewards, quality } = this.request(y, r);
      const id = engine.beginTrajectory(toInput(x));
      for (let s = 0; s < steps.length; s++) engine.addTrajectoryStep(id, toInput(steps[s]), toInput(new Float32Array(0)), rewards[s]);
      engine.endTrajectory(id, quality);
    }
  }
}

module.exports = { SynthTask, rng, cosine, norm };
