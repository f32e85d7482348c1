"""What train.py, eval.py and the tools share on top of models, data and utilities: devices,
checkpoint files, windowed inference over long videos. Imports flow one way:
``core``/``utils`` <- ``datasets``/``modeling`` <- ``engine`` <- scripts and tools."""
from .checkpoints import resolve_checkpoint
from .devices import resolve_device

__all__ = ["resolve_checkpoint", "resolve_device"]
