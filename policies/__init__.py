"""Policies as data: bundled YAML files and the loader for users' own."""

from guardgraph.policies.loader import PolicyError, bundled_policy_names, load_policy, policy_from_data
from guardgraph.policies.model import Category, Policy

__all__ = ["Category", "Policy", "PolicyError", "bundled_policy_names", "load_policy", "policy_from_data"]
