"""The gateway's built-in plugins, one module each, registered under ``gateway.plugins``."""
