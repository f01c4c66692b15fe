"""Real photos into a generator (issue 19): the layer-wise encoder, the optimiser, omissions, the CLI.

Modules: `encoder` (LayerwiseEncoder: one small inverse network per generator layer), `train`
(`gandissect train encoder`), `optimise` (z, then a layer's features, from the encoder's guess),
`omissions` (concepts in a photo missing from its reconstruction), `cli` (`gandissect invert`),
`adapt` (image-specific adaptation of the generator's upper layers, for painting on a photo).
"""
