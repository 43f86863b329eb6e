"""Networks built from JSON configs: layers, the Network class."""
from .network import Network, NonFinite
from .telemetry import Telemetry
from .tween import Tween, TweenConfig

__all__ = ["Network", "NonFinite", "Telemetry", "Tween", "TweenConfig"]
