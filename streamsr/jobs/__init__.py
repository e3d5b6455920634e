"""The jobs `streamsr.upscale` dispatches to: one input into one output (stream), one video in
keyframe-aligned parts over torchrun ranks or resumable (parts), a folder of videos (folder)."""
