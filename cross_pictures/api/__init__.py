"""HTTP layer: routes, wire schemas and the mapping of domain errors to status codes."""
