"""Layer-by-layer compression of causal LMs that do not fit in memory twice.

The model is a skeleton on the meta device; the embeddings, the final norm and the LM head are
resident; each decoder layer is read from the checkpoint's safetensors shards when it is processed
(:mod:`.checkpoint`), computed in float32 (:mod:`.layers`), and freed. Calibration hidden states
flow from layer to layer. Pruning streams twice (:mod:`.prune`): a scoring pass that keeps only
each layer's scores, then a pass in which each layer is pruned and refitted on the inputs that the
already-pruned layers below it produce, evaluated side by side with the original on the evaluation
windows (two sets of hidden states, never two models), and written (:mod:`.writer`).
"""
