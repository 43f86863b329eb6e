"""File formats: safetensors, the Loom model file."""
