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

module.exports = load();
