"""The kopf operator: handlers at the edge, pure manifest rendering inside."""
