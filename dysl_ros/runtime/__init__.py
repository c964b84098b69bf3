"""Runners per backend and the policy executor that walks segments under the guidance."""
