"""The one base class for errors a user should see as a single line (no traceback)."""


class PipelineError(Exception):
    """Bad input, bad configuration or an unreachable service; ``str(error)`` names what and why."""
