"""Pydantic models of the custom resources; the CRD YAML is generated from them."""
