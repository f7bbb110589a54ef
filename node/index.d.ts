// SPDX-License-Identifier: MIT
// TypeScript declarations of the sona addon (README.md). Vectors: a Float32Array is read in
// place (no copy); an Array of numbers or a Float64Array is converted once. A result mirrors
// the input: an Array for an Array (as @ruvector/sona), a Float32Array otherwise.

export type Vector = Float32Array | Float64Array | number[];

/** @ruvector/sona's configuration, and any libsona sona_engine_config field by its C name. */
export interface SonaConfig {
  /** Width of activations, embeddings and adapters (libsona `hidden`). Required. */
  hiddenDim: number;
  /** Must equal hiddenDim when given (libsona's query embeddings are hiddenDim wide). */
  embeddingDim?: number;
  /** libsona `micro_rank` (default 2); `micro_alpha` follows as 2 x rank unless given. */
  microLoraRank?: number;
  /** libsona `base_rank` (default 8); `base_alpha` follows as 2 x rank unless given. */
  baseLoraRank?: number;
  /** libsona `micro_learning_rate`: the fraction of the way one signal moves the output
   *  (default 0.2). Not @ruvector/sona's SGD rate: its 0.001 learns very slowly here. */
  microLoraLr?: number;
  /** libsona `base_learning_rate` (default 0.1), same meaning as microLoraLr. */
  baseLoraLr?: number;
  /** libsona `ewc_lambda` (default 0.01; 0..1e6, capped so that learning stays stable). */
  ewcLambda?: number;
  /** libsona `clusters_per_cycle`: k of loop B's k-means (default 32). */
  patternClusters?: number;
  /** libsona `buffer_capacity`: trajectories queued for loop B (default 10000). */
  trajectoryCapacity?: number;
  /** libsona `loop_b_interval_ms` (default 2000; loop B also runs every 250 trajectories). */
  backgroundIntervalMs?: number;
  /** Accepted and checked (a finite number); no effect: libsona weighs every trajectory by its
   *  quality against a running baseline instead of a cut-off. */
  qualityThreshold?: number;
  /** Accepted and checked (a boolean); no effect: libsona picks its SIMD variant by cpuid. */
  enableSimd?: boolean;
  /** libsona preset: "default" | "max_throughput" | "max_quality" | "edge". */
  preset?: 'default' | 'max_throughput' | 'max_quality' | 'edge';
  /** Any sona_engine_config field by its C name, e.g. background_thread: false, seed: 7. */
  [libsonaField: string]: number | boolean | string | undefined;
}

/** A pattern of the bank, with @ruvector/sona's field names. */
export interface LearnedPattern {
  /** Pattern id (a decimal string, as @ruvector/sona). */
  id: string;
  /** Mean of its trajectories' embeddings. */
  centroid: number[];
  /** Trajectories merged into it. */
  clusterSize: number;
  totalWeight: number;
  avgQuality: number;
  /** Creation time, Unix seconds, as a decimal string. */
  createdAt: string;
  /** Last time a search returned it, Unix seconds, as a decimal string. */
  lastAccessed: string;
  /** Times a search returned it (this one included). */
  accessCount: number;
  /** Always "General": libsona does not type its patterns. */
  patternType: string;
  /** Cosine similarity with the query (libsona's addition). */
  similarity: number;
}

/** Every sona_stats counter (include/sona/engine.h), camelCase. */
export interface SonaStats {
  trajectoriesRecorded: number;
  trajectoriesProcessed: number;
  trajectoriesDropped: number;
  trajectoriesQueued: number;
  trajectoriesInCycle: number;
  signalsAccepted: number;
  signalsRejected: number;
  microUpdates: number;
  baseUpdates: number;
  patterns: number;
  tasks: number;
  taskBoundaries: number;
  loopBCycles: number;
  loopCCycles: number;
  dreams: number;
  dreamsReplayed: number;
  patternsMerged: number;
  lastLoopBUs: number;
  lastLoopCUs: number;
  deviceBatches: number;
  deviceFallbacks: number;
  tenants: number;
  qualityBaseline: number;
  lastPhi: number;
  /** Trajectories begun and not yet ended or abandoned (all threads sharing the engine). */
  openTrajectories: number;
  enabled: boolean;
}

export interface PeftOptions {
  /** Layer l's module path with "%u" for l (default base_model.model.model.layers.%u.self_attn.o_proj). */
  moduleFormat?: string;
  /** adapter_config.json's base_model_name_or_path. */
  baseModel?: string;
  /** -1 (default): the Base-LoRA, a module per layer; >= 0: that tenant's Micro-LoRA. */
  tenant?: number;
  /** The layer a tenant's Micro-LoRA is exported to. */
  microLayer?: number;
  /** The target modules' width in the model; 0 = not checked. */
  modelHidden?: number;
}

