"""Turning checkpoints into verified serving artifacts in a versioned model repository."""
