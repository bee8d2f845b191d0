"""Shared model: records, typed params, emotion knowledge, the answer schema."""
