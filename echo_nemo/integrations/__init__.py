"""Integrations that run echo-nemo inside other RL frameworks (NeMo-RL, OpenRLHF, Megatron-Bridge).

Each module imports its framework lazily, so echo-nemo installs and imports without them.
"""
