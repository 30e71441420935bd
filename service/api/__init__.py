"""The HTTP layer: routers (simulations, health), the problem+json error model, dependencies."""
