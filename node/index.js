// SPDX-License-Identifier: MIT
// sona for Node.js: loads the addon sona.node (libsona linked in) and exports its SonaEngine,
// a drop-in for @ruvector/sona's (README.md).
'use strict';

const path = require('path');

// Where the addon is looked for: $SONA_NODE_ADDON alone when set (a test must not fall back
// to another build); else a copy beside this file (a packed or installed package), then the
// repository's build tree (node/ used in place).
function candidates() {
  if (process.env.SONA_NODE_ADDON) return [path.resolve(process.env.SONA_NODE_ADDON)];
  const list = [];
  list.push(path.join(__dirname, 'sona.node'));
  list.push(path.join(__dirname, '..', 'build', 'lib', 'sona.node'));
  return list;
}

function load() {
  const tried = [];
  for (const file of candidates()) {
    try {
      const addon = require(file);
      addon.addonPath = file;
      return addon;
    } catch (err) {
      tried.push(`  ${file}: ${err.code === 'MODULE_NOT_FOUND' ? 'not found' : err.message}`);
    }
  }
  throw new Error('sona: the addon sona.node could not be loaded. Build it (cmake -S . -B build ' +
    '&& cmake --build build) or set SONA_NODE_ADDON to its path. Tried:\n' + tried.join('\n'));
}

// Plain Arrays (what @ruvector/sona takes) are converted here, in one JIT-compiled loop, rather
// than by the addon, which can only read them one Node-API call per element (about 0.2 us each:
// 750 us for 4096 values, against 10 us here). An Array of the wrong length or holding
// anything but numbers goes to the addon as it is, so its error (and message) stay the same.
function floats(engine, v) {
  if (!Array.isArray(v) || v.length !== engine.hiddenDim) return v;
  const f = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (typeof x !== 'number') return v;
    f[i] = x;
  }
  return f;
}

function attention(v) { // any length: converted only when short enough to be cheap to check
  if (!Array.isArray(v) || v.length === 0 || v.length > 1 << 20) return v;
  for (let i = 0; i < v.length; i++) if (typeof v[i] !== 'number') return v;
  return Float32Array.from(v);
}

// A Float32Array result back to the plain Array an Array input expects.
function numbers(f) {
  const a = new Array(f.length);
  for (let i = 0; i < f.length; i++) a[i] = f[i];
  return a;
}

function wrapArrays(SonaEngine) {
  const p = SonaEngine.prototype;
  const { applyMicroLora, applyBaseLora, beginTrajectory, addTrajectoryStep, findPatterns } = p;
  const define = (name, fn) => Object.defineProperty(p, name, { value: fn, writable: true, configurable: true });
  define('applyMicroLora', function (input, tenant, out) {
    if (!Array.isArray(input)) return applyMicroLora.call(this, input, tenant, out);
    const y = applyMicroLora.call(this, floats(this, input), tenant, out);
    return out == null && !Array.isArray(y) ? numbers(y) : y;
  });
  define('applyBaseLora', function (layerIdx, input, out) {
    if (!Array.isArray(input)) return applyBaseLora.call(this, layerIdx, input, out);
    const y = applyBaseLora.call(this, layerIdx, floats(this, input), out);
    return out == null && !Array.isArray(y) ? numbers(y) : y;
  });
  define('beginTrajectory', function (query, tenant) {
    return beginTrajectory.call(this, floats(this, query), tenant);
  });
  define('addTrajectoryStep', function (id, activations, attentionWeights, reward, layer) {
    return addTrajectoryStep.call(this, id, floats(this, activations), attention(attentionWeights), reward, layer);
  });
  define('findPatterns', function (query, k) {
    return findPatterns.call(this, floats(this, query), k);
  });
}

const addon = load();
wrapArrays(addon.SonaEngine);
module.exports = addon;
