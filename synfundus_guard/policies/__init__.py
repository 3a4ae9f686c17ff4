"""Policy files: schema, loading with full validation, and evaluation into verdicts (pure functions)."""

from .schema import Policy, load_policy, parse_policy

__all__ = ["Policy", "load_policy", "parse_policy"]
