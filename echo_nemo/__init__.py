"""echo-nemo: the Echo Chamber study (pretraining -> RL -> format shares) on megatron-core.

Importing the package changes nothing: the patches to megatron-core and torch
(echo_nemo.patches) and the CPU speed layer (echo_nemo.cpu) are applied by explicit calls
at command start-up (echo_nemo.cli).
"""
