"""scap-ov: Statistical Calibrated Activation Pruning for OpenVINO on Intel CPUs."""
from scap_ov.errors import ScapError
from scap_ov.extension import extension_path, register

__version__ = "0.1.0"
__all__ = ["ScapError", "extension_path", "register", "__version__"]
