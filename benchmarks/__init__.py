"""XLA benchmarks: jaxops ops against their jax.nn / jnp formulations, in the same run.

Run ``python -m benchmarks --help``; results and the table are in benchmarks/README.md.
"""
