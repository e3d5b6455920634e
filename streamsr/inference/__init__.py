"""Running the model on a stream of frames: the engine (batching, memory planning, CUDA graphs,
pinned double buffering, tiling, on-device packing), the backends that can run the model instead
of eager torch, and the stages that connect a source and a sink to the engine."""
