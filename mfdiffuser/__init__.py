"""mfdiffuser: offline mean-field multi-agent RL with MF-Diffuser, on Ray, logged to MLflow."""

__version__ = "0.1.0"
