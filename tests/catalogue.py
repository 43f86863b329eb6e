"""The layer sample catalogue now lives in the package (loom verify uses it); re-exported here so
tests keep importing `from catalogue import SAMPLES, config`."""
from loom.nn.catalogue import FD, SAMPLES, D, config

__all__ = ["D", "FD", "SAMPLES", "config"]
