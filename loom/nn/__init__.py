"""Networks built from JSON configs: layers, the Network class."""
from .network import Network, NonFinite

__all__ = ["Network", "NonFinite"]