/** Errors carry `code`: the sona_status name ("SONA_E_SIZE", "SONA_E_NOT_FOUND", ...) or
 *  "ERR_INVALID_ARG_TYPE" for a value of the wrong type. */
export interface SonaError extends Error {
  code: string;
}

export declare class SonaEngine {
  /** The default preset at width hiddenDim; loop B in the engine's own thread. */
  constructor(hiddenDim: number);
  static withConfig(config: SonaConfig): SonaEngine;
  /** Another SonaEngine on the engine shared under token (see share()), e.g. in a worker. */
  static attach(token: number): SonaEngine;

  /** Starts recording a request; its id. tenant: whose Micro-LoRA learns from it (default 0). */
  beginTrajectory(queryEmbedding: Vector, tenant?: number): number;
  /** One step; layer defaults to the step's index (0, 1, ...). Attention weights are checked
   *  for NaN and not learned from. Bad input throws and leaves the trajectory as it was. */
  addTrajectoryStep(trajectoryId: number, activations: Vector, attentionWeights: Vector | null | undefined,
                    reward: number, layer?: number): void;
  /** Checks the id; libsona keeps no route. */
  setTrajectoryRoute(trajectoryId: number, route: string): void;
  /** Checks the id; libsona keeps no context. */
  addTrajectoryContext(trajectoryId: number, contextId: string): void;
  /** Ends the trajectory: loop A learns from it now, loop B in the background. */
  endTrajectory(trajectoryId: number, quality: number): void;
  /** Drops a trajectory without learning from it. */
  abandonTrajectory(trajectoryId: number): void;

  /** y = x + delta(x) through the tenant's Micro-LoRA (default tenant 0; -1: none). out (a
   *  Float32Array of hiddenDim values, possibly the input) receives the result. */
  applyMicroLora(input: number[], tenant?: number): number[];
  applyMicroLora(input: Float32Array | Float64Array, tenant?: number, out?: Float32Array): Float32Array;
  /** y = x + delta(x) through Base-LoRA layer layerIdx (0..base_layers-1). */
  applyBaseLora(layerIdx: number, input: number[]): number[];
  applyBaseLora(layerIdx: number, input: Float32Array | Float64Array, out?: Float32Array): Float32Array;

  /** A loop B cycle in this thread if one is due: its summary, or null. */
  tick(): string | null;
  /** A loop B cycle now on whatever is queued, in this thread: its summary. */
  forceLearn(): string;
  /** forceLearn on libuv's thread pool: the event loop is not blocked. */
  forceLearnAsync(): Promise<string>;
  /** Applies every tenant's pending Micro-LoRA gradients now. */
  flush(): void;
  /** A loop C cycle now (dreams, consolidation). */
  deepCycle(): void;

  findPatterns(queryEmbedding: Vector, k: number): LearnedPattern[];
  /** A JSON string, as @ruvector/sona: its keys, then every sona_stats field by C name. */
  getStats(): string;
  stats(): SonaStats;
  getConfig(): Record<string, number | string>;
  setEnabled(enabled: boolean): void;
  isEnabled(): boolean;

  /** A new tenant with an identity Micro-LoRA; its id. */
  createTenant(): number;
  removeTenant(tenant: number): void;

  /** Everything learned and the queued trajectories, atomically (temp file, rename). */
  save(path: string): void;
  /** Replaces the learned state with the file's; refused while trajectories are open. */
  load(path: string): void;
  /** A PEFT LoRA adapter directory (adapter_model.safetensors, adapter_config.json). */
  exportPeft(dir: string, options?: PeftOptions): void;
  saveAsync(path: string): Promise<void>;
  loadAsync(path: string): Promise<void>;
  exportPeftAsync(dir: string, options?: PeftOptions): Promise<void>;

  /** A token for SonaEngine.attach in another thread (worker_threads). */
  share(): number;
  /** Releases this object's hold on the engine (destroyed with the last); later calls throw. */
  close(): void;

  readonly hiddenDim: number;
  /** The accelerator batched applies use ("cuda", "opencl"), or null. */
  readonly device: string | null;
}

/** The configuration a state file was saved with (C field names). */
export declare function stateConfig(path: string): Record<string, number | string>;
/** A preset's configuration for width hiddenDim (C field names). */
export declare function defaultConfig(hiddenDim: number, preset?: string): Record<string, number | string>;
/** libsona's version, e.g. "0.1.0". */
export declare const version: string;
/** The file the addon was loaded from. */
export declare const addonPath: string;
