// SPDX-License-Identifier: MIT
// The README's Node example, run by the tests (ctest example_node): a request recorded and
// learned from, with the @ruvector/sona method names.
'use strict';
const path = require('path');
const { SonaEngine } = require(path.join(__dirname, '..', '..', 'node')); // SONA_NODE_ADDON=... to choose the addon
const engine = new SonaEngine(256);                 // the default preset
const x = new Float32Array(256).fill(0.1);
const id = engine.beginTrajectory(x);
engine.addTrajectoryStep(id, engine.applyMicroLora(x), null, 0.8);  // activations, attention, reward
engine.endTrajectory(id, 0.8);                      // quality: learned from in the background
const recorded = engine.stats().trajectoriesRecorded;
console.log(recorded);                              // 1
if (recorded !== 1) {
  throw new Error(`expected one recorded trajectory, got ${recorded}`);
}
