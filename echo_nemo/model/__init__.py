"""The GPT: its scales (`scales`), its construction on megatron-core (`build`), the one
training forward and loss (`forward`), the one KV-cache decoder (`decode`) and batched
sampling on it (`generate`). Nothing here imports the CPU speed layer: faster operations
for a device come in through echo_nemo.speed."""
