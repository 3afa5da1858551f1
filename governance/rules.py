"""Context permission rules for governance objects (separation of duties)."""
