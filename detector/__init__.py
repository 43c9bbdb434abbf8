"""acs-detector: anomaly detection and alerting for ACS call client operations."""

__version__ = "0.1.0"
__all__ = ["__version__"]
