"""The operations edge: API views for operator controls (breakers) and the
permissions they check. Views stay thin and call resilience.ops.services."""
