/* SPDX-License-Identifier: MIT */
/* `sona demo`: the engine learning a synthetic task, with its learning curve. */
#ifndef SONA_TOOLS_DEMO_H
#define SONA_TOOLS_DEMO_H

int sona_demo_main(int argc, char **argv);

#endif
